"""Every encoder family, every pooling mode, Dense + Normalize: equal to PyTorch sentence-transformers."""

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer as RefST

from stcore_jax import SentenceTransformer
from tiny_models import ARCHS, build_st

ATOL = 1e-5


def _compare(path, sentences, **kw):
    ours, ref = SentenceTransformer(path), RefST(path, device="cpu")
    a, b = ours.encode(sentences, **kw), ref.encode(sentences, **kw)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, atol=ATOL, rtol=0)
    ta = ours.encode(sentences, output_value="token_embeddings", **kw)
    tb = ref.encode(sentences, output_value="token_embeddings", **kw)
    assert len(ta) == len(tb) == len(sentences)
    for x, y in zip(ta, tb):
        assert x.shape == tuple(y.shape)
        np.testing.assert_allclose(x, y.numpy(), atol=ATOL, rtol=0)
    return ours, ref


@pytest.mark.parametrize("arch", ARCHS)
def test_all_pooling_modes(arch, tiny_dirs, sentences):
    ours, _ = _compare(tiny_dirs[arch]["modes"], sentences)
    assert ours.get_embedding_dimension() == 6 * 32


@pytest.mark.parametrize("arch", ARCHS)
def test_dense_and_normalize(arch, tiny_dirs, sentences):
    ours, _ = _compare(tiny_dirs[arch]["dense"], sentences)
    assert ours.get_embedding_dimension() == 24
    np.testing.assert_allclose(np.linalg.norm(ours.encode(sentences), axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_plain_hf_checkpoint_is_mean_pooled(arch, tiny_dirs, sentences):
    _compare(tiny_dirs[arch]["hf"], sentences)


def test_include_prompt_false_and_truncation(tiny_dirs, sentences, tmp_path):
    path = build_st(tiny_dirs["bert"]["hf"], str(tmp_path / "p"), pooling_mode=("mean", "weightedmean"),
                    include_prompt=False, max_seq_length=12, prompts={"query": "query: ", "doc": "passage: "})
    _compare(path, sentences, prompt_name="query")
    _compare(path, sentences, prompt="Represent this: ")
    long = [" ".join(["word"] * 50), "short one"]
    _compare(path, long)


def test_legacy_and_v6_pooling_configs_agree(tiny_dirs, sentences, tmp_path):
    """The 6.x key set (embedding_dimension, pooling_mode list) loads to the same pipeline."""
    import json
    import shutil

    src = tiny_dirs["bert"]["modes"]
    dst = tmp_path / "v6"
    shutil.copytree(src, dst)
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(
        {"embedding_dimension": 32, "pooling_mode": ["cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"],
         "include_prompt": True}))
    a = SentenceTransformer(str(src)).encode(sentences)
    b = SentenceTransformer(str(dst)).encode(sentences)
    np.testing.assert_array_equal(a, b)
