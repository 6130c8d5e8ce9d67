"""The numpy/JAX statistics against scipy, scikit-learn and the reference's own threshold searches,
on random data with many ties."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
from sentence_transformers.sentence_transformer.evaluation import BinaryClassificationEvaluator as RefBinary

from stcore_jax.base.evaluation import metrics as _metrics
from stcore_jax.sentence_transformer.evaluation.reranking import rank_metrics
from stcore_jax.util.semantic_search import get_scorer

SEEDS = range(6)


def _tied(rng, n, levels):
    return (rng.integers(0, levels, n) / levels).astype(np.float32)


@pytest.mark.parametrize("seed", SEEDS)
def test_correlations_match_scipy(seed):
    rng = np.random.default_rng(seed)
    x = _tied(rng, 300, 12) if seed % 2 else rng.normal(size=300).astype(np.float32)
    y = (5 * _tied(rng, 300, 7) + 0.5 * x).astype(np.float64)  # gold scores: float64, as in the evaluator
    assert _metrics.pearson(y, x) == pytest.approx(scipy.stats.pearsonr(y, x).statistic, abs=1e-12)
    assert _metrics.spearman(y, x) == pytest.approx(scipy.stats.spearmanr(y, x).statistic, abs=1e-12)
    np.testing.assert_array_equal(_metrics.average_ranks(x), scipy.stats.rankdata(x))


@pytest.mark.parametrize("seed", SEEDS)
def test_average_precision_and_mcc_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 400)
    scores = _tied(rng, 400, 9 if seed % 2 else 1000) + 0.1 * labels
    assert _metrics.average_precision(labels, scores) == pytest.approx(
        sklearn.metrics.average_precision_score(labels, scores), abs=1e-12
    )
    predicted = scores >= np.median(scores)
    assert _metrics.matthews_corrcoef(labels, predicted) == pytest.approx(
        sklearn.metrics.matthews_corrcoef(labels, predicted), abs=1e-12
    )
    assert _metrics.matthews_corrcoef(labels, np.ones_like(labels)) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("high", [True, False])
def test_threshold_searches_match_reference(seed, high):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 250)
    scores = (_tied(rng, 250, 15) + (0.05 if high else -0.05) * labels).astype(np.float32)
    acc, acc_t = _metrics.best_accuracy_and_threshold(scores, labels, high)
    ref_acc, ref_acc_t = RefBinary.find_best_acc_and_threshold(scores, labels, high)
    assert (acc, acc_t) == (ref_acc, ref_acc_t)
    assert np.asarray(acc_t).dtype == np.asarray(ref_acc_t).dtype
    assert _metrics.best_f1_and_threshold(scores, labels, high) == RefBinary.find_best_f1_and_threshold(
        scores, labels, high
    )


def test_threshold_search_edge_cases():
    ref = RefBinary
    for scores, labels in [
        (np.array([0.5, 0.5, 0.5], np.float32), np.array([1, 0, 1])),
        (np.array([0.1, 0.2], np.float32), np.array([0, 0])),
        (np.array([0.3], np.float32), np.array([1])),
    ]:
        for high in (True, False):
            assert _metrics.best_accuracy_and_threshold(scores, labels, high) == ref.find_best_acc_and_threshold(
                scores, labels, high
            )
            assert _metrics.best_f1_and_threshold(scores, labels, high) == ref.find_best_f1_and_threshold(
                scores, labels, high
            )


@pytest.mark.parametrize("at_k", [1, 3, 10])
def test_rank_metrics_match_sklearn(at_k):
    """Reranking MRR / NDCG / AP on device, with tied scores and padded candidate lists."""
    rng = np.random.default_rng(0)
    batch, width, dim = 16, 12, 4
    # Small integer embeddings with a dot product give exact, frequently tied scores.
    queries = rng.integers(-2, 3, (batch, dim)).astype(np.float32)
    docs = rng.integers(-2, 3, (batch, width, dim)).astype(np.float32)
    sizes = rng.integers(2, width + 1, batch)
    num_pos = np.minimum(rng.integers(1, 4, batch), sizes - 1)
    col = np.arange(width)[None, :]
    valid, relevant = col < sizes[:, None], col < num_pos[:, None]
    mrr, ndcg, ap = rank_metrics(queries, docs, relevant, valid, at_k, scorer=get_scorer("dot"))
    for b in range(batch):
        scores = docs[b, : sizes[b]] @ queries[b]
        is_rel = relevant[b, : sizes[b]].astype(int)
        assert float(ndcg[b]) == pytest.approx(sklearn.metrics.ndcg_score([is_rel], [scores], k=at_k), abs=1e-6)
        assert float(ap[b]) == pytest.approx(sklearn.metrics.average_precision_score(is_rel, scores), abs=1e-6)
        ranking = np.argsort(-scores, kind="stable")[:at_k]  # ties: input order
        hits = np.flatnonzero(is_rel[ranking])
        assert float(mrr[b]) == pytest.approx(1 / (hits[0] + 1) if len(hits) else 0.0)
    assert jnp.all(jnp.isfinite(ndcg))
