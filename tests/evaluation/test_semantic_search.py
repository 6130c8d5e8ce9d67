"""Chunked on-device top-k: ``semantic_search`` against the reference, chunk-size invariance with
exact ties, the IR evaluator on precomputed embeddings against the reference evaluator, and a
200,000-document corpus searched block by block."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import util as ref_util
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator as RefIR

from stcore_jax import similarity
from stcore_jax.evaluation import InformationRetrievalEvaluator
from stcore_jax.util import semantic_search
from stcore_jax.util.semantic_search import ChunkedTopK, top_k_search, topk_chunk_step


@pytest.mark.parametrize(
    ("ours_fn", "ref_fn"),
    [
        (similarity.cos_sim, ref_util.cos_sim),
        (similarity.dot_score, ref_util.dot_score),
        ("euclidean", ref_util.euclidean_sim),
    ],
)
@pytest.mark.parametrize(("query_chunk", "corpus_chunk", "top_k"), [(100, 500000, 10), (7, 64, 25), (3, 5, 400)])
def test_semantic_search_matches_reference(ours_fn, ref_fn, query_chunk, corpus_chunk, top_k):
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(23, 16)).astype(np.float32)
    corpus = rng.normal(size=(300, 16)).astype(np.float32)
    ours = semantic_search(queries, corpus, query_chunk, corpus_chunk, top_k, ours_fn)
    q, c = torch.from_numpy(queries), torch.from_numpy(corpus)
    ref = ref_util.semantic_search(q, c, query_chunk, corpus_chunk, top_k, ref_fn)
    assert len(ours) == len(ref) == 23
    for o, r in zip(ours, ref):
        assert [h["corpus_id"] for h in o] == [h["corpus_id"] for h in r]
        np.testing.assert_allclose([h["score"] for h in o], [h["score"] for h in r], atol=2e-5)
        assert all(isinstance(h["corpus_id"], int) and isinstance(h["score"], float) for h in o)


def test_semantic_search_inputs():
    rng = np.random.default_rng(1)
    corpus = rng.normal(size=(50, 8)).astype(np.float32)
    single = semantic_search(corpus[3], corpus, top_k=2)  # a 1-D query, as torch inputs
    assert len(single) == 1 and single[0][0]["corpus_id"] == 3
    assert single == semantic_search(torch.from_numpy(corpus[3:4]), torch.from_numpy(corpus), top_k=2)
    assert semantic_search(corpus[:2], corpus[:0]) == [[], []]


def _integer_embeddings(rng, n, dim):
    # Small integers: dot products are exact in float32 whatever the summation order, and tie often.
    return rng.integers(-2, 3, (n, dim)).astype(np.float32)


def test_chunking_does_not_change_ties():
    rng = np.random.default_rng(2)
    queries, corpus = _integer_embeddings(rng, 40, 6), _integer_embeddings(rng, 333, 6)
    scores = queries @ corpus.T
    expected = np.stack([np.lexsort((np.arange(333), -row))[:30] for row in scores])
    for query_chunk, corpus_chunk in [(64, 1000), (8, 16), (5, 31), (40, 333)]:
        s, idx = top_k_search(
            queries, corpus, 30, score_function="dot", query_chunk_size=query_chunk, corpus_chunk_size=corpus_chunk
        )
        np.testing.assert_array_equal(idx, expected)
        np.testing.assert_array_equal(s, np.take_along_axis(scores, expected, 1))
    order = rng.permutation(333)  # ties then break by position in this order
    _, idx = top_k_search(queries, corpus, 30, score_function="dot", corpus_chunk_size=50, corpus_order=order)
    rank = np.argsort(order)
    np.testing.assert_array_equal(idx, np.stack([np.lexsort((rank, -row))[:30] for row in scores]))


class _Precomputed:
    """A stand-in model whose queries are precomputed (the reference takes corpus embeddings only)."""

    similarity_fn_name = "dot"

    def __init__(self, queries):
        self.queries = queries

    def encode_query(self, sentences, **kwargs):
        assert len(sentences) == len(self.queries)
        return torch.from_numpy(self.queries)

    similarity = staticmethod(ref_util.dot_score)


def _ir_case(rng, num_queries, num_docs, dim):
    queries = {f"q{i}": f"query {i}" for i in range(num_queries)}
    ids = rng.permutation(num_docs)
    corpus = {f"d{ids[i]:06d}": f"doc {i}" for i in range(num_docs)}
    doc_ids = list(corpus)
    relevant = {
        f"q{i}": {doc_ids[j] for j in rng.choice(num_docs, size=rng.integers(1, 4), replace=False)}
        for i in range(num_queries)
        if i % 9 != 5  # some queries without judgements are skipped
    }
    relevant["q5"] = {"not-in-corpus"}
    return queries, corpus, relevant


def test_ir_metrics_chunked_equal_unchunked_and_reference():
    rng = np.random.default_rng(3)
    queries, corpus, relevant = _ir_case(rng, 60, 500, 5)
    kept = [q for q in queries if q in relevant]
    q_emb = _integer_embeddings(rng, 60, 5)[[int(q[1:]) for q in kept]]
    c_emb = _integer_embeddings(rng, 500, 5)
    kwargs = dict(
        mrr_at_k=[1, 10], ndcg_at_k=[5, 20], accuracy_at_k=[1, 3], precision_recall_at_k=[2, 30], map_at_k=[50]
    )

    results = []
    for corpus_chunk, query_chunk in [(10_000, 1024), (37, 8), (500, 1)]:
        ours = InformationRetrievalEvaluator(
            queries, corpus, relevant, corpus_chunk_size=corpus_chunk, query_chunk_size=query_chunk, **kwargs
        )
        results.append(ours.compute_metrics_from_embeddings(q_emb, c_emb, {"dot": similarity.dot_score}))
    assert results[0] == results[1] == results[2]

    ref = RefIR(queries, corpus, relevant, score_functions={"dot": ref_util.dot_score}, **kwargs)
    expected = ref.compute_all_metrics(_Precomputed(q_emb), corpus_embeddings=torch.from_numpy(c_emb))
    for metric, per_k in expected["dot"].items():
        for k, value in per_k.items():
            assert results[0]["dot"][metric][k] == pytest.approx(value, abs=1e-12), (metric, k)

    # The reference-format entry point: hit lists per query, in any order.
    scores = q_emb @ c_emb.T
    doc_ids = list(corpus)
    hits = [[{"corpus_id": doc_ids[j], "score": float(row[j])} for j in rng.permutation(500)] for row in scores]
    assert ours.compute_metrics(hits) == results[0]["dot"]


def test_200k_corpus_is_searched_in_bounded_blocks():
    rng = np.random.default_rng(4)
    num_docs, num_queries, dim = 200_000, 256, 64
    corpus_emb = rng.standard_normal((num_docs, dim), dtype=np.float32)
    targets = rng.choice(num_docs, num_queries, replace=False)
    query_emb = corpus_emb[targets] + 0.3 * rng.standard_normal((num_queries, dim), dtype=np.float32)
    queries = {f"q{i}": "" for i in range(num_queries)}
    corpus = {f"d{i:06d}": "" for i in range(num_docs)}
    relevant = {f"q{i}": {f"d{t:06d}"} for i, t in enumerate(targets)}
    evaluator = InformationRetrievalEvaluator(queries, corpus, relevant, corpus_chunk_size=50_000, query_chunk_size=128)

    cache_before = topk_chunk_step._cache_size()
    scores = evaluator.compute_metrics_from_embeddings(query_emb, corpus_emb)["cosine"]
    assert topk_chunk_step._cache_size() - cache_before <= 1  # one block shape for all 8 blocks
    assert scores["accuracy@k"][1] > 0.95 and scores["ndcg@k"][10] > 0.95

    # The same top-k as brute force for a few queries.
    normed = corpus_emb / np.linalg.norm(corpus_emb, axis=1, keepdims=True)
    for i in (0, 77, 255):
        full = normed @ (query_emb[i] / np.linalg.norm(query_emb[i]))
        _, idx = top_k_search(query_emb[i], corpus_emb, 100, corpus_chunk_size=50_000)
        np.testing.assert_array_equal(np.sort(idx[0]), np.sort(np.argsort(-full)[:100]))

    # Device memory of one block step, versus the full [Q, C] float32 score matrix.
    search = ChunkedTopK(query_emb, 100, query_chunk_size=128, corpus_chunk_size=50_000, corpus_size=num_docs)
    memory = search.compiled_step(dim).memory_analysis()
    full_matrix = num_queries * num_docs * 4
    footprint = memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes
    assert footprint < full_matrix / 4, (footprint, full_matrix)
    assert memory.temp_size_in_bytes <= 2 * 128 * 50_000 * 4
