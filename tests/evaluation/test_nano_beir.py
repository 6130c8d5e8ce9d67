"""NanoBEIREvaluator on a local NanoBEIR-shaped dataset built from STS-B (two "datasets"), against
the reference; the same data passed as objects; and the offline error message."""

from __future__ import annotations

import pytest
from sentence_transformers.sentence_transformer.evaluation import NanoBEIREvaluator as RefNanoBEIR

from stcore_jax.evaluation import NanoBEIREvaluator

SPLITS = {"msmarco": ("NanoMSMARCO", slice(0, 400)), "nq": ("NanoNQ", slice(400, 700))}


def _tables(sts, rows: slice):
    s1, s2, _ = sts
    docs = list(dict.fromkeys(s2[rows]))
    cid = {t: f"{i:04d}" for i, t in enumerate(reversed(docs))}
    corpus = {"_id": [cid[t] for t in docs] + ["empty"], "text": docs + [""]}
    queries = {"_id": [f"q{i}" for i in range(len(s1[rows]))], "text": list(s1[rows])}
    qrels = {"query-id": queries["_id"], "corpus-id": [cid[t] for t in s2[rows]]}
    return {"corpus": corpus, "queries": queries, "qrels": qrels}


@pytest.fixture(scope="module")
def nano_tables(sts_test):
    return {name: _tables(sts_test, rows) for name, (_, rows) in SPLITS.items()}


@pytest.fixture(scope="module")
def nano_dir(nano_tables, tmp_path_factory):
    """A directory laid out like the Hub repository: parquet files plus README configs."""
    import datasets

    root = tmp_path_factory.mktemp("NanoBEIR-sts")
    configs = []
    for subset in ("corpus", "queries", "qrels"):
        files = []
        for name, (split, _) in SPLITS.items():
            path = f"{subset}/{split}-00000-of-00001.parquet"
            (root / subset).mkdir(exist_ok=True)
            datasets.Dataset.from_dict(nano_tables[name][subset]).to_parquet(str(root / path))
            files.append(f"  - split: {split}\n    path: {path}")
        configs.append(f"- config_name: {subset}\n  data_files:\n" + "\n".join(files))
    (root / "README.md").write_text("---\nconfigs:\n" + "\n".join(configs) + "\n---\n")
    return str(root)


def test_nano_beir_matches_reference(nano_dir, check_parity):
    names = list(SPLITS)
    ours, _ = check_parity(
        NanoBEIREvaluator(names, dataset_id=nano_dir, batch_size=64),
        RefNanoBEIR(names, dataset_id=nano_dir, batch_size=64),
    )
    assert "NanoMSMARCO_cosine_ndcg@10" in ours and "NanoBEIR_mean_cosine_map@100" in ours


def test_nano_beir_truncated_matches_reference(nano_dir, check_parity):
    ours, _ = check_parity(
        NanoBEIREvaluator(["nq", "msmarco"], dataset_id=nano_dir, truncate_dim=128, aggregate_key="avg"),
        RefNanoBEIR(["nq", "msmarco"], dataset_id=nano_dir, truncate_dim=128, aggregate_key="avg"),
    )
    assert "NanoNQ_128_cosine_ndcg@10" in ours and "NanoBEIR_avg_128_cosine_ndcg@10" in ours


def test_nano_beir_router_prompts_match_reference(nano_dir, check_router_parity, router_models):
    """On the Router model: a per-dataset query prompt replaces the model's "query: " prompt but keeps
    the query route; the corpus takes ``encode_document`` with the model's "passage: " prompt."""
    check_router_parity(
        NanoBEIREvaluator(["nq"], dataset_id=nano_dir, query_prompts={"nq": "question: "}, batch_size=64),
        RefNanoBEIR(["nq"], dataset_id=nano_dir, query_prompts={"nq": "question: "}, batch_size=64),
    )
    ours, ref = router_models
    assert ours.routes == ref.routes[: len(ours.routes)]
    assert set(ours.routes) == {("encode_query", "question: ", None), ("encode_document", None, None)}


def test_nano_beir_from_objects(nano_dir, nano_tables, our_model):
    import datasets

    from_dir = NanoBEIREvaluator(["msmarco"], dataset_id=nano_dir)(our_model)
    objects = {"msmarco": {k: datasets.Dataset.from_dict(v) for k, v in nano_tables["msmarco"].items()}}
    assert NanoBEIREvaluator(datasets=objects)(our_model) == from_dir
    columns = {"msmarco": nano_tables["msmarco"]}  # plain dicts of columns work too
    assert NanoBEIREvaluator(["msmarco"], datasets=columns)(our_model) == from_dir


def test_nano_beir_offline_without_data_says_what_to_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"dataset_id='/path/to/NanoBEIR-en'.*datasets=\{'msmarco'"):
        NanoBEIREvaluator(["msmarco"], dataset_id=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not valid NanoBEIR datasets"):
        NanoBEIREvaluator(["nope"])
