"""Host-side statistics over 1-D score arrays, with the reference's tie semantics.

These are small ``O(N log N)`` numpy computations over already-computed scores; they reproduce
``scipy.stats.pearsonr`` / ``spearmanr`` (average ranks for ties), ``sklearn.metrics``'
``average_precision_score`` (one precision/recall point per distinct score) and
``matthews_corrcoef``, and the threshold searches of sentence-transformers'
``BinaryClassificationEvaluator``, without depending on scipy or scikit-learn.
"""

from __future__ import annotations

import numpy as np


def pearson(x, y) -> float:
    """Pearson correlation (``scipy.stats.pearsonr(x, y).statistic``), in float64."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    xm = x - x.mean()
    ym = y - y.mean()
    denom = np.linalg.norm(xm) * np.linalg.norm(ym)
    if denom == 0:
        return float("nan")
    return float(np.clip(np.dot(xm / np.linalg.norm(xm), ym / np.linalg.norm(ym)), -1.0, 1.0))


def average_ranks(x) -> np.ndarray:
    """1-based ranks, ties sharing their average rank (``scipy.stats.rankdata(method="average")``)."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.concatenate([[True], xs[1:] != xs[:-1]])
    group_id = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    ends = np.concatenate([starts[1:], [len(x)]])
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 … end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = avg[group_id]
    return ranks


def spearman(x, y) -> float:
    """Spearman rank correlation (``scipy.stats.spearmanr(x, y).statistic``)."""
    return pearson(average_ranks(x), average_ranks(y))


def _descending_groups(scores):
    """Sort descending; return sort order and the last index of each group of equal scores."""
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    s = np.asarray(scores)[order]
    ends = np.flatnonzero(np.concatenate([s[1:] != s[:-1], [True]]))
    return order, ends


def average_precision(labels, scores) -> float:
    """``sklearn.metrics.average_precision_score`` for binary labels: ``sum_n (R_n - R_{n-1}) P_n``."""
    labels = np.asarray(labels).astype(np.float64)
    order, ends = _descending_groups(scores)
    tps = np.cumsum(labels[order])[ends]
    if len(tps) == 0 or tps[-1] == 0:
        return float("nan") if len(tps) == 0 else 0.0
    precision = tps / (ends + 1)
    recall_gain = np.diff(np.concatenate([[0.0], tps])) / tps[-1]
    return float(np.sum(recall_gain * precision))


def matthews_corrcoef(labels, predicted) -> float:
    """``sklearn.metrics.matthews_corrcoef`` for binary labels (0.0 when undefined)."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(predicted).astype(bool)
    tp = float(np.sum(y & p))
    tn = float(np.sum(~y & ~p))
    fp = float(np.sum(~y & p))
    fn = float(np.sum(y & ~p))
    n = tp + tn + fp + fn
    # sklearn's covariance form: cov(y, p) / sqrt(cov(y, y) cov(p, p)), scaled by n^2.
    cov_yp = (tp + tn) * n - ((tp + fn) * (tp + fp) + (tn + fp) * (tn + fn))
    cov_yy = n * n - ((tp + fn) ** 2 + (tn + fp) ** 2)
    cov_pp = n * n - ((tp + fp) ** 2 + (tn + fn) ** 2)
    if cov_yy * cov_pp == 0:
        return 0.0
    return float(cov_yp / np.sqrt(cov_yy * cov_pp))


def _oriented(scores, high_score_more_similar: bool):
    """Scores sorted best-first, their labels' order, and the last index of each tie group."""
    scores = np.asarray(scores)
    key = -scores if high_score_more_similar else scores
    order = np.argsort(key, kind="mergesort")
    s = scores[order]
    ends = np.flatnonzero(np.concatenate([s[1:] != s[:-1], [True]]))
    return s, order, ends


def _midpoint(s, ends, i):
    """Threshold between group ``i`` and the next one, in the scores' dtype (as the reference)."""
    e = ends[i]
    if e == len(s) - 1:
        return s[e]
    threshold = (s[e] + s[e + 1]) / s.dtype.type(2) if np.issubdtype(s.dtype, np.floating) else (s[e] + s[e + 1]) / 2
    # A rounded midpoint must not include the next score group.
    return s[e] if threshold == s[e + 1] else threshold


def best_accuracy_and_threshold(scores, labels, high_score_more_similar: bool):
    """Best accuracy of ``score >= t`` (or ``<= t`` for distances) over thresholds between groups."""
    labels = np.asarray(labels)
    n = len(labels)
    if n == 0:
        return 0, -1
    s, order, ends = _oriented(scores, high_score_more_similar)
    score_dtype = np.result_type(np.asarray(scores).dtype, np.float16)
    max_acc = np.sum(labels == 0) / n
    best_threshold = np.nextafter(s[0], np.inf if high_score_more_similar else -np.inf, dtype=score_dtype)
    positives = np.cumsum(labels[order] == 1)[ends]
    negatives_seen = (ends + 1) - positives
    acc = (positives + (np.sum(labels == 0) - negatives_seen)) / n
    best = int(np.argmax(acc))
    if acc[best] > max_acc:
        max_acc = acc[best]
        best_threshold = _midpoint(s, ends, best)
    return float(max_acc), best_threshold


def best_f1_and_threshold(scores, labels, high_score_more_similar: bool):
    """Best F1 (with its precision, recall and threshold) over thresholds between score groups."""
    labels = np.asarray(labels)
    s, order, ends = _oriented(scores, high_score_more_similar)
    total = np.sum(labels)
    correct = np.cumsum(labels[order])[ends]
    extracted = ends + 1
    valid = correct > 0
    if not np.any(valid):
        return 0, 0, 0, 0
    precision = np.where(valid, correct / extracted, 0.0)
    recall = np.where(valid, correct / max(total, 1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(valid, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))
    if not f1[best] > 0:
        return 0, 0, 0, 0
    return float(f1[best]), float(precision[best]), float(recall[best]), _midpoint(s, ends, best)
