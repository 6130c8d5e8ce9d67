"""Non-finite loss or gradient: ``nonfinite_policy="skip"`` (default) or ``"stop"``.

The step itself (``step.py``) never applies a non-finite update: parameters and optimizer state keep
their values and ``state["skipped"]`` counts it. This module is the host side: the warning for
"skip", and for "stop" a report of the offending batch (step, dataset name, and what the model family
reports of its rows: for text, the texts and labels) written to ``output_dir`` before
:class:`NonFiniteLossError` is raised.
"""

from __future__ import annotations

import json
import logging
import os

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """``nonfinite_policy="stop"`` met a non-finite loss or gradient; ``report`` is the batch file."""

    def __init__(self, message: str, report: str | None = None):
        super().__init__(message)
        self.report = report


def warn_skipped(skipped: int, first_step: int, last_step: int) -> None:
    if skipped:
        logger.warning("Skipped %d update(s) with a non-finite loss or gradient in steps %d-%d "
                       "(nonfinite_policy='skip': parameters and optimizer state unchanged by them)",
                       skipped, first_step, last_step)


def stop_on_nonfinite(output_dir: str, step: int, dataset_name: str, rows_report: dict, write: bool = True):
    """Write ``output_dir/nonfinite_batch_step{step}.json`` (process 0): the step, the dataset's name and
    ``rows_report`` (the family's account of the batch's rows, ``Task.batch_report``); raise
    NonFiniteLossError."""
    path = os.path.join(output_dir, f"nonfinite_batch_step{step}.json")
    if write:
        os.makedirs(output_dir, exist_ok=True)
        report = {"step": step, "dataset": dataset_name, **rows_report}
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
        os.replace(tmp, path)
    raise NonFiniteLossError(
        f"Non-finite loss or gradient at step {step} on dataset {dataset_name!r} (nonfinite_policy='stop'). "
        f"The batch's texts are in {path}; fix or drop those rows, or use nonfinite_policy='skip' to skip such "
        "updates.", report=path)
