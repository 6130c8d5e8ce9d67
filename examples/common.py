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
    """Export the model and return what a smoke test checks: the final training loss and the export path."""
    final = os.path.join(output_dir, "final")
    model.save_pretrained(final)
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    print(f"final training loss {losses[-1] if losses else float('nan'):.4f}; exported to {final}")
    return {"loss": losses[-1] if losses else float("nan"), "export": final, "metrics": metrics or {}}
