"""Rows for training and evaluation from local files, the STS benchmark, the hub, or the embedded set.

Every loader returns a ``datasets.Dataset`` whose columns are the loss inputs followed by the label
(if any) — the column convention of sentence-transformers.
"""

from __future__ import annotations

import csv
import os

from datasets import Dataset

STSB_FILES = {"train": "sts-train.csv", "validation": "sts-dev.csv", "dev": "sts-dev.csv", "test": "sts-test.csv"}


def is_stsb_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "sts-train.csv"))


def load_stsb(data_dir: str, split: str = "train", max_rows: int | None = None) -> Dataset:
    """The STS benchmark (tab-separated original files): ``sentence1, sentence2, score`` in [0, 1].

    Rows are genre, file, year, id, score (0-5), sentence1, sentence2[, source columns]; quoting is off
    because sentences contain bare quotes.
    """
    if split not in STSB_FILES:
        raise ValueError(f"STS-B split {split!r} is unknown; allowed values: {sorted(STSB_FILES)}")
    path = os.path.join(data_dir, STSB_FILES[split])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"STS-B file {path!r} not found; "
                                "--data-dir must hold sts-train.csv, sts-dev.csv, sts-test.csv")
    s1, s2, score = [], [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 7:
                continue
            s1.append(parts[5])
            s2.append(parts[6])
            score.append(float(parts[4]) / 5.0)
            if max_rows is not None and len(s1) >= max_rows:
                break
    return Dataset.from_dict({"sentence1": s1, "sentence2": s2, "score": score})


def _numeric(values: list) -> list:
    """CSV cells are strings; a column whose every cell is a number becomes floats (a label)."""
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return values


def load_file(path: str, fmt: str = "auto", max_rows: int | None = None) -> Dataset:
    """A ``.csv``/``.tsv`` (with header), ``.jsonl``/``.json`` or ``.parquet`` file."""
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    kind = fmt if fmt not in ("auto",) else {"jsonl": "json", "tsv": "tsv", "csv": "csv", "json": "json",
                                             "parquet": "parquet"}.get(ext)
    if kind in ("csv", "tsv"):
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if kind == "tsv" else ","))
        ds = Dataset.from_dict({c: _numeric([r[c] for r in rows]) for c in (rows[0] if rows else [])})
    elif kind == "json":
        ds = Dataset.from_json(path)
    elif kind == "parquet":
        ds = Dataset.from_parquet(path)
    else:
        raise ValueError(f"{path!r}: cannot tell the file format from {ext!r}; use .csv, .tsv, .jsonl, .json or "
                         "parquet, or set data.format")
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return ds


def load_source(src: str, fmt: str = "auto", split: str = "train", max_rows: int | None = None,
                subset: str | None = None) -> Dataset:
    """Dispatch on what ``src`` is (see :class:`stcore_jax.config.schema.DataConfig`)."""
    if src == "quickstart" or fmt == "quickstart":
        from stcore_jax.quickstart.data import pairs_dataset

        ds = pairs_dataset("train" if split == "train" else "eval")
    elif fmt == "stsb" or (fmt == "auto" and is_stsb_dir(src)):
        return load_stsb(src, split, max_rows)
    elif fmt == "hub" or not os.path.exists(src):
        from datasets import load_dataset

        ds = load_dataset(src, subset, split=split)
    else:
        return load_file(src, fmt, max_rows)
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return ds


def select_columns(ds: Dataset, columns, key: str) -> Dataset:
    if not columns:
        return ds
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"config key {key!r}: columns {missing} are not in the data (it has {ds.column_names})")
    return ds.select_columns(list(columns))


def scale_label(ds: Dataset, scale: float | None) -> Dataset:
    if not scale:
        return ds
    label = ds.column_names[-1]
    return ds.map(lambda r: {label: float(r[label]) / scale})
