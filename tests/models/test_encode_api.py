"""encode / encode_query / encode_document semantics, compile counts and input validation."""

import random

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer as RefST, quantize_embeddings as ref_quantize

from stcore_jax import SentenceTransformer
from stcore_jax.batching.buckets import bucket_for, default_buckets
from tiny_models import SENTENCES, build_st


@pytest.fixture(scope="module")
def pair(tiny_dirs, tmp_path_factory):
    path = build_st(tiny_dirs["bert"]["hf"], str(tmp_path_factory.mktemp("prompted")), dense=16,
                    prompts={"query": "query: ", "document": "passage: ", "clf": "classify: "})
    return SentenceTransformer(path), RefST(path, device="cpu")


def test_compiles_once_per_bucket(tiny_dirs):
    model = SentenceTransformer(tiny_dirs["bert"]["modes"])
    rng = random.Random(0)
    words = "the a cat dog runs over lazy quick brown fox jumps sleeps in on house garden".split()
    texts = [" ".join(rng.choices(words, k=rng.randint(0, 100))) for _ in range(1000)]
    lengths = [len(ids) for ids in model.input_module.tokenize_ids(texts)["input_ids"]]
    buckets = default_buckets(model.max_seq_length)
    used = {bucket_for(n, buckets) for n in lengths}
    assert model.trace_count == 0
    emb = model.encode(texts, batch_size=32)
    assert emb.shape == (1000, 6 * 32)
    assert 1 < model.trace_count <= len(used)
    before = model.trace_count
    model.encode(texts[::-1], batch_size=32)
    assert model.trace_count == before  # nothing new to compile


def test_prompts_and_query_document(pair):
    ours, ref = pair
    for kw in ({"prompt_name": "clf"}, {"prompt": "Represent: "}, {"prompt": "x ", "prompt_name": "clf"}):
        np.testing.assert_allclose(ours.encode(SENTENCES, **kw), ref.encode(SENTENCES, **kw), atol=1e-5)
    np.testing.assert_allclose(ours.encode_query(SENTENCES), ref.encode_query(SENTENCES), atol=1e-5)
    np.testing.assert_allclose(ours.encode_document(SENTENCES), ref.encode_document(SENTENCES), atol=1e-5)
    np.testing.assert_allclose(ours.encode_query(SENTENCES), ours.encode(SENTENCES, prompt="query: "), atol=0)
    with pytest.raises(ValueError, match="nope"):
        ours.encode(SENTENCES, prompt_name="nope")


def test_truncate_normalize_precision(pair):
    ours, ref = pair
    kw = {"truncate_dim": 8, "normalize_embeddings": True}
    a, b = ours.encode(SENTENCES, **kw), ref.encode(SENTENCES, **kw)
    assert a.shape == (len(SENTENCES), 8)
    np.testing.assert_allclose(a, b, atol=1e-5)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        q = ours.encode(SENTENCES, precision=precision)
        expected = ref_quantize(ours.encode(SENTENCES), precision=precision)
        assert q.dtype == expected.dtype
        np.testing.assert_array_equal(q, expected)
    # truncate_dim at init, overridden per call.
    ours.truncate_dim = 4
    try:
        assert ours.encode(SENTENCES).shape == (len(SENTENCES), 4)
        assert ours.encode(SENTENCES, truncate_dim=10).shape == (len(SENTENCES), 10)
        assert ours.get_embedding_dimension() == 4
    finally:
        ours.truncate_dim = None
    with ours.truncate_embeddings(6):
        assert ours.encode(SENTENCES).shape == (len(SENTENCES), 6)
    assert ours.get_embedding_dimension() == 16


def test_shapes_and_output_values(pair):
    ours, _ = pair
    assert ours.encode("one sentence").shape == (16,)
    empty = ours.encode([])
    assert empty.shape == (0, 16) and empty.dtype == np.float32
    assert ours.encode([], truncate_dim=4).shape == (0, 4)
    rows = ours.encode(SENTENCES[:3], output_value=None)
    assert set(rows[0]) >= {"token_embeddings", "sentence_embedding"}
    np.testing.assert_allclose(np.stack([r["sentence_embedding"] for r in rows]), ours.encode(SENTENCES[:3]), atol=1e-6)
    tensor = ours.encode(SENTENCES[:3], convert_to_tensor=True)
    import jax

    assert isinstance(tensor, jax.Array) and tensor.shape == (3, 16)


@pytest.mark.parametrize("bad, index", [(["ok", None, "x"], 1), (["ok", "fine", 3], 2), ([b"bytes"], 0)])
def test_non_string_inputs_name_the_index(pair, bad, index):
    ours, _ = pair
    before = ours.trace_count
    with pytest.raises(TypeError, match=f"index {index}"):
        ours.encode(bad)
    assert ours.trace_count == before  # rejected before compiling anything


def test_bad_encode_arguments(pair):
    ours, _ = pair
    with pytest.raises(ValueError, match="precision"):
        ours.encode(["a"], precision="float16")
    with pytest.raises(ValueError, match="output_value"):
        ours.encode(["a"], output_value="logits")
    with pytest.raises(ValueError, match="batch_size"):
        ours.encode(["a"], batch_size=0)
