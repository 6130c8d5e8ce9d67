"""Training curves: PNG plots of ``output_dir/logs.jsonl`` (what :class:`JsonLinesLogger` writes).

The files, written into the output directory at the end of training (:class:`TrainingPlotsCallback`, process 0)
and by ``stcore-jax plot OUTPUT_DIR``:

- ``loss.png``: the training loss (``loss``) and every evaluation loss (``eval_loss``, ``eval_<dataset>_loss``,
  ...: eval keys ending in ``loss``) against the optimizer step. The exported model card shows this one.
- ``learning_rate.png``: ``learning_rate`` against the step.
- ``eval_metrics.png`` (then ``eval_metrics_2.png``, ... past :data:`PANELS_PER_PAGE` metrics): one panel per
  other ``eval_*`` metric (evaluator scores; ``eval_runtime`` and the ``*_per_second`` throughputs are left out).

A file is written only when it has a point to draw (no evaluation: no ``eval_metrics.png``). What is drawn is
:func:`plot_series`'s output and nothing else, so tests check the data, not pixels. matplotlib is imported only
when a file is drawn (Agg, through its object API: the process's pyplot backend is left alone).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import NamedTuple

import numpy as np

from stcore_jax.training.callbacks import TrainerCallback

logger = logging.getLogger(__name__)

LOGS_FILE = "logs.jsonl"
LOSS_FILE = "loss.png"
LEARNING_RATE_FILE = "learning_rate.png"
EVAL_FILE = "eval_metrics.png"
PANELS_PER_PAGE = 20  # eval metrics per image (an IR or NanoBEIR evaluator logs dozens to hundreds)
_NOT_METRICS = ("eval_runtime", "_per_second")  # eval keys that time the evaluation rather than score the model


class Series(NamedTuple):
    """One logged value over training: ``steps`` [N] int64, strictly increasing; ``values`` [N] float64, finite."""

    steps: np.ndarray
    values: np.ndarray


@dataclasses.dataclass(frozen=True)
class Chart:
    """One PNG: its file name and its panels (panel title -> line label (the log key) -> series), one axes each."""

    file: str
    panels: dict[str, dict[str, Series]]


def read_logs(path: str) -> list[dict]:
    """The records of a ``logs.jsonl`` file, in file order. Blank lines, lines that are not JSON objects (a
    line cut short by a crash) and records without an integer ``step`` are skipped."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s line %d is not JSON; skipped", path, n)
                continue
            if isinstance(row, dict) and isinstance(row.get("step"), int) and not isinstance(row["step"], bool):
                records.append(row)
    return records


def _finite(value) -> float | None:
    """``value`` as a float when it is a finite number (the logger writes a non-finite loss as null)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def collect_series(records: list[dict]) -> dict[str, Series]:
    """Every numeric key of ``records`` (but ``step``) as a series over the steps, in order of first appearance.

    Non-finite and non-numeric values are dropped. A resumed (or restarted) run appends to the same file from an
    earlier step: a record whose step is below the previous record's cuts every series back to before that step,
    and a value logged again at a step replaces the earlier one, so the curve is the last run's.
    """
    points: dict[str, list[tuple[int, float]]] = {}

    def cut(pts, step):  # drop the points at or after ``step`` (they belong to an abandoned run)
        while pts and pts[-1][0] >= step:
            pts.pop()

    previous = None
    for row in records:
        step = row["step"]
        if previous is not None and step < previous:
            for pts in points.values():
                cut(pts, step)
        previous = step
        for key, value in row.items():
            v = _finite(value)
            if key == "step" or v is None:
                continue
            pts = points.setdefault(key, [])
            cut(pts, step)
            pts.append((step, v))
    return {k: Series(np.array([s for s, _ in pts], np.int64), np.array([v for _, v in pts], np.float64))
            for k, pts in points.items() if pts}


def plot_series(records: list[dict]) -> list[Chart]:
    """The charts of ``records`` (see the module docstring), those with at least one point."""
    series = collect_series(records)
    evals = [k for k in series if k.startswith("eval_") and not any(t in k for t in _NOT_METRICS)]
    losses = {k: series[k] for k in ["loss", *(k for k in evals if k.endswith("loss"))] if k in series}
    metrics = [k for k in evals if not k.endswith("loss")]
    charts = []
    if losses:
        charts.append(Chart(LOSS_FILE, {"loss": losses}))
    if "learning_rate" in series:
        charts.append(Chart(LEARNING_RATE_FILE, {"learning_rate": {"learning_rate": series["learning_rate"]}}))
    for page, start in enumerate(range(0, len(metrics), PANELS_PER_PAGE)):
        name = EVAL_FILE if page == 0 else EVAL_FILE.replace(".png", f"_{page + 1}.png")
        charts.append(Chart(name, {k: {k: series[k]} for k in metrics[start:start + PANELS_PER_PAGE]}))
    return charts


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(f"plotting training curves needs matplotlib: pip install matplotlib ({e})") from None
    return Figure, FigureCanvasAgg


def draw_chart(chart: Chart, path: str):
    """Write ``chart`` as a PNG at ``path`` (through a temporary file: a reader never sees half a PNG); the
    matplotlib ``Figure`` drawn (its axes' lines hold exactly ``chart``'s series)."""
    Figure, FigureCanvasAgg = _matplotlib()
    n = len(chart.panels)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(6.4, 4.0) if n == 1 else (4.0 * cols, 2.8 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (title, lines) in zip(axes, chart.panels.items()):
        for label, s in lines.items():
            # Markers where the points are few (evaluations, short runs): a single point still shows.
            ax.plot(s.steps, s.values, marker="o" if len(s.steps) <= 40 else None, markersize=3,
                    label="training loss" if label == "loss" else label)
        ax.set_title(title.removeprefix("eval_"), fontsize=10 if n == 1 else 8)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=8)
    for ax in axes[n:]:
        ax.set_visible(False)
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)
    return fig


def write_plots(output_dir: str, records: list[dict] | None = None) -> list[str]:
    """Write the charts of ``records`` (default: ``output_dir/logs.jsonl``) into ``output_dir``; their paths.
    Raises FileNotFoundError without a ``logs.jsonl`` and ImportError without matplotlib."""
    if records is None:
        records = read_logs(os.path.join(output_dir, LOGS_FILE))
    charts = plot_series(records)
    if charts:
        _matplotlib()  # fail before writing anything
    paths = []
    for chart in charts:
        path = os.path.join(output_dir, chart.file)
        draw_chart(chart, path)
        paths.append(path)
    return paths


PLOTS_ENV = "STCORE_JAX_TRAINING_PLOTS"  # "0": no plots at the end of training


class TrainingPlotsCallback(TrainerCallback):
    """At the end of training, write :func:`write_plots` into ``args.output_dir`` (process 0 only) and give the
    model card the loss curve (``model_card_data.training_curve``; the card copies it beside README.md).

    Plotting never fails a run: without matplotlib, or on any error, it logs a warning and writes nothing.
    (``trainer.remove_callback(TrainingPlotsCallback)``, or the environment variable
    ``STCORE_JAX_TRAINING_PLOTS=0``, turns it off; the test suite sets the latter for its hundreds of short runs.)
    """

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero or os.environ.get(PLOTS_ENV, "1") == "0":
            return
        paths = []
        if os.path.isfile(os.path.join(args.output_dir, LOGS_FILE)):
            try:
                paths = write_plots(args.output_dir)
            except ImportError as e:
                logger.warning("No training plots: %s", e)
            except Exception:  # noqa: BLE001 (a plot is a by-product: the trained model matters more)
                logger.warning("Writing the training plots failed; the run is unaffected", exc_info=True)
        card = getattr(model, "model_card_data", None)
        if card is not None and hasattr(card, "training_curve"):  # this run's curve, or none (not a stale one)
            card.training_curve = next((p for p in paths if os.path.basename(p) == LOSS_FILE), None)
