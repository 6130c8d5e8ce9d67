"""``mine_hard_negatives``: sentence-transformers' hard-negative miner, with the search on device.

The flow and every rule follow ``sentence_transformers.util.mine_hard_negatives`` (6.2): the candidate
corpus is the positives plus ``corpus`` (deduplicated), duplicate anchors share their positives, the top
``range_max + max_positives`` candidates are retrieved, optionally rescored by a cross-encoder, positives
and filtered candidates are set to ``-inf``, then the best ``range_max`` are kept, the first ``range_min``
skipped, and ``num_negatives`` taken ("top") or sampled ("random"). Differences, all deliberate:

- The search is exact, on device, over corpus blocks split across all local devices with a running
  top-k (``util.semantic_search.sharded_top_k_search``), so the ``[Q, C]`` score matrix never exists;
  ``use_faiss`` and ``use_multi_process`` are accepted and ignored (the search is already sharded).
- Ties are ordered deterministically: descending score, then ascending corpus position (``torch.topk``
  leaves the order of exact ties unspecified).
- The cross-encoder rescoring calls ``cross_encoder.predict(pairs, batch_size=batch_size)`` once for all
  candidates instead of once per query; any object with that method works.
- ``"random"`` sampling calls Python's ``random.sample`` exactly as the reference does, so both draw the
  same negatives from the same ``random`` state only when their candidate lists agree; the draws are
  otherwise not comparable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections import Counter
from typing import Literal

import numpy as np

from stcore_jax.util.semantic_search import sharded_top_k_search

logger = logging.getLogger(__name__)

_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")
_QUERY_CHUNK = 1024  # queries per search block (bounded further by faiss_batch_size)
_CORPUS_BLOCK = 65536  # corpus rows per search block, split across the local devices
_NEG_INF = np.float32(-np.inf)


def _resolve_options(columns, anchor, positive, include_positives, output_format, output_scores, as_triplets,
                     margin, absolute_margin, defaults_changed):
    """The reference's argument rules: column defaults, deprecations, ``include_positives`` forcing n-tuple."""
    if not anchor or anchor not in columns:
        anchor = columns[0]
    if not positive or positive not in columns:
        if len(columns) < 2:
            raise ValueError("Dataset must contain at least two columns to select the positive column automatically.")
        positive = columns[1]
    if as_triplets is not None:
        output_format = "triplet" if as_triplets else "n-tuple"
        logger.warning(f"The `as_triplets` parameter is deprecated. Setting `output_format` to `{output_format}`.")
    if include_positives:
        if defaults_changed:
            logger.warning("When using `include_positives=True`, non-default filters may still discard the positives.")
        if output_format != "n-tuple":
            logger.warning('When using `include_positives=True`, `output_format` will be set to `"n-tuple"`.')
            output_format = "n-tuple"
    if output_format == "n-tuple-scores":
        logger.warning('`output_format="n-tuple-scores"` is deprecated; use "n-tuple" with `output_scores=True`.')
        output_format, output_scores = "n-tuple", True
    if output_format not in _FORMATS:
        raise ValueError(f"Invalid output_format: {output_format}. Must be one of 'triplet', 'n-tuple', "
                         "'labeled-pair', or 'labeled-list'.")
    if margin is not None:
        absolute_margin = margin
        logger.warning(f"The `margin` parameter is deprecated. Setting `absolute_margin` to `{absolute_margin}`.")
    return anchor, positive, output_format, output_scores, absolute_margin


def _check_range(range_min: int, range_max: int, num_negatives: int) -> None:
    if range_min < 0:
        raise ValueError(f"range_min must be non-negative, got range_min={range_min}.")
    if range_min >= range_max:
        raise ValueError(f"range_min must be smaller than range_max, got range_min={range_min} and "
                         f"range_max={range_max}.")
    if num_negatives > range_max - range_min:
        raise ValueError(f"Cannot mine {num_negatives} negatives per query: only {range_max - range_min} candidates "
                         f"remain after skipping the first range_min={range_min} of range_max={range_max}. Consider "
                         "decreasing num_negatives or range_min, or increasing range_max.")


def _embed(model, queries, corpus, batch_size, query_prompt_name, query_prompt, corpus_prompt_name, corpus_prompt,
           cache_folder, verbose):
    """Normalised float32 embeddings ``([Q, D], [C, D])``, cached as the reference caches them."""
    kwargs = dict(batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=verbose)
    q_file = c_file = None
    if cache_folder:
        os.makedirs(cache_folder, exist_ok=True)
        name = getattr(getattr(model, "model_card_data", None), "base_model", None) or ""
        q_hash = hashlib.sha256(repr((name, query_prompt, query_prompt_name, queries)).encode()).hexdigest()
        c_hash = hashlib.sha256(repr((name, corpus_prompt, corpus_prompt_name, corpus)).encode()).hexdigest()
        q_file = os.path.join(cache_folder, f"query_embeddings_{q_hash}.npy")
        c_file = os.path.join(cache_folder, f"corpus_embeddings_{c_hash}.npy")
    out = []
    for file, encode, texts, pname, prompt in (
        (c_file, model.encode_document, corpus, corpus_prompt_name, corpus_prompt),
        (q_file, model.encode_query, queries, query_prompt_name, query_prompt),
    ):
        if file and os.path.exists(file):
            emb = np.load(file)
        else:
            emb = np.asarray(encode(texts, prompt_name=pname, prompt=prompt, **kwargs), dtype=np.float32)
            if file:
                np.save(file, emb)
        out.append(emb)
    corpus_emb, query_emb = out
    return query_emb, corpus_emb


def _rescore(cross_encoder, queries, corpus, indices, all_queries, positives, batch_size):
    """Cross-encoder scores of every candidate ``[Q, K]`` (index -1 scores ``corpus[-1]`` as the reference
    does; masked later) and of every (query, positive) pair ``[P]``, float32."""
    pairs = [(queries[q], corpus[i]) for q, row in enumerate(indices.tolist()) for i in row]
    cand = np.asarray(cross_encoder.predict(pairs, batch_size=batch_size), dtype=np.float32).reshape(indices.shape)
    pos = np.asarray(cross_encoder.predict(list(zip(all_queries, positives)), batch_size=batch_size), np.float32)
    return cand, pos.reshape(-1)


def _filter(scores, min_positive, absolute_margin, relative_margin, max_score, min_score):
    """Set filtered candidates to -inf in place (float32 arithmetic, as the reference's tensors);
    returns ``{name: skipped}`` in the reference's order."""
    skipped = {}
    rules = []
    if absolute_margin is not None:
        rules.append(("absolute_margin", lambda s: s + np.float32(absolute_margin) > min_positive[:, None]))
    if relative_margin is not None:
        threshold = min_positive - np.abs(min_positive) * np.float32(relative_margin)
        rules.append(("relative_margin", lambda s: s > threshold[:, None]))
    if max_score is not None:
        rules.append(("max_score", lambda s: s > np.float32(max_score)))
    if min_score is not None:
        rules.append(("min_score", lambda s: s < np.float32(min_score)))
    for name, rule in rules:
        removed = rule(scores)
        scores[removed] = _NEG_INF
        if removed.any():
            skipped[name] = int(removed.sum())
    return skipped


def _select(scores, indices, range_min, range_max, num_negatives, sampling_strategy):
    """Best ``range_max`` (stable: equal scores keep the search order), skip ``range_min``, then take the top
    ``num_negatives`` or sample them. Returns ``(indices, scores)`` ``[Q, num_negatives]``."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :range_max]
    scores = np.take_along_axis(scores, order, 1)[:, range_min:]
    indices = np.take_along_axis(indices, order, 1)[:, range_min:]
    if sampling_strategy == "top":
        return indices[:, :num_negatives], scores[:, :num_negatives]
    if sampling_strategy != "random":  # the reference then keeps the whole window (it does not validate)
        return indices, scores
    num_options = np.maximum(indices.shape[1] - np.isinf(scores).sum(1), num_negatives)
    sampled = np.array([random.sample(range(int(n)), k=num_negatives) for n in num_options], dtype=np.int64)
    scores, indices = np.take_along_axis(scores, sampled, 1), np.take_along_axis(indices, sampled, 1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(indices, order, 1), np.take_along_axis(scores, order, 1)


def _build(output_format, output_scores, anchor_col, positive_col, queries, corpus, all_queries, positives,
           positive_indices, positive_scores, indices, neg_scores, num_negatives):
    """The output columns; also ``(negative_scores, difference_scores, maximum_possible_samples)`` for the
    statistics. ``indices``/``neg_scores`` are per unique query ``[Q, n]``; positives are flattened ``[P]``."""
    n_pos = [len(p) for p in positive_indices]
    if output_format == "labeled-pair":
        data = {anchor_col: [], positive_col: [], "score" if output_scores else "label": []}
        values = data["score" if output_scores else "label"]
        flat = 0
        for q, pos in enumerate(positive_indices):
            for p in pos:
                data[anchor_col].append(queries[q])
                data[positive_col].append(corpus[p])
                values.append(positive_scores[flat].item() if output_scores else 1)
                flat += 1
            for i, s in zip(indices[q], neg_scores[q]):
                if s != _NEG_INF:
                    data[anchor_col].append(queries[q])
                    data[positive_col].append(corpus[i])
                    values.append(s.item() if output_scores else 0)
        rep_scores = np.repeat(neg_scores, n_pos, axis=0)
        keep = rep_scores != _NEG_INF
        return data, rep_scores[keep], (positive_scores[:, None] - rep_scores)[keep], None
    # The other formats work per (query, positive) row: repeat each query's negatives for its positives.
    rep_idx, rep_scores = np.repeat(indices, n_pos, axis=0), np.repeat(neg_scores, n_pos, axis=0)
    keep = rep_scores != _NEG_INF
    diff = positive_scores[:, None] - rep_scores
    if output_format == "triplet":
        rows, cols = np.nonzero(keep)  # row-major, as boolean indexing walks it
        flat_pos = [p for pos in positive_indices for p in pos]
        row_query = np.repeat(np.arange(len(n_pos)), n_pos)
        data = {anchor_col: [queries[row_query[r]] for r in rows], positive_col: [corpus[flat_pos[r]] for r in rows],
                "negative": [corpus[i] for i in rep_idx[rows, cols]]}
        if output_scores:
            data["scores"] = [[positive_scores[r].item(), rep_scores[r, c].item()] for r, c in zip(rows, cols)]
        return data, rep_scores[keep], diff[keep], keep.size
    if output_format == "n-tuple":
        full = keep.all(axis=1)
        data = {anchor_col: [q for q, k in zip(all_queries, full) if k], positive_col: [p for p, k in
                                                                                      zip(positives, full) if k]}
        for j in range(num_negatives):
            data[f"negative_{j + 1}"] = [corpus[i] for i in rep_idx[full, j]]
        if output_scores:
            data["scores"] = np.concatenate([positive_scores[full, None], rep_scores[full]], axis=1).tolist()
        return data, rep_scores[full].reshape(-1), diff[full].reshape(-1), full.size
    any_kept = keep.any(axis=1)  # labeled-list
    rows = np.nonzero(any_kept)[0]
    data = {anchor_col: [all_queries[r] for r in rows],
            positive_col: [[positives[r]] + [corpus[i] for i in rep_idx[r][keep[r]]] for r in rows]}
    if output_scores:
        data["scores"] = [[positive_scores[r].item()] + rep_scores[r][keep[r]].tolist() for r in rows]
    else:
        data["labels"] = [[1] + [0] * int(keep[r].sum()) for r in rows]
    return data, rep_scores[keep], diff[keep], keep.shape[0]


def _print_stats(positive_scores, negative_scores, difference_scores, skipped, n_candidates, params, missing,
                 maximum, range_min):
    """The reference's summary table and messages (torch's lower median and unbiased std)."""
    def lower_median(x):
        return np.sort(x)[(x.size - 1) // 2] if x.size else float("nan")

    fmt = "{:<6} {:>14} {:>14} {:>14}"
    print(fmt.format("Metric", "Positive", "Negative", "Difference"))
    print(fmt.format("Count", f"{len(positive_scores):,}", f"{len(negative_scores):,}", ""))
    stats = [("Mean", np.mean), ("Median", lower_median), ("Std", lambda x: np.std(x, ddof=1)),
             ("Min", lambda x: np.min(x) if x.size else float("inf")),
             *[(name, lambda x, q=q: np.quantile(x, q) if x.size else float("inf"))
               for name, q in (("25%", 0.25), ("50%", 0.5), ("75%", 0.75))],
             ("Max", lambda x: np.max(x) if x.size else float("-inf"))]
    with np.errstate(all="ignore"):
        for name, fn in stats:
            values = [fn(np.asarray(x, np.float64)) for x in (positive_scores, negative_scores, difference_scores)]
            print(fmt.format(name, *(f"{v:.4f}" for v in values)))
    remaining = n_candidates
    for name, value in params.items():
        if name in skipped:
            # The margins' ratios are of the candidates left after earlier filters, max/min_score's too.
            print(f"Skipped {skipped[name]:,} potential negatives ({skipped[name] / remaining:.2%}) due to the "
                  f"{name} of {value}.")
            if name in ("absolute_margin", "relative_margin"):
                remaining -= skipped[name]
    if missing > 0:
        solutions = ["range_max"] + (["range_min"] if range_min > 0 else [])
        solutions += [n for n in ("absolute_margin", "relative_margin", "max_score") if params[n] is not None]
        considerations = ", ".join(solutions[:-1]) + " and " + solutions[-1] if len(solutions) > 1 else solutions[0]
        print(f"Could not find enough negatives for {missing} samples ({missing / maximum:.2%}). Consider adjusting "
              f"the {considerations} parameter{'s' if len(solutions) > 1 else ''} if you'd like to find more valid "
              "negatives.")


def mine_hard_negatives(
    dataset,
    model,
    anchor_column_name: str | None = None,
    positive_column_name: str | None = None,
    corpus: list[str] | None = None,
    cross_encoder=None,
    range_min: int = 0,
    range_max: int | None = None,
    max_score: float | None = None,
    min_score: float | None = None,
    absolute_margin: float | None = None,
    relative_margin: float | None = None,
    num_negatives: int = 3,
    sampling_strategy: Literal["random", "top"] = "top",
    query_prompt_name: str | None = None,
    query_prompt: str | None = None,
    corpus_prompt_name: str | None = None,
    corpus_prompt: str | None = None,
    include_positives: bool = False,
    output_format: Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"] = "triplet",
    output_scores: bool = False,
    batch_size: int = 32,
    faiss_batch_size: int = 16384,
    use_faiss: bool = False,
    use_multi_process: list[str] | bool = False,
    verbose: bool = True,
    cache_folder: str | None = None,
    as_triplets: bool | None = None,
    margin: float | None = None,
):
    """Add hard negatives to a dataset of (anchor, positive) pairs (``sentence_transformers.util``'s function).

    Same arguments, defaults, errors and output ``datasets.Dataset`` as the reference (see the module
    docstring for the deliberate differences). ``model`` is a stcore_jax ``SentenceTransformer`` (its
    ``encode_query``/``encode_document``, ``similarity_fn_name`` and ``similarity_pairwise`` are used);
    ``cross_encoder`` is anything with ``predict(pairs, batch_size=...) -> [len(pairs)]`` scores, used only
    when a margin or score filter is set (as in the reference). Output formats: "triplet" (anchor,
    positive, negative[, scores]), "n-tuple" (anchor, positive, negative_1..n[, scores]), "labeled-pair"
    (anchor, doc, label|score), "labeled-list" (anchor, [docs], labels|scores).
    """
    del use_faiss, use_multi_process  # the on-device search is exact and already uses every local device
    if len(dataset) == 0:
        raise ValueError("The dataset is empty. Please provide a non-empty dataset.")
    if faiss_batch_size <= 0:
        raise ValueError(f"faiss_batch_size must be a positive integer, got {faiss_batch_size}.")
    from datasets import Dataset

    filters_set = any(v is not None for v in (max_score, min_score, absolute_margin, relative_margin, margin))
    defaults_changed = range_min != 0 or range_max is not None or filters_set or sampling_strategy != "top"
    anchor_col, positive_col, output_format, output_scores, absolute_margin = _resolve_options(
        dataset.column_names, anchor_column_name, positive_column_name, include_positives, output_format,
        output_scores, as_triplets, margin, absolute_margin, defaults_changed)

    queries, positives = list(dataset[anchor_col]), list(dataset[positive_col])
    positives_per_query = list(Counter(q for q in queries if q is not None).values())  # pandas groupby().count()
    max_positives = max(positives_per_query)
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be at least 1, got num_negatives={num_negatives}.")
    if range_max is None:
        margins = absolute_margin is not None or relative_margin is not None or max_score is not None
        wide = margins or (cross_encoder is not None and min_score is not None)
        range_max = range_min + num_negatives * (10 if wide else 1) + max_positives
        if verbose:
            print(f"Setting range_max to {range_max} based on the provided parameters.")
    _check_range(range_min, range_max, num_negatives)

    corpus = list(dict.fromkeys((positives if corpus is None else list(corpus)) + positives))
    corpus_idx = {text: i for i, text in enumerate(corpus)}
    all_queries = queries
    queries = list(dict.fromkeys(queries))
    queries_idx = {q: i for i, q in enumerate(queries)}
    if verbose and len(queries) != len(all_queries):
        print(f"Found {len(queries)} unique queries out of {len(all_queries)} total queries.")
    if verbose and max_positives > 1:
        print(f"Found an average of {np.mean(positives_per_query):.3f} positives per query.")

    query_emb, corpus_emb = _embed(model, queries, corpus, batch_size, query_prompt_name, query_prompt,
                                   corpus_prompt_name, corpus_prompt, cache_folder, verbose)
    width = range_max + max_positives
    scores, indices = sharded_top_k_search(query_emb, corpus_emb, width, score_function=model.similarity_fn_name,
                                           query_chunk_size=min(faiss_batch_size, _QUERY_CHUNK),
                                           corpus_chunk_size=_CORPUS_BLOCK)
    if scores.shape[1] < width:  # a corpus smaller than the window: pad with index -1, as the reference
        pad = width - scores.shape[1]
        scores = np.concatenate([scores, np.full((len(queries), pad), _NEG_INF)], axis=1)
        indices = np.concatenate([indices, np.full((len(queries), pad), -1, np.int64)], axis=1)

    positive_indices = [[] for _ in queries]
    for query, positive in zip(all_queries, positives):
        if corpus_idx[positive] not in positive_indices[queries_idx[query]]:
            positive_indices[queries_idx[query]].append(corpus_idx[positive])
    n_pos = [len(p) for p in positive_indices]
    positives = [corpus[i] for pos in positive_indices for i in pos]  # grouped by unique query
    all_queries = [q for q, n in zip(queries, n_pos) for _ in range(n)]
    flat_pos = np.array([i for pos in positive_indices for i in pos], np.int64)
    positive_scores = np.asarray(model.similarity_pairwise(np.repeat(query_emb, n_pos, axis=0),
                                                           corpus_emb[flat_pos]), np.float32).reshape(-1)
    del query_emb, corpus_emb

    if cross_encoder is not None and filters_set:
        scores, positive_scores = _rescore(cross_encoder, queries, corpus, indices, all_queries, positives,
                                           batch_size)
    scores[indices == -1] = _NEG_INF
    if not include_positives:
        scores[np.stack([np.isin(row, pos) for row, pos in zip(indices, positive_indices)])] = _NEG_INF
    n_candidates = scores.size
    starts = np.cumsum([0] + n_pos[:-1])
    min_positive = np.minimum.reduceat(positive_scores, starts) if len(n_pos) else positive_scores
    skipped = _filter(scores, min_positive, absolute_margin, relative_margin, max_score, min_score)
    indices, neg_scores = _select(scores, indices, range_min, range_max, num_negatives, sampling_strategy)
    if verbose:
        print("Negative candidates mined, preparing dataset...")

    data, negative_scores, difference_scores, maximum = _build(
        output_format, output_scores, anchor_col, positive_col, queries, corpus, all_queries, positives,
        positive_indices, positive_scores, indices, neg_scores, num_negatives)
    if maximum is None:  # labeled-pair
        maximum = len(queries) * num_negatives + len(dataset)
    output = Dataset.from_dict(data)
    if verbose:
        params = {"absolute_margin": absolute_margin, "relative_margin": relative_margin, "max_score": max_score,
                  "min_score": min_score}
        _print_stats(positive_scores, negative_scores, difference_scores, skipped, n_candidates, params,
                     maximum - len(output), maximum, range_min)
    return output
