"""Reader for the STS benchmark's tab-separated files (``sts-{train,dev,test}.csv``)."""

from __future__ import annotations

import os


def read_sts(path: str | os.PathLike) -> tuple[list[str], list[str], list[float]]:
    """Read an STS-B file: genre, file, year, id, score, sentence1, sentence2[, sources…].

    Columns are tab-separated with no quoting; some rows carry two extra source columns, which are
    ignored. Returns ``(sentences1, sentences2, scores)`` with scores on the original 0–5 scale.
    """
    s1, s2, scores = [], [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 7:
                raise ValueError(f"{path}:{lineno}: expected at least 7 tab-separated columns, got {len(parts)}")
            scores.append(float(parts[4]))
            s1.append(parts[5])
            s2.append(parts[6])
    return s1, s2, scores
