"""Evaluation helpers of the loop: the mean loss of a prepared dataset, and the evaluator run on every
process (multi-host: SPMD inference, process 0's metrics broadcast so that all agree)."""

from __future__ import annotations

import json
import logging

import jax
import numpy as np

logger = logging.getLogger(__name__)


def mean_eval_loss(eval_step, trainable, n_rows: int, batch_size: int, make_batch) -> tuple[dict, int]:
    """``({metric: mean over rows}, rows)`` of ``eval_step(trainable, batch)`` over rows ``0..n_rows-1`` in
    order, ``batch_size`` at a time; ``make_batch(rows)`` collates and places a batch. Each batch's metrics
    are weighted by its real rows (the last batch may be partial)."""
    totals, count = None, 0
    order = np.arange(n_rows)
    for s in range(0, n_rows, batch_size):
        rows = order[s : s + batch_size].tolist()
        out = eval_step(trainable, make_batch(rows))
        w = len(rows)
        totals = jax.tree_util.tree_map(lambda a: a * w, out) if totals is None else jax.tree_util.tree_map(
            lambda t, a: t + a * w, totals, out)
        count += w
    return {k: float(v) / count for k, v in jax.device_get(totals).items()}, count


def run_evaluator(evaluator, model, *, output_path, epoch, steps, is_main: bool) -> dict:
    """The evaluator's metrics. Multi-host: every process runs it (SPMD; ``model.encode`` / ``predict``
    shard each batch over all processes' devices, a collective, so no process may skip it), the non-main
    ones with ``output_path=None`` (no CSV writes), and process 0's metrics are broadcast so that every
    process logs, early-stops and picks the best checkpoint on the same numbers."""
    if jax.process_count() == 1:
        return evaluator(model, output_path=output_path, epoch=epoch, steps=steps)
    from jax.experimental import multihost_utils

    results = evaluator(model, output_path=output_path if is_main else None, epoch=epoch, steps=steps)
    mine = {k: float(v) for k, v in results.items()}
    size = 1 << 16
    buf = np.zeros((size,), np.uint8)
    if is_main:
        raw = json.dumps(mine).encode()
        if len(raw) > size:
            raise ValueError(f"evaluator returned {len(raw)} bytes of metrics; at most {size} can be broadcast")
        buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    main = json.loads(bytes(buf[buf != 0]).decode())
    off = {k: (mine.get(k), v) for k, v in main.items() if not np.isclose(mine.get(k, np.nan), v, rtol=0, atol=1e-6,
                                                                           equal_nan=True)}
    if off:
        logger.warning("process %d computed different evaluator metrics than process 0 (using process 0's): %s",
                       jax.process_index(), off)
    return main
