"""The real all-MiniLM-L6-v2 on all of STS-B test: embeddings and Spearman equal to the PyTorch reference."""

import numpy as np
import pytest
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer as RefST

from stcore_jax import SentenceTransformer
from stcore_jax.util import read_sts


@pytest.fixture(scope="module")
def stsb_test(stsb_dir):
    return read_sts(stsb_dir / "sts-test.csv")


@pytest.fixture(scope="module")
def minilm(minilm_path):
    return SentenceTransformer(str(minilm_path))


def _spearman(e1, e2, scores):
    cos = np.sum(e1 * e2, axis=1) / (np.linalg.norm(e1, axis=1) * np.linalg.norm(e2, axis=1))
    return spearmanr(cos, scores).statistic


def test_stsb_test_parity(minilm, minilm_path, stsb_test):
    s1, s2, scores = stsb_test
    ours = minilm.encode(s1 + s2, batch_size=64)
    ref = RefST(str(minilm_path), device="cpu").encode(s1 + s2, batch_size=64)
    assert ours.shape == (2 * len(s1), 384)
    assert np.abs(ours - ref).max() <= 1e-5
    n = len(s1)
    rho_ours = _spearman(ours[:n], ours[n:], scores)
    rho_ref = _spearman(ref[:n], ref[n:], scores)
    assert round(rho_ours, 4) == round(rho_ref, 4)
    assert rho_ours > 0.8  # the published all-MiniLM-L6-v2 STS-B test score is ~0.82


def test_similarity_functions_match_reference(minilm, minilm_path, stsb_test):
    from sentence_transformers import util

    s1, s2, _ = stsb_test
    a, b = minilm.encode(s1[:20]), minilm.encode(s2[:20])
    ref = {"cosine": util.cos_sim, "dot": util.dot_score, "euclidean": util.euclidean_sim, "manhattan": util.manhattan_sim}
    pair = {"cosine": util.pairwise_cos_sim, "dot": util.pairwise_dot_score,
            "euclidean": util.pairwise_euclidean_sim, "manhattan": util.pairwise_manhattan_sim}
    for name in ref:
        minilm.similarity_fn_name = name
        # Distances are sums of 384 float32 terms of magnitude ~20: compare relative to that scale.
        tol = {"atol": 1e-5, "rtol": 2e-6}
        np.testing.assert_allclose(np.asarray(minilm.similarity(a, b)), ref[name](a, b).numpy(), **tol)
        np.testing.assert_allclose(np.asarray(minilm.similarity_pairwise(a, b)), pair[name](a, b).numpy(), **tol)
    minilm.similarity_fn_name = "cosine"
