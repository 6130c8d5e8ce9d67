"""The logging window: the step metrics since the last log line, fetched from the devices only when
it is written (the one host sync of the loop)."""

from __future__ import annotations

import time

import jax
import numpy as np


class LogWindow:
    """Metrics (device arrays) of the steps since the last log, and the samples and tokens they fed."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.metrics, self.t0, self.samples, self.tokens = [], time.perf_counter(), 0, 0

    def __bool__(self) -> bool:
        return bool(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def count(self, samples: int, tokens: int) -> None:
        self.samples += samples
        self.tokens += tokens

    def append(self, metrics: dict) -> None:
        self.metrics.append(metrics)

    def summary(self, *, nan_inf_filter: bool, learning_rate: float | None, epoch: float) -> dict:
        """The log line: mean loss (over its finite values with ``nan_inf_filter``, as the reference's
        ``logging_nan_inf_filter``), the last grad norm, throughput, skipped steps and the mean of every
        other metric the objective returned."""
        fetched = jax.device_get(self.metrics)
        losses = np.array([m["loss"] for m in fetched], np.float64)
        finite = np.isfinite(losses)
        if nan_inf_filter and finite.any():
            losses = losses[finite]
        dt = max(time.perf_counter() - self.t0, 1e-9)
        logs = {"loss": float(losses.mean()), "grad_norm": float(fetched[-1]["grad_norm"]),
                "learning_rate": learning_rate, "epoch": round(epoch, 4), "samples_per_second": self.samples / dt,
                "tokens_per_second": self.tokens / dt,
                "skipped_nonfinite": int(sum(1 for m in fetched if not m["finite"]))}
        for k in fetched[-1]:
            if k not in ("loss", "grad_norm", "finite"):
                logs[k] = float(np.mean([m[k] for m in fetched]))
        return logs
