"""ModernBERT: tiny random model parity with transformers' ModernBertModel and PyTorch sentence-transformers.

The sliding window (local_attention=8: 4 tokens either side) is much shorter than the test sentences,
and the batch mixes lengths, so local attention, padding and both rope bases all take part.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer as RefST

import tiny_models
from stcore_jax import SentenceTransformer
from stcore_jax.models.transformer import Transformer

ATOL = 1e-5
LOCAL_ATTENTION = 8
LONG = [
    "The quick brown fox jumps over the lazy dog while the cat watches from the window sill all afternoon.",
    "A man is playing a large flute on a stage in front of a small but very attentive audience.",
]


@pytest.fixture(scope="module")
def mb_dirs(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("modernbert")
    hf = tiny_models.build_modernbert(str(root / "hf"), str(minilm_path), local_attention=LOCAL_ATTENTION)
    st = tiny_models.build_st(hf, str(root / "st"), pooling_mode=("cls", "mean"), normalize=True)
    return {"root": root, "hf": hf, "st": st}


@pytest.fixture(scope="module")
def texts(sentences):
    return LONG + list(sentences)


def _reference_hf(path, **kw):
    from transformers import AutoModel

    return AutoModel.from_pretrained(path, attn_implementation="eager", **kw).eval()


def _reference_st(path):
    return RefST(path, device="cpu", model_kwargs={"attn_implementation": "eager"})


def test_token_embeddings_match_transformers(mb_dirs, texts):
    module = Transformer(mb_dirs["hf"])
    assert module.config.layer_types == ("full_attention", "sliding_attention", "full_attention")
    feats = module.tokenize(texts)
    lengths = feats["attention_mask"].sum(1)
    assert lengths.max() > 2 * LOCAL_ATTENTION and lengths.min() < LOCAL_ATTENTION  # window and padding both matter
    ours = jax.jit(lambda p, f: module.apply(p, f, output_hidden_states=True))(
        module.params, {k: jnp.asarray(v) for k, v in feats.items()})
    with torch.no_grad():
        ref = _reference_hf(mb_dirs["hf"])(input_ids=torch.tensor(feats["input_ids"]).long(),
                                           attention_mask=torch.tensor(feats["attention_mask"]).long(),
                                           output_hidden_states=True)
    real = feats["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(ours["token_embeddings"])[real], ref.last_hidden_state.numpy()[real],
                               atol=ATOL, rtol=0)
    assert len(ours["all_layer_embeddings"]) == len(ref.hidden_states) == 4
    for a, b in zip(ours["all_layer_embeddings"], ref.hidden_states):
        np.testing.assert_allclose(np.asarray(a)[real], b.numpy()[real], atol=ATOL, rtol=0)


def test_pipeline_matches_sentence_transformers(mb_dirs, texts):
    ours, ref = SentenceTransformer(mb_dirs["st"]), _reference_st(mb_dirs["st"])
    a, b = ours.encode(texts, batch_size=4), ref.encode(texts, batch_size=4)
    assert a.shape == b.shape == (len(texts), 64)
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    tokens = "token_embeddings"
    for x, y in zip(ours.encode(texts, output_value=tokens), ref.encode(texts, output_value=tokens)):
        np.testing.assert_allclose(x, y.numpy(), atol=ATOL, rtol=0)


def test_save_pretrained_round_trip(mb_dirs, texts, tmp_path):
    ours = SentenceTransformer(mb_dirs["st"])
    out = tmp_path / "export"
    ours.save_pretrained(str(out))
    assert json.loads((out / "config.json").read_text())["model_type"] == "modernbert"
    np.testing.assert_allclose(_reference_st(str(out)).encode(texts), ours.encode(texts), atol=ATOL, rtol=0)


def test_legacy_config_keys(mb_dirs, texts, tmp_path):
    """transformers 4.x configs: global/local_rope_theta and global_attn_every_n_layers, no layer_types."""
    legacy = tmp_path / "legacy"
    shutil.copytree(mb_dirs["hf"], legacy)
    cfg = json.loads((legacy / "config.json").read_text())
    rope = cfg.pop("rope_parameters")
    cfg.pop("layer_types")
    cfg.update(global_rope_theta=rope["full_attention"]["rope_theta"],
               local_rope_theta=rope["sliding_attention"]["rope_theta"], global_attn_every_n_layers=2)
    (legacy / "config.json").write_text(json.dumps(cfg))
    a, b = SentenceTransformer(str(legacy)), SentenceTransformer(mb_dirs["hf"])
    assert a.input_module.config.layer_types == b.input_module.config.layer_types
    np.testing.assert_array_equal(a.encode(texts), b.encode(texts))

    cfg["rope_parameters"] = {"full_attention": {"rope_type": "yarn", "factor": 2.0}}
    (legacy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="rope_type='yarn'"):
        Transformer(str(legacy))


def test_dropout_keys_and_remat(mb_dirs, minilm_path, texts, tmp_path):
    """With dropout configured: no key is inference (= transformers in eval mode); a key drops (the same
    key the same way); per-layer remat gives the same outputs and gradients."""
    hf = tiny_models.build_modernbert(str(tmp_path / "drop"), str(minilm_path), local_attention=LOCAL_ATTENTION,
                                      num_hidden_layers=2, attention_dropout=0.1, mlp_dropout=0.1,
                                      embedding_dropout=0.1)
    module = Transformer(hf)
    feats = {k: jnp.asarray(v) for k, v in module.tokenize(texts[:4]).items()}
    with torch.no_grad():
        ref = _reference_hf(hf)(input_ids=torch.tensor(np.asarray(feats["input_ids"])).long(),
                                attention_mask=torch.tensor(np.asarray(feats["attention_mask"])).long())
    real = np.asarray(feats["attention_mask"]).astype(bool)
    plain = np.asarray(jax.jit(lambda p: module.apply(p, feats)["token_embeddings"])(module.params))
    np.testing.assert_allclose(plain[real], ref.last_hidden_state.numpy()[real], atol=ATOL, rtol=0)

    def loss(params, k):
        out = module.apply(params, feats, dropout_key=k)["token_embeddings"]
        return jnp.sum(out ** 2), out

    key = jax.random.key(3)
    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (l0, d1), g0 = step(module.params, key)
    (_, d2), _ = step(module.params, key)
    np.testing.assert_array_equal(np.asarray(d1), np.asarray(d2))
    assert np.abs(np.asarray(d1) - plain)[real].max() > 1e-2
    module.set_gradient_checkpointing(True)
    jaxpr = str(jax.make_jaxpr(lambda p: module.apply(p, feats, dropout_key=key))(module.params))
    assert jaxpr.count("remat") == module.config.num_hidden_layers
    (l1, d3), g1 = jax.jit(jax.value_and_grad(loss, has_aux=True))(module.params, key)
    np.testing.assert_allclose(np.asarray(d3), np.asarray(d1), atol=1e-6, rtol=0)
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def _packed(module, texts, rows):
    from stcore_jax.batching.packing import pack_shard

    ids = module.tokenize_ids(texts)
    seqs = [{k: v[i] for k, v in ids.items()} for i in range(len(texts))]
    return {k: jnp.asarray(v[None] if k.startswith("packed_") else v)
            for k, v in pack_shard(seqs, 64, rows, module.tokenizer.pad_token_id).items()}


def test_packed_rows_match_sentence_transformers(mb_dirs, texts):
    """Packed rows (rope at each token's own position, the window inside its sentence) give the reference's
    padded embeddings."""
    ours = SentenceTransformer(mb_dirs["st"])
    packed = _packed(ours.input_module, texts, 4)
    assert int((packed["packed_segment_ids"][0] > 0).sum(1).max()) > 2 * LOCAL_ATTENTION  # rows hold several
    got = ours.forward(ours.params, packed)["sentence_embedding"]
    np.testing.assert_allclose(got, _reference_st(mb_dirs["st"]).encode(texts), atol=ATOL, rtol=0)


def test_packed_dropout_equals_padded_dropout(minilm_path, texts, tmp_path):
    hf = tiny_models.build_modernbert(str(tmp_path / "drop"), str(minilm_path), local_attention=LOCAL_ATTENTION,
                                      num_hidden_layers=2, attention_dropout=0.1, mlp_dropout=0.1,
                                      embedding_dropout=0.1)
    module = Transformer(hf)
    keys = jax.random.split(jax.random.key(1), len(texts))
    padded = {k: jnp.asarray(v) for k, v in module.tokenize(texts).items()}
    want = np.asarray(module.apply(module.params, padded, dropout_key=keys)["token_embeddings"])
    plain = np.asarray(module.apply(module.params, padded)["token_embeddings"])
    real = np.asarray(padded["attention_mask"]).astype(bool)
    assert np.abs(want - plain)[real].max() > 1e-2  # dropout is on
    got = np.asarray(module.apply(module.params, _packed(module, texts, 4), dropout_key=keys)["token_embeddings"])
    np.testing.assert_allclose(got[:, :want.shape[1]][real], want[real], atol=1e-6, rtol=0)
