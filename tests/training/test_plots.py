"""Training curves (training/plots.py): the series read from logs.jsonl, the PNGs drawn from exactly them, the
end-of-training callback, ``stcore-jax plot`` and the loss curve in the exported model card.

The plotted data is checked, not pixels: the series against the records they come from, the drawn figure's lines
against the series, and each PNG for its signature and size. One short tiny-model training run serves the
end-of-training and model-card checks."""

import json
import logging
import math
import os
import struct
import sys
import types

import numpy as np
import pytest

from stcore_jax.cli import main as cli_main
from stcore_jax.training import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the PNG signature."""
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", path
    return struct.unpack(">II", head[16:24])


def _write_logs(directory, records):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "logs.jsonl"), "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


# Two datasets' eval losses, an evaluator, non-finite values as the logger writes them (null) and as a hand-written
# file may hold them (NaN), a throughput key, a missing learning rate, a line cut short by a crash, and a resume:
# the first run reached step 30, the second restarts from a checkpoint at step 20.
RECORDS = [
    {"step": 0, "eval_a_loss": 2.0, "eval_b_loss": 3.0, "eval_dev_spearman": 0.1, "eval_runtime": 1.0, "epoch": 0},
    {"step": 10, "loss": 1.5, "learning_rate": 1e-4, "grad_norm": 2.0, "epoch": 0.1, "samples_per_second": 9.0},
    {"step": 10, "eval_a_loss": 1.8, "eval_b_loss": 2.9, "eval_dev_spearman": 0.3, "eval_samples_per_second": 5.0},
    {"step": 20, "loss": None, "learning_rate": 2e-4, "epoch": 0.2},
    {"step": 30, "loss": 1.0, "learning_rate": 3e-4, "epoch": 0.3},
    {"step": 30, "eval_a_loss": 1.1, "eval_dev_spearman": 0.5},
    {"step": 25, "loss": 1.2, "learning_rate": None, "epoch": 0.25},  # resumed: step 30 (the old run's) is dropped
    {"step": 30, "loss": 0.9, "learning_rate": 3.5e-4, "epoch": 0.3, "skipped_nonfinite": 0},
    {"step": 30, "eval_a_loss": float("nan"), "eval_b_loss": 2.5, "eval_dev_spearman": 0.6, "note": "text"},
]


def _text_records():
    lines = [json.dumps(r) for r in RECORDS]  # json writes the NaN as NaN, which json.loads reads back
    return [*lines[:4], "", *lines[4:], '{"step": 40, "loss": 0.']  # a blank line; a last line cut short


def _assert_series(s, steps, values):
    np.testing.assert_array_equal(s.steps, np.array(steps, np.int64))
    np.testing.assert_array_equal(s.values, np.array(values, np.float64))


def test_series_from_logs(tmp_path):
    _write_logs(tmp_path, _text_records())
    records = plots.read_logs(str(tmp_path / "logs.jsonl"))
    assert len(records) == len(RECORDS)  # the blank and the cut-short lines are skipped
    series = plots.collect_series(records)
    _assert_series(series["loss"], [10, 25, 30], [1.5, 1.2, 0.9])  # null dropped; 30 is the resumed run's
    _assert_series(series["learning_rate"], [10, 20, 30], [1e-4, 2e-4, 3.5e-4])  # None at 25 dropped
    _assert_series(series["eval_a_loss"], [0, 10], [2.0, 1.8])  # the old run's 30 cut by the resume, NaN dropped
    _assert_series(series["eval_b_loss"], [0, 10, 30], [3.0, 2.9, 2.5])
    _assert_series(series["eval_dev_spearman"], [0, 10, 30], [0.1, 0.3, 0.6])
    assert "note" not in series and "step" not in series

    charts = {c.file: c.panels for c in plots.plot_series(records)}
    assert list(charts) == ["loss.png", "learning_rate.png", "eval_metrics.png"]
    assert list(charts["loss.png"]) == ["loss"]
    assert list(charts["loss.png"]["loss"]) == ["loss", "eval_a_loss", "eval_b_loss"]  # training, then eval losses
    s = series["learning_rate"]
    _assert_series(charts["learning_rate.png"]["learning_rate"]["learning_rate"], s.steps, s.values)
    # Evaluator scores only: no losses (they are on loss.png), no runtime or throughput.
    assert list(charts["eval_metrics.png"]) == ["eval_dev_spearman"]
    for panels in charts.values():
        for lines in panels.values():
            for key, s in lines.items():
                _assert_series(s, series[key].steps, series[key].values)
                assert np.isfinite(s.values).all() and (np.diff(s.steps) > 0).all()


def test_no_eval_and_empty():
    train_only = [{"step": s, "loss": 1.0 / s, "learning_rate": 1e-3, "epoch": s / 10} for s in (1, 2, 3)]
    assert [c.file for c in plots.plot_series(train_only)] == ["loss.png", "learning_rate.png"]
    assert plots.plot_series([]) == []
    assert plots.plot_series([{"step": 1, "loss": math.inf, "learning_rate": None}]) == []


def test_eval_metrics_paged():
    row = {"step": 5, **{f"eval_m{i:02d}": float(i) for i in range(45)}}
    charts = plots.plot_series([row])
    assert [c.file for c in charts] == ["eval_metrics.png", "eval_metrics_2.png", "eval_metrics_3.png"]
    assert [len(c.panels) for c in charts] == [20, 20, 5]
    assert [k for c in charts for k in c.panels] == [f"eval_m{i:02d}" for i in range(45)]


def test_pngs_hold_the_series(tmp_path):
    _write_logs(tmp_path, _text_records())
    paths = plots.write_plots(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["loss.png", "learning_rate.png", "eval_metrics.png"]
    for p in paths:
        w, h = _png_size(p)
        assert w >= 300 and h >= 200 and os.path.getsize(p) > 5000, (p, w, h)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]
    # What the figure draws is the chart's series, line for line.
    for chart in plots.plot_series(plots.read_logs(str(tmp_path / "logs.jsonl"))):
        fig = plots.draw_chart(chart, str(tmp_path / ("again_" + chart.file)))
        drawn = [ax for ax in fig.axes if ax.get_visible()]
        assert len(drawn) == len(chart.panels)
        for ax, lines in zip(drawn, chart.panels.values()):
            assert len(ax.lines) == len(lines)
            for line, s in zip(ax.lines, lines.values()):
                np.testing.assert_array_equal(line.get_xdata(), s.steps)
                np.testing.assert_array_equal(line.get_ydata(), s.values)


def test_callback_only_on_process_zero(tmp_path, monkeypatch):
    monkeypatch.setenv(plots.PLOTS_ENV, "1")
    _write_logs(tmp_path, RECORDS)
    args = types.SimpleNamespace(output_dir=str(tmp_path))
    card = types.SimpleNamespace(training_curve="stale.png")
    model = types.SimpleNamespace(model_card_data=card)
    cb = plots.TrainingPlotsCallback()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(plots.PLOTS_ENV, "0")  # turned off: nothing written, the card untouched
        cb.on_train_end(args, types.SimpleNamespace(is_world_process_zero=True), None, model=model)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".png")] and card.training_curve == "stale.png"
    cb.on_train_end(args, types.SimpleNamespace(is_world_process_zero=False), None, model=model)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".png")] and card.training_curve == "stale.png"
    cb.on_train_end(args, types.SimpleNamespace(is_world_process_zero=True), None, model=model)
    assert card.training_curve == str(tmp_path / "loss.png") and os.path.isfile(card.training_curve)


def test_without_matplotlib(tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv(plots.PLOTS_ENV, "1")
    """No matplotlib: the end of training warns and goes on; ``stcore-jax plot`` says what to install."""
    _write_logs(tmp_path, RECORDS)
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib... raises ImportError
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plots.write_plots(str(tmp_path))
    card = types.SimpleNamespace(training_curve="stale.png")
    with caplog.at_level(logging.WARNING, logger="stcore_jax.training.plots"):
        plots.TrainingPlotsCallback().on_train_end(types.SimpleNamespace(output_dir=str(tmp_path)),
                                                   types.SimpleNamespace(is_world_process_zero=True), None,
                                                   model=types.SimpleNamespace(model_card_data=card))
    assert "pip install matplotlib" in caplog.text and card.training_curve is None
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".png")]
    assert cli_main(["plot", str(tmp_path)]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err


def test_cli_plot(tmp_path, capsys):
    assert cli_main(["plot", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "logs.jsonl" in err and "does not exist" in err
    _write_logs(tmp_path / "empty", [])
    assert cli_main(["plot", str(tmp_path / "empty")]) == 2
    assert "is empty" in capsys.readouterr().err
    _write_logs(tmp_path / "epochs", [{"step": 3, "epoch": 1.0}])
    assert cli_main(["plot", str(tmp_path / "epochs")]) == 2
    assert "holds no loss, learning rate or eval metric" in capsys.readouterr().err
    _write_logs(tmp_path / "run", RECORDS)
    assert cli_main(["plot", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "run" / f) for f in ("loss.png", "learning_rate.png", "eval_metrics.png")]
    assert all(_png_size(p) for p in printed)


# -- one short training run: the end-of-training plots and the exported card --------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_bert_dir, stsb_dir, tmp_path_factory):
    from datasets import Dataset

    from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from stcore_jax.evaluation import EmbeddingSimilarityEvaluator
    from stcore_jax.losses import CoSENTLoss
    from stcore_jax.util import read_sts

    s1, s2, sc = read_sts(stsb_dir / "sts-dev.csv")
    data = Dataset.from_dict({"sentence1": s1[:64], "sentence2": s2[:64], "score": [x / 5 for x in sc[:64]]})
    evaluator = EmbeddingSimilarityEvaluator(s1[64:80], s2[64:80], [x / 5 for x in sc[64:80]], name="dev")
    model = SentenceTransformer(tiny_bert_dir)
    out = str(tmp_path_factory.mktemp("plots") / "run")
    args = SentenceTransformerTrainingArguments(
        output_dir=out, mesh_shape={"data": 1}, max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
        warmup_steps=2, logging_steps=1, eval_strategy="steps", eval_steps=2, save_strategy="no", disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, eval_dataset=data.select(range(16)),
                                         loss=CoSENTLoss(model), evaluator=evaluator)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(plots.PLOTS_ENV, "1")  # tests/conftest.py turns plots off for the rest of the suite
        trainer.train()
    return out, trainer


def test_plots_written_at_end_of_training(trained):
    out, trainer = trained
    assert {"loss.png", "learning_rate.png", "eval_metrics.png"} <= set(os.listdir(out))
    for f in ("loss.png", "learning_rate.png", "eval_metrics.png"):
        w, h = _png_size(os.path.join(out, f))
        assert w >= 300 and h >= 200
    # The plotted series are the trainer's own log history, point for point.
    charts = {c.file: c.panels for c in plots.plot_series(plots.read_logs(os.path.join(out, "logs.jsonl")))}
    history = trainer.state.log_history
    train_rows = [h for h in history if "loss" in h]
    loss = charts["loss.png"]["loss"]
    _assert_series(loss["loss"], [h["step"] for h in train_rows], [h["loss"] for h in train_rows])
    assert [h["step"] for h in train_rows] == [1, 2, 3, 4]
    lr = charts["learning_rate.png"]["learning_rate"]["learning_rate"]
    _assert_series(lr, [1, 2, 3, 4], [h["learning_rate"] for h in train_rows])
    assert lr.values[0] < lr.values[1]  # the warm-up is on the curve
    eval_rows = [h for h in history if "eval_loss" in h]
    _assert_series(loss["eval_loss"], [2, 4], [h["eval_loss"] for h in eval_rows])
    metrics = charts["eval_metrics.png"]
    assert "eval_dev_spearman_cosine" in metrics and "eval_runtime" not in metrics
    _assert_series(metrics["eval_dev_spearman_cosine"]["eval_dev_spearman_cosine"], [2, 4],
                   [h["eval_dev_spearman_cosine"] for h in eval_rows])


def test_model_card_shows_loss_curve(trained, tmp_path):
    out, trainer = trained
    final = os.path.join(out, "final")
    with open(os.path.join(final, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert "![Training loss](loss.png)" in card
    logs = card[card.index("### Training Logs"):]
    assert logs.index("![Training loss](loss.png)") < logs.index("| epoch | step | Training Loss")  # table kept
    with open(os.path.join(final, "loss.png"), "rb") as a, open(os.path.join(out, "loss.png"), "rb") as b:
        assert a.read() == b.read()
    # A later save of the same model carries the curve too; a model that was never trained links none.
    trainer.model.save_pretrained(str(tmp_path / "again"))
    assert (tmp_path / "again" / "loss.png").is_file()
    assert "![Training loss](loss.png)" in (tmp_path / "again" / "README.md").read_text()
    from stcore_jax import SentenceTransformer

    SentenceTransformer(os.path.join(final)).save_pretrained(str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh" / "loss.png").exists()
    assert "Training loss" not in (tmp_path / "fresh" / "README.md").read_text()
