"""DeBERTa-v2/v3 against transformers' ``DebertaV2*`` and sentence-transformers 6.2, on two tiny configs:

* ``v3``: deberta-v3-small/base's shape (relative attention, log position buckets, layer-normed relative
  embeddings, shared attention keys, ``p2c|c2p``, no absolute positions, no token types), with few buckets
  (8) so that ordinary sentences reach the log-spaced ones;
* ``v2``: deberta-v2-xlarge's shape (conv layer after layer 0, absolute positions, own ``pos_key_proj`` /
  ``pos_query_proj``, ``"c2p|p2c"`` as a string, no buckets but ``max_relative_positions`` shorter than the
  sentences, so distances clip), plus ``embedding_size`` != ``hidden_size`` and two token types.

Encoder hidden states (every layer, padding rows included), mean-pooled embeddings, head logits
(sequence classification with 1 and 3 labels, both masked-LM heads), CrossEncoder.predict, the export round
trips, padding invariance, the relative-position buckets, config errors and a mutation control per feature."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf
from flax import nnx
from safetensors import safe_open
from sentence_transformers import CrossEncoder as RefCrossEncoder, SentenceTransformer as RefST
from transformers.models.deberta_v2 import modeling_deberta_v2

import tiny_models
from stcore_jax import CrossEncoder, SentenceTransformer
from stcore_jax.models.deberta_v2 import DebertaV2Model, deberta_v2_config, log_bucket_position
from stcore_jax.models.heads import load_head_model
from stcore_jax.models.lora import select_targets
from stcore_jax.models.transformer import Transformer

ATOL = 1e-5
COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
CONFIGS = {
    "v3": dict(relative_attention=True, position_buckets=8, max_relative_positions=-1, norm_rel_ebd="layer_norm",
               share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False, type_vocab_size=0,
               max_position_embeddings=64),
    "v2": dict(relative_attention=True, max_relative_positions=12, share_att_key=False, pos_att_type="c2p|p2c",
               position_biased_input=True, type_vocab_size=2, conv_kernel_size=3, conv_act="gelu", embedding_size=24,
               max_position_embeddings=160, pooler_hidden_act="tanh", cls_dropout=0.2),
}
AUTO = {"sequence_classification": tf.AutoModelForSequenceClassification, "masked_lm": tf.AutoModelForMaskedLM}
# (config, kind, num_labels, extra config): masked LM with transformers' default legacy head and with legacy=False.
HEADS = (("v3", "sequence_classification", 1, {}), ("v3", "sequence_classification", 3, {}),
         ("v2", "sequence_classification", 3, {}), ("v2", "masked_lm", None, {}),
         ("v3", "masked_lm", None, {"legacy": False}))
PAIRS = [("A girl is styling her hair.", "A woman is combing her hair."), ("Hi", "Numbers 123 and symbols #@!"),
         ("One woman is measuring another woman's ankle.", "")]


def _perturbed(model):
    """Biases and norms away from 0/1 so that a wrong mapping shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _torch(model, enc, **kw):
    with torch.no_grad():
        return model.eval()(**{k: torch.tensor(v) for k, v in enc.items()}, **kw)


def _keys(path):
    with safe_open(os.path.join(path, "model.safetensors"), "np") as f:
        return set(f.keys())


def _widen(enc, extra=11):
    """``enc`` with ``extra`` more padding columns (pad id, mask and token type all 0)."""
    return {k: np.pad(v, ((0, 0), (0, extra))) for k, v in enc.items()}


def _hidden(module, enc):
    """Our encoder's every layer output (jitted: one compile per shape) for a tokenized batch."""
    run = jax.jit(lambda p, f: module.apply(p, f, output_hidden_states=True)["all_layer_embeddings"])
    return [np.asarray(h) for h in run(module.params, {k: jnp.asarray(v) for k, v in enc.items()})]


@pytest.fixture(scope="module")
def deberta(tmp_path_factory, minilm_path):
    """name -> (plain DebertaV2Model dir, tokenized SENTENCES, transformers' hidden states of them, and of them
    with 11 more padding columns); and the head dirs {(name, kind, num_labels, legacy): (dir, transformers'
    logits)}."""
    root = tmp_path_factory.mktemp("deberta_v2")
    plain, heads = {}, {}
    for name, extra in CONFIGS.items():
        path = str(root / name)
        tok = tiny_models._bert_tokenizer(str(minilm_path), path)  # any fast tokenizer serves for parity
        cfg = tf.DebertaV2Config(vocab_size=len(tok), **COMMON, **extra)
        torch.manual_seed(0)
        model = _perturbed(tf.DebertaV2Model(cfg))
        model.save_pretrained(path)
        enc = dict(tok(tiny_models.SENTENCES, padding=True, return_tensors="np"))
        ref, wide = ([h.numpy() for h in _torch(model, e, output_hidden_states=True).hidden_states]
                     for e in (enc, _widen(enc)))
        plain[name] = path, enc, ref, wide
    for name, kind, n, extra in HEADS:
        path, enc = plain[name][:2]
        torch.manual_seed(1)
        cfg = tf.AutoConfig.from_pretrained(path, **({"num_labels": n} if n else {}), **extra)
        model = _perturbed(AUTO[kind].from_config(cfg))
        out = str(root / f"{name}-{kind}-{n}-{len(extra)}")
        model.save_pretrained(out)
        tf.AutoTokenizer.from_pretrained(path).save_pretrained(out)
        heads[name, kind, n, bool(extra)] = out, _torch(model, enc).logits.numpy()
    return plain, heads


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_encoder_hidden_states_match_transformers(deberta, name):
    """Every layer's output on a padded batch of varied lengths, padding rows included, with 11 more padding
    columns than needed (longer rows reach more relative-table rows; conv windows reach padding): the real
    tokens' outputs are also transformers' at the batch's own padding."""
    path, enc, ref, ref_wide = deberta[0][name]
    ours = Transformer(path)
    got = _hidden(ours, _widen(enc))
    assert len(got) == len(ref_wide) == 3 and got[-1].shape == ref_wide[-1].shape == (len(enc["input_ids"]), 32, 32)
    assert enc["attention_mask"].min() == 0 and enc["input_ids"].shape[1] == 21 > 8  # padded, past the 8 buckets
    real = enc["attention_mask"].astype(bool)
    for a, b, c in zip(got, ref_wide, ref):
        np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
        np.testing.assert_allclose(a[:, :21][real], c[real], atol=ATOL, rtol=0)
    params = ours.params
    if name == "v2":  # the conv kernel [k, H, H] is torch's [H, H, k] reversed; E != H: embed_proj
        assert params["encoder"]["conv"]["conv"]["kernel"].shape == (3, 32, 32)
        assert params["embeddings"]["embed_proj"]["kernel"].shape == (24, 32)
        assert "pos_key_proj" in params["encoder"]["layer"][0]["attention"]["self"]
    else:
        assert "position_embeddings" not in params["embeddings"] and "token_type_embeddings" not in params["embeddings"]
        assert params["encoder"]["rel_embeddings"]["embedding"].shape == (16, 32)


# Each mutation of one DeBERTa feature (through config.json overrides) moves the outputs well past ATOL, so the
# comparisons above can fail for each of them.
MUTATIONS = (("v3", {"pos_att_type": ["c2p"]}), ("v3", {"max_relative_positions": 32}), ("v3", {"norm_rel_ebd": "none"}),
             ("v2", {"conv_act": "tanh"}))


@pytest.mark.parametrize("name,override", MUTATIONS, ids=[f"{m[0]}-{'-'.join(m[1])}" for m in MUTATIONS])
def test_mutation_control(deberta, name, override):
    path, enc, ref, _ = deberta[0][name]
    got = _hidden(Transformer(path, config_kwargs=override), enc)[-1]
    assert np.abs(got - ref[-1])[enc["attention_mask"].astype(bool)].max() > 100 * ATOL


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_mean_pooled_embeddings_and_export_match_sentence_transformers(deberta, name, tmp_path):
    path = deberta[0][name][0]
    ours = SentenceTransformer(path)
    assert ours[0].encoder_cls.__name__ == "DebertaV2Model"
    got = ours.encode(tiny_models.SENTENCES)
    ref = RefST(path, device="cpu").encode(tiny_models.SENTENCES)
    assert got.shape == ref.shape == (len(tiny_models.SENTENCES), 32)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)

    out = str(tmp_path / "export")
    ours.save_pretrained(out)
    assert _keys(out) == _keys(path)  # what transformers' save_pretrained writes, no more
    _, info = tf.AutoModel.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    np.testing.assert_allclose(RefST(out, device="cpu").encode(tiny_models.SENTENCES), got, atol=ATOL, rtol=0)
    for a, b in zip(jax.tree_util.tree_leaves(SentenceTransformer(out).params), jax.tree_util.tree_leaves(ours.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name,kind,n,extra", HEADS, ids=[f"{h[0]}-{h[1]}-{h[2]}-{'-'.join(h[3])}" for h in HEADS])
def test_head_logits_and_export_match_transformers(deberta, name, kind, n, extra, tmp_path):
    enc = deberta[0][name][1]
    path, ref = deberta[1][name, kind, n, bool(extra)]
    ours = load_head_model(path, kind)
    assert ours.new_keys == () and ours.num_labels == n
    got = np.asarray(jax.jit(ours.apply)(ours.params, enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]))
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)

    out = str(tmp_path / "export")
    ours.save(out)
    assert _keys(out) == _keys(path)  # the tied cls.predictions.decoder.* left out, as save_pretrained does
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["architectures"] == json.load(open(os.path.join(path, "config.json")))["architectures"]
    back, info = AUTO[kind].from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    np.testing.assert_allclose(_torch(back, enc).logits.numpy(), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("n", [1, 3])
def test_cross_encoder_predict_matches_sentence_transformers(deberta, n):
    path = deberta[1]["v3", "sequence_classification", n, False][0]
    got = CrossEncoder(path).predict(PAIRS)
    ref = RefCrossEncoder(path, device="cpu").predict(PAIRS)
    assert got.shape == ref.shape == ((len(PAIRS),) if n == 1 else (len(PAIRS), n))
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)


def test_training_step_jits_with_dropout_and_remat(deberta):
    """jit(grad) with per-row dropout keys: finite gradients reaching the relative table, the conv and the
    pooler; a key replays, another key draws other masks; gradient checkpointing traces one remat per layer."""
    enc = deberta[0]["v2"][1]
    head = load_head_model(deberta[1]["v2", "sequence_classification", 3, False][0], "sequence_classification")
    args = tuple(jnp.asarray(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids"))
    keys = [jax.random.split(jax.random.key(i), args[0].shape[0]) for i in (0, 1)]

    def loss(apply, params, k):
        return jnp.sum(apply(params, *args, dropout_key=k) ** 2)

    step = jax.jit(jax.value_and_grad(lambda p, k: loss(head.apply, p, k)))
    (a, grads), (a2, _), (b, _) = step(head.params, keys[0]), step(head.params, keys[0]), step(head.params, keys[1])
    assert a == a2 and abs(float(a) - float(b)) > 1e-3
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
    for leaf in (grads["deberta"]["encoder"]["rel_embeddings"]["embedding"],
                 grads["deberta"]["encoder"]["conv"]["conv"]["kernel"], grads["pooler"]["dense"]["kernel"]):
        assert np.abs(np.asarray(leaf)).max() > 0

    module = head.module()
    module.deberta.gradient_checkpointing = True
    remat_def, _ = nnx.split(module)
    jaxpr = jax.make_jaxpr(lambda p: nnx.merge(remat_def, p)(*args, dropout_key=keys[0]))(head.params)
    assert str(jaxpr).count("remat") == COMMON["num_hidden_layers"]


def test_lora_defaults_are_pefts():
    cfg = deberta_v2_config({"model_type": "deberta-v2", "vocab_size": 10, **COMMON, **CONFIGS["v3"]})
    params = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: DebertaV2Model(cfg, nnx.Rngs(0)))))
    hits = select_targets(params, None, "deberta-v2")
    assert sorted(hits) == [f"encoder.layer.{i}.attention.self.{p}" for i in range(2) for p in ("query_proj", "value_proj")]


def test_log_buckets_match_transformers():
    rel = np.arange(-4100, 4101)
    for buckets, max_position in ((256, 512), (8, 64), (256, 1024), (128, 512), (6, 20), (3, 9)):
        ref = modeling_deberta_v2.make_log_bucket_position(torch.tensor(rel), buckets, max_position).long().numpy()
        np.testing.assert_array_equal(log_bucket_position(rel, buckets, max_position), ref)


@pytest.mark.parametrize("override,match", [
    ({"conv_kernel_size": 4}, "conv_kernel_size=4 must be odd"),
    ({"conv_kernel_size": 3, "conv_groups": 5}, "conv_groups=5 must divide hidden_size=32"),
    ({"pos_att_type": ["c2p", "p2p"]}, r"pos_att_type .* has \['p2p'\]"),
    ({"pooler_hidden_size": 16}, "pooler_hidden_size=16 differs from hidden_size=32"),
    ({"norm_rel_ebd": "batch_norm"}, "norm_rel_ebd='batch_norm'"),
    ({"attention_head_size": 4}, "attention_head_size=4 times num_attention_heads=4"),
    ({"conv_kernel_size": 3, "conv_act": "mish"}, "Unsupported activation 'mish'"),
])
def test_config_errors(override, match):
    with pytest.raises(ValueError, match=match):
        deberta_v2_config({"model_type": "deberta-v2", "vocab_size": 10, **COMMON, **override})
