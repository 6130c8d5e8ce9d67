"""SparseEncoder modules beyond SPLADE against sentence-transformers 6.2: inference-free SPLADE (a Router with
SparseStaticEmbedding on the query route, MLMTransformer + SpladePooling on the document route), CSR models
(Transformer + Pooling + SparseAutoEncoder) and the reference's default CSR builds.

The reference builds and saves each model (6.x layout) with seeded weights; stcore_jax loads it, encodes the same
texts (equal within 1e-5), exports the v5 layout, and the reference reads that back with equal embeddings. The
SparseAutoEncoder's training outputs (what CSRLoss consumes) and its dead-latent state are compared with the
reference module's train-mode forward. Tiny models: a 600-token BPE vocabulary, hidden 32 (MLM) / 64 (CSR).
"""

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf
from safetensors import safe_open
from sentence_transformers import SparseEncoder as RefSparseEncoder
from sentence_transformers.base.modules import Router as RefRouter, Transformer as RefTransformer
from sentence_transformers.sentence_transformer.modules import Pooling as RefPooling
from sentence_transformers.sparse_encoder.modules import (
    SparseAutoEncoder as RefSparseAutoEncoder,
    SparseStaticEmbedding as RefSparseStaticEmbedding,
    SpladePooling as RefSpladePooling,
)

import tiny_models
from stcore_jax import SparseEncoder
from stcore_jax.models.mlm_transformer import MLMTransformer
from stcore_jax.models.router import Router
from stcore_jax.models.sparse_autoencoder import (
    STATE_KEY,
    TRAIN_OUTPUT_KEYS,
    SparseAutoEncoder,
    sae_train_outputs,
    update_stats_last_nonzero,
)
from stcore_jax.models.sparse_static_embedding import SparseStaticEmbedding
from stcore_jax.models.splade_pooling import SpladePooling
from stcore_jax.training.optim import param_names
from stcore_jax.util import read_sts

ATOL = 1e-5
BUCKETS = (128,)  # one compilation per forward
BS = 16  # 8 devices x 2 rows
SAE = dict(input_dim=64, hidden_dim=64, k=4, k_aux=16)  # the CSR model's autoencoder (4k = 16 <= 64)


def _dense(x):
    return x.to_dense().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _perturb(module, seed, scale=0.05):
    """Move every parameter (biases at 0, norms at 1 included) so that a wrong mapping shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * scale)


@pytest.fixture(scope="module")
def texts(stsb_dir):
    s1, _, _ = read_sts(stsb_dir / "sts-test.csv")
    return tiny_models.SENTENCES + s1[:17]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, stsb_dir):
    """``{"mlm": BertForMaskedLM, "enc": BertModel (hidden 64)}`` checkpoints over a 600-token BPE tokenizer."""
    s1, s2, _ = read_sts(stsb_dir / "sts-train.csv")
    root = tmp_path_factory.mktemp("ckpt")
    tok = tiny_models._bpe_tokenizer(s1[:2000] + s2[:2000], str(root / "tok"))
    tok.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    out = {}
    for name, hidden, cls in (("mlm", 32, tf.BertForMaskedLM), ("enc", 64, tf.BertModel)):
        cfg = tf.BertConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, max_position_embeddings=160, pad_token_id=1, type_vocab_size=2)
        torch.manual_seed(1)
        model = cls(cfg)
        _perturb(model, 2)
        path = str(root / name)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        out[name] = path
    return out


# -- inference-free SPLADE: Router(query: SparseStaticEmbedding, document: MLMTransformer + SpladePooling) ----------
@pytest.fixture(scope="module")
def ref_router(checkpoints, tmp_path_factory):
    """(the reference's inference-free SPLADE model, its 6.x save directory)."""
    doc = RefTransformer(checkpoints["mlm"], transformer_task="fill-mask")
    torch.manual_seed(3)
    weight = torch.rand(len(doc.tokenizer.get_vocab())) * 3  # IDF-like, every token present with its own weight
    query = RefSparseStaticEmbedding(tokenizer=doc.tokenizer, weight=weight, frozen=False)
    router = RefRouter.for_query_document(query_modules=[query], document_modules=[doc, RefSpladePooling("max")])
    model = RefSparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu")
    path = str(tmp_path_factory.mktemp("router") / "six")
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def router(ref_router):
    return SparseEncoder(ref_router[1], length_buckets=BUCKETS)


@pytest.fixture(scope="module")
def router_embs(ref_router, router, texts):
    """{"query"/"document": (ours [N, V], the reference's [N, V])}."""
    ref = ref_router[0]
    return {"query": (router.encode_query(texts, batch_size=BS), _dense(ref.encode_query(texts))),
            "document": (router.encode_document(texts, batch_size=BS), _dense(ref.encode_document(texts)))}


def test_router_model_matches_reference(router, router_embs, ref_router, texts):
    ref = ref_router[0]
    assert json.load(open(os.path.join(ref_router[1], "router_config.json")))["types"]["document_0_Transformer"] \
        .endswith("base.modules.transformer.Transformer")  # the 6.x layout
    assert isinstance(router[0], Router) and router.similarity_fn_name == "dot"
    (query,), (mlm, pooling) = router[0].sub_modules["query"], router[0].sub_modules["document"]
    assert isinstance(query, SparseStaticEmbedding) and isinstance(mlm, MLMTransformer)
    assert isinstance(pooling, SpladePooling) and pooling.embedding_dimension == mlm.vocab_size == 600
    for route, (got, want) in router_embs.items():
        assert got.shape == want.shape == (len(texts), 600), route
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=route)
        assert 0 < np.count_nonzero(got) < got.size
    # the query side is the weight of each token present (no encoder): exactly the reference's
    np.testing.assert_array_equal(router_embs["query"][0], router_embs["query"][1])
    np.testing.assert_allclose(router.encode(texts[:5], batch_size=BS), router_embs["document"][0][:5], atol=ATOL)
    scores = router.similarity(router_embs["query"][0], router_embs["document"][0])
    np.testing.assert_allclose(scores, ref.similarity(torch.tensor(router_embs["query"][1]),
                                                      torch.tensor(router_embs["document"][1])).numpy(),
                               rtol=1e-5, atol=ATOL)
    # the weight's parameter path: a learning_rate_mapping pattern on the class name finds it
    names = jax.tree_util.tree_leaves(param_names(router.params))
    assert [n for n in names if "SparseStaticEmbedding" in n] == ["0.query_0_SparseStaticEmbedding.weight"]


def test_router_export_read_by_reference(router, router_embs, texts, tmp_path):
    """Our v5 export: the reference reads it back with the same embeddings, and so do we."""
    out = str(tmp_path / "v5")
    router.save_pretrained(out)
    entries = json.load(open(os.path.join(out, "modules.json")))
    assert [(e["type"], e["path"], e.get("kwargs")) for e in entries] == [
        ("sentence_transformers.models.Router", "", ["task"])]
    cfg = json.load(open(os.path.join(out, "router_config.json")))
    assert cfg["types"] == {"query_0_SparseStaticEmbedding": "sentence_transformers.sparse_encoder.models."
                                                             "SparseStaticEmbedding",
                            "document_0_MLMTransformer": "sentence_transformers.sparse_encoder.models.MLMTransformer",
                            "document_1_SpladePooling": "sentence_transformers.sparse_encoder.models.SpladePooling"}
    assert cfg["structure"] == {"query": ["query_0_SparseStaticEmbedding"],
                                "document": ["document_0_MLMTransformer", "document_1_SpladePooling"]}
    assert json.load(open(os.path.join(out, "query_0_SparseStaticEmbedding", "config.json"))) == {"frozen": False}
    back = RefSparseEncoder(out, device="cpu")
    for route, encode in (("query", back.encode_query), ("document", back.encode_document)):
        np.testing.assert_allclose(_dense(encode(texts)), router_embs[route][1], atol=ATOL, rtol=0, err_msg=route)
    again = SparseEncoder(out, length_buckets=BUCKETS)  # the v5 layout, read by us
    np.testing.assert_array_equal(again.encode_query(texts, batch_size=BS), router_embs["query"][0])


def test_idf_json_and_frozen(ref_router, tmp_path, texts):
    """``from_json`` (also through a module config ``path``) gives the reference's weights; ``frozen`` stops the
    gradient, is listed in ``frozen_param_paths`` and survives a save the reference reads."""
    tokenizer = ref_router[0][0].sub_modules["document"][0].tokenizer
    vocab = sorted(tokenizer.get_vocab())
    rng = np.random.default_rng(0)
    idf = {tok: float(rng.uniform(0.5, 9.0)) for tok in vocab[::3]} | {"not-a-token": 4.25}
    idf_path = str(tmp_path / "idf.json")
    json.dump(idf, open(idf_path, "w"))
    want = RefSparseStaticEmbedding.from_json(idf_path, tokenizer=tokenizer, frozen=True)
    ours = SparseStaticEmbedding.from_json(idf_path, tokenizer, frozen=True)
    np.testing.assert_array_equal(np.asarray(ours.params["embedding"]), want.weight.detach().numpy())
    assert np.count_nonzero(np.asarray(ours.params["embedding"])) > 100  # the unknown token lands on <unk>, as theirs

    folder = tmp_path / "sse"  # a module folder whose config names the JSON file (the reference's ``path`` route)
    tokenizer.save_pretrained(str(folder))
    json.dump({"frozen": True, "path": "idf.json"}, open(folder / "config.json", "w"))
    json.dump(idf, open(folder / "idf.json", "w"))
    loaded = SparseStaticEmbedding.load(str(folder))
    assert loaded.frozen
    np.testing.assert_array_equal(np.asarray(loaded.params["embedding"]), np.asarray(ours.params["embedding"]))

    model = SparseEncoder(modules=[Router.for_query_document([ours], [SparseStaticEmbedding(tokenizer)])])
    assert model.frozen_param_paths() == [("0", "query_0_SparseStaticEmbedding")]
    feats = ours.tokenize(texts[:4])
    grad = jax.grad(lambda p: jnp.sum(ours.apply(p, feats)["sentence_embedding"]))(ours.params)
    assert not np.any(np.asarray(grad["embedding"]))
    feats_ref = want.preprocess(texts[:4])
    np.testing.assert_array_equal(np.asarray(ours.apply(ours.params, feats)["sentence_embedding"]),
                                  want(dict(feats_ref))["sentence_embedding"].detach().numpy())
    prior = np.random.default_rng(1).uniform(0, 2, (4, 600)).astype(np.float32)  # an embedding already present
    np.testing.assert_allclose(
        np.asarray(ours.apply(ours.params, {**feats, "sentence_embedding": jnp.asarray(prior)})["sentence_embedding"]),
        want({**feats_ref, "sentence_embedding": torch.tensor(prior)})["sentence_embedding"].detach().numpy(),
        atol=0, rtol=1e-7)
    out = str(tmp_path / "frozen")
    model.save_pretrained(out)
    back = RefSparseEncoder(out, device="cpu")
    assert back[0].sub_modules["query"][0].frozen and not back[0].sub_modules["query"][0].weight.requires_grad
    np.testing.assert_array_equal(_dense(back.encode_query(texts)), model.encode_query(texts, batch_size=BS))


# -- CSR: Transformer + Pooling + SparseAutoEncoder --------------------------------------------------------------
def _ref_sae(seed, stats_seed, **config):
    """A reference SparseAutoEncoder with perturbed biases and a dead-latent state in [0, 60] (about half of the
    latents dead for the default threshold 30)."""
    sae = RefSparseAutoEncoder(**config)
    _perturb(sae, seed, scale=0.2)
    sae.stats_last_nonzero.copy_(torch.randint(0, 60, (sae.hidden_dim,), generator=torch.Generator().manual_seed(
        stats_seed)))
    return sae


@pytest.fixture(scope="module")
def ref_csr(checkpoints, tmp_path_factory):
    """(the reference's CSR model, its 6.x save directory)."""
    transformer = RefTransformer(checkpoints["enc"])
    pooling = RefPooling(transformer.get_embedding_dimension(), "mean")
    model = RefSparseEncoder(modules=[transformer, pooling, _ref_sae(4, 5, **SAE)], device="cpu")
    path = str(tmp_path_factory.mktemp("csr") / "six")
    model.save(path)
    return model, path


@pytest.fixture(scope="module")
def csr(ref_csr):
    return SparseEncoder(ref_csr[1], length_buckets=BUCKETS)


@pytest.fixture(scope="module")
def csr_embs(ref_csr, csr, texts):
    """{max_active_dims: (ours, the reference's)} for the default (the autoencoder's k = 4), 2 and 9."""
    ref = ref_csr[0]
    out = {None: (csr.encode(texts, batch_size=BS), _dense(ref.encode(texts)))}
    for k in (2, 9):
        out[k] = csr.encode(texts, batch_size=BS, max_active_dims=k), _dense(ref.encode(texts, max_active_dims=k))
    return out


def test_csr_model_matches_reference(csr, csr_embs, ref_csr):
    assert [type(m).__name__ for m in csr.modules] == ["Transformer", "Pooling", "SparseAutoEncoder"]
    assert csr.max_active_dims == ref_csr[0].max_active_dims == 4 and csr.get_embedding_dimension() == 64
    np.testing.assert_array_equal(csr[2].stats_last_nonzero, ref_csr[0][2].stats_last_nonzero.numpy())
    for k, (got, want) in csr_embs.items():
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=f"max_active_dims={k}")
        active = np.count_nonzero(got, axis=1)
        assert 1 <= active.min() and active.max() <= (k or 4), k


def test_csr_export_read_by_reference(csr, csr_embs, texts, tmp_path):
    out = str(tmp_path / "v5")
    csr.save_pretrained(out)
    types = [e["type"] for e in json.load(open(os.path.join(out, "modules.json")))]
    assert types == ["sentence_transformers.models.Transformer", "sentence_transformers.models.Pooling",
                     "sentence_transformers.sparse_encoder.models.SparseAutoEncoder"]
    assert json.load(open(os.path.join(out, "2_SparseAutoEncoder", "config.json"))) == {
        **SAE, "normalize": False, "dead_threshold": 30}
    with safe_open(os.path.join(out, "2_SparseAutoEncoder", "model.safetensors"), "numpy") as f:
        shapes = {k: (f.get_tensor(k).shape, str(f.get_tensor(k).dtype)) for k in f.keys()}
    assert shapes == {"decoder.linear.weight": ((64, 64), "float32"), "pre_bias": ((64,), "float32"),
                      "latent_bias": ((64,), "float32"), "stats_last_nonzero": ((64,), "int64")}
    assert json.load(open(os.path.join(out, "config_sentence_transformers.json")))["max_active_dims"] == 4
    back = RefSparseEncoder(out, device="cpu")
    assert back.max_active_dims == 4
    np.testing.assert_array_equal(back[2].stats_last_nonzero.numpy(), csr[2].stats_last_nonzero)
    for k, (_, want) in csr_embs.items():
        np.testing.assert_allclose(_dense(back.encode(texts, max_active_dims=k)), want, atol=ATOL, rtol=0)
    # the reference's own key name for the tied weight is read too
    sae_dir = tmp_path / "encoder_key"
    os.makedirs(sae_dir)
    with safe_open(os.path.join(out, "2_SparseAutoEncoder", "model.safetensors"), "numpy") as f:
        tensors = {("encoder.weight" if k.startswith("decoder") else k): f.get_tensor(k) for k in f.keys()}
    from safetensors.numpy import save_file

    save_file(tensors, str(sae_dir / "model.safetensors"))
    json.dump(json.load(open(os.path.join(out, "2_SparseAutoEncoder", "config.json"))), open(sae_dir / "config.json",
                                                                                               "w"))
    np.testing.assert_array_equal(np.asarray(SparseAutoEncoder.load(str(sae_dir)).params["encoder"]["kernel"]),
                                  np.asarray(csr[2].params["encoder"]["kernel"]))


def _compare_train_outputs(ours: dict, theirs: dict, atol=ATOL):
    for key in TRAIN_OUTPUT_KEYS + ("sentence_embedding",):
        want = theirs[key]
        if want is None:
            assert ours[key] is None, key
            continue
        np.testing.assert_allclose(np.asarray(ours[key]), want.detach().numpy(), atol=atol, rtol=0, err_msg=key)


def test_csr_training_outputs_match_reference(csr, ref_csr, texts):
    """The whole CSR model's forward with the dead-latent state threaded in (features[STATE_KEY]): the training
    outputs CSRLoss reads and the updated state equal the reference model's train-mode forward (autoencoder in
    training mode; the encoder in eval mode, so no dropout)."""
    ref = copy.deepcopy(ref_csr[0])
    ref.eval()
    ref[2].train()
    theirs = ref(ref.preprocess(texts[:12]))
    feats = {**csr.input_module.tokenize(texts[:12]), STATE_KEY: csr[2].initial_state()}
    ours = csr.forward(csr.params, feats)
    _compare_train_outputs(ours, theirs)
    assert theirs["auxiliary_embedding"] is not None and np.count_nonzero(np.asarray(ours["auxiliary_embedding"]))
    np.testing.assert_array_equal(np.asarray(ours[STATE_KEY]), ref[2].stats_last_nonzero.numpy())
    assert not np.array_equal(np.asarray(ours[STATE_KEY]), csr[2].stats_last_nonzero)  # it did change

    # control: a 1e-4 shift of the pre-bias moves the reconstructions past the tolerance
    params = jax.tree_util.tree_map(lambda x: x, csr.params)
    params["2"]["pre_bias"] = params["2"]["pre_bias"] + 1e-4
    mutated = csr.forward(params, feats)
    assert np.abs(np.asarray(mutated["decoded_embedding_k"]) - theirs["decoded_embedding_k"].detach().numpy()).max() \
        > ATOL


@pytest.mark.parametrize("normalize", [False, True])
def test_sae_module_training_and_eval_outputs(normalize, tmp_path):
    """The module on its own (both ``normalize`` settings): train-mode outputs and state, then the reference's
    eval()/no_grad forward (``update_state=False``: full outputs, state unchanged), from the reference's save."""
    ref = _ref_sae(6, 7, input_dim=24, hidden_dim=48, k=5, k_aux=12, normalize=normalize, dead_threshold=20)
    ref.save(str(tmp_path))
    ours = SparseAutoEncoder.load(str(tmp_path))
    x = torch.randn(6, 24, generator=torch.Generator().manual_seed(8)) * 2 + 0.5
    stats0 = ours.initial_state()
    np.testing.assert_array_equal(np.asarray(stats0), ref.stats_last_nonzero.numpy())

    ref.train()
    state = stats0
    for _ in range(2):  # twice: the second pass sees the state the first one left
        theirs = ref({"sentence_embedding": x.clone()})
        out = ours.apply(ours.params, {"sentence_embedding": jnp.asarray(x.numpy()), STATE_KEY: state})
        _compare_train_outputs(out, theirs)
        state = out[STATE_KEY]
        np.testing.assert_array_equal(np.asarray(state), ref.stats_last_nonzero.numpy())

    ref.eval()
    with torch.no_grad():
        theirs = ref({"sentence_embedding": x.clone()})
    evaluated, same = sae_train_outputs(ours.params, jnp.asarray(x.numpy()), state, k=5, k_aux=12,
                                        normalize=normalize, dead_threshold=20, update_state=False)
    _compare_train_outputs(evaluated, theirs)
    np.testing.assert_array_equal(np.asarray(same), np.asarray(state))
    with torch.inference_mode():
        latents = ref({"sentence_embedding": x.clone()})["sentence_embedding"].numpy()
    np.testing.assert_allclose(np.asarray(ours.apply(ours.params, {"sentence_embedding": jnp.asarray(x.numpy())})
                                          ["sentence_embedding"]), latents, atol=ATOL, rtol=0)


def test_stats_update_masks_padding_rows():
    """Fired latents restart (at 0, then +1 like all), a top-k value <= 1e-5 does not fire, padding rows fire
    nothing. (Against the reference: the state comparisons in the two tests above.)"""
    stats = jnp.array([3, 5, 40, 7], jnp.int32)
    indices = jnp.array([[1, 2], [3, 0]])
    values = jnp.array([[0.5, 0.0], [2.0, 1.0]])
    np.testing.assert_array_equal(update_stats_last_nonzero(stats, indices, values), [1, 1, 41, 1])
    np.testing.assert_array_equal(update_stats_last_nonzero(stats, indices, values, jnp.array([True, False])),
                                  [4, 1, 41, 8])


def test_default_csr_builds(checkpoints, texts, tmp_path):
    """A checkpoint without a masked-LM head -> Transformer + mean Pooling + SparseAutoEncoder(D, 4D, k=256,
    k_aux=512), as the reference; a SentenceTransformer directory -> its modules + SparseAutoEncoder(D, 4D, D//4,
    D//2). The fresh autoencoders are random: the reference reads our export with equal embeddings."""
    ref = RefSparseEncoder(checkpoints["enc"], device="cpu")
    ours = SparseEncoder(checkpoints["enc"], length_buckets=BUCKETS)
    assert [type(m).__name__ for m in ours.modules] == [type(m).__name__ for m in ref] == [
        "Transformer", "Pooling", "SparseAutoEncoder"]
    assert ours[2].get_config_dict() == ref[2].get_config_dict() == {
        "input_dim": 64, "hidden_dim": 256, "k": 256, "k_aux": 512, "normalize": False, "dead_threshold": 30}
    assert ours.max_active_dims == ref.max_active_dims == 256
    out = str(tmp_path / "default")
    ours.save_pretrained(out)
    np.testing.assert_allclose(_dense(RefSparseEncoder(out, device="cpu").encode(texts[:8])),
                               ours.encode(texts[:8], batch_size=BS), atol=ATOL, rtol=0)

    st_dir = tiny_models.build_st(checkpoints["enc"], str(tmp_path / "st"), prompts={"query": "q: "})
    ref_st, ours_st = RefSparseEncoder(st_dir, device="cpu"), SparseEncoder(st_dir, length_buckets=BUCKETS)
    assert ours_st[-1].get_config_dict() == ref_st[-1].get_config_dict() == {
        "input_dim": 64, "hidden_dim": 256, "k": 16, "k_aux": 32, "normalize": False, "dead_threshold": 30}
    assert ours_st.prompts["query"] == ref_st.prompts["query"] == "q: "


def test_mutation_and_bad_input(router, router_embs, csr, csr_embs, texts):
    """Controls: 1e-4 on one present token's query weight, or on one active latent's bias, moves the output past
    the tolerance. Bad input: more latents than the autoencoder has, malformed weights."""
    got, want = router_embs["query"]
    token = int(np.argmax(got[0]))
    original = router.params
    params = jax.tree_util.tree_map(lambda x: x, original)
    leaf = params["0"]["query_0_SparseStaticEmbedding"]
    leaf["embedding"] = leaf["embedding"].at[token].add(1e-4)
    try:
        router.params = params
        assert np.abs(router.encode_query(texts, batch_size=BS) - want).max() > ATOL
    finally:
        router.params = original

    got, want = csr_embs[None]
    latent = int(np.argmax(got[0]))
    original = csr.params
    params = jax.tree_util.tree_map(lambda x: x, original)
    params["2"]["latent_bias"] = params["2"]["latent_bias"].at[latent].add(1e-4)
    try:
        csr.params = params
        assert np.abs(csr.encode(texts, batch_size=BS) - want).max() > ATOL
    finally:
        csr.params = original

    with pytest.raises(ValueError, match="cannot keep 65 of 64 latents"):
        csr.encode(texts[:2], max_active_dims=65)
    with pytest.raises(ValueError, match="weight"):
        SparseStaticEmbedding(router.tokenizer, weight=np.ones((600, 2)))
    with pytest.raises(ValueError, match="k must be"):
        SparseAutoEncoder(8, 16, k=0)
