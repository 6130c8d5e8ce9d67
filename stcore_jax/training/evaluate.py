"""Evaluation helpers of the loop: the mean loss of a prepared dataset, and the evaluator run on
process 0 with its metrics broadcast to the other processes."""

from __future__ import annotations

import json

import jax
import numpy as np


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
    """The evaluator runs on process 0; the others wait and receive its metrics (multi-host)."""
    if jax.process_count() == 1:
        return evaluator(model, output_path=output_path, epoch=epoch, steps=steps)
    from jax.experimental import multihost_utils

    size = 1 << 16
    buf = np.zeros((size,), np.uint8)
    if is_main:
        results = evaluator(model, output_path=output_path, epoch=epoch, steps=steps)
        raw = json.dumps({k: float(v) for k, v in results.items()}).encode()
        if len(raw) > size:
            raise ValueError(f"evaluator returned {len(raw)} bytes of metrics; at most {size} can be broadcast")
        buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    return json.loads(bytes(buf[buf != 0]).decode())
