"""In-process faults: a non-finite batch under ``nonfinite_policy`` "skip" (in a run then stopped by
SIGINT, i.e. Ctrl-C) and "stop".

The non-finite batch is honest dirty data: one row's score is ``inf`` (data validation rejects NaN
labels, not infinite ones), so CosineSimilarityLoss's MSE and its gradient are infinite on exactly the
batch that holds that row.
"""

import json
import logging
import math
import os
import signal

import jax
import numpy as np
import pytest
from datasets import Dataset

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.losses import CosineSimilarityLoss
from stcore_jax.training import TrainerCallback, checkpoint as ckpt
from stcore_jax.training.nonfinite import NonFiniteLossError
from stcore_jax.training.preemption import TrainingInterrupted
from stcore_jax.util import read_sts

BAD_ROW = 37


@pytest.fixture(scope="module")
def sts_rows(stsb_dir):
    s1, s2, sc = read_sts(stsb_dir / "sts-train.csv")
    scores = [x / 5 for x in sc[:64]]
    scores[BAD_ROW] = math.inf
    return {"sentence1": s1[:64], "sentence2": s2[:64], "score": scores}


class Snapshots(TrainerCallback):
    """Host copies of the train state after every step (the device copy is donated to the next step)."""

    def __init__(self):
        self.trainer, self.states = None, {}

    def on_step_end(self, args, state, control, **kw):
        self.states[state.global_step] = jax.device_get(self.trainer._train_state)


class CtrlC(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 4:
            os.kill(os.getpid(), signal.SIGINT)  # delivered now, while the loop is mid-run


def _trainer(tiny_bert, out, rows, policy, *callbacks):
    model = SentenceTransformer(tiny_bert)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out), max_steps=5, per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=3,
        save_steps=100, disable_tqdm=True, nonfinite_policy=policy, length_buckets=(32,))
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset={"stsb": Dataset.from_dict(rows)},
                                         loss=CosineSimilarityLoss(model), callbacks=list(callbacks))
    snaps = callbacks[0]
    snaps.trainer = trainer
    bad_step = next(i + 1 for i, (_, rows_) in enumerate(trainer.epoch_plan(0)) if BAD_ROW in rows_)
    return trainer, bad_step


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def test_skip_policy_skips_counts_and_logs_then_sigint_checkpoints(tiny_bert, sts_rows, tmp_path, caplog):
    snaps, out = Snapshots(), tmp_path / "out"
    trainer, bad = _trainer(tiny_bert, out, sts_rows, "skip", snaps, CtrlC())
    assert bad in (2, 3, 4), bad  # 64 rows / 16 = 4 steps an epoch; the test wants a step before it
    before_handler = signal.getsignal(signal.SIGINT)
    with caplog.at_level(logging.WARNING), pytest.raises(TrainingInterrupted) as info:
        trainer.train()

    # nonfinite_policy="skip": the bad batch changed nothing, was counted, and logged.
    before, after = snaps.states[bad - 1], snaps.states[bad]
    for a, b in zip(_leaves(before["trainable"]) + _leaves(before["opt_state"]),
                    _leaves(after["trainable"]) + _leaves(after["opt_state"])):
        np.testing.assert_array_equal(a, b)
    assert int(after["skipped"]) == 1 and int(after["step"]) == bad
    a = next(a for a in (1, 2, 3) if bad not in (a, a + 1))  # two finite steps in a row do move the parameters
    assert any(not np.array_equal(x, y) for x, y in zip(_leaves(snaps.states[a]["trainable"]),
                                                         _leaves(snaps.states[a + 1]["trainable"])))
    logged = [e for e in trainer.state.log_history if "skipped_nonfinite" in e]
    assert sum(e["skipped_nonfinite"] for e in logged) == 1
    i = next(i for i, e in enumerate(logged) if e["skipped_nonfinite"])
    first, last = (logged[i - 1]["step"] + 1 if i else 1), logged[i]["step"]
    assert first <= bad <= last
    assert any("non-finite" in r.getMessage() and f"steps {first}-{last}" in r.getMessage() for r in caplog.records)
    window = logged[i]
    assert math.isfinite(window["loss"])  # logging_nan_inf_filter drops the inf from the mean

    # SIGINT after step 4 of 5: the step finishes, checkpoint-4 is written, exit code 130, no export.
    assert info.value.code == 130 and info.value.step == 4
    assert "received SIGINT; stopped after step 4" in str(info.value)
    assert signal.getsignal(signal.SIGINT) is before_handler  # the handler is put back
    assert [s for s, _ in ckpt.list_checkpoints(str(out))] == [4]
    assert not (out / "final").exists()
    state = json.load(open(out / "checkpoint-4" / "trainer_state.json"))
    assert state["global_step"] == 4 and (state["epoch_index"], state["batches_in_epoch"]) == (0, 4)
    assert [e["step"] for e in state["log_history"]] == [3, 4]  # logging every 3; the pending window was flushed


def test_stop_policy_writes_the_batch_and_raises(tiny_bert, sts_rows, tmp_path):
    snaps, out = Snapshots(), tmp_path / "out"
    trainer, bad = _trainer(tiny_bert, out, sts_rows, "stop", snaps)
    with pytest.raises(NonFiniteLossError, match=rf"step {bad} on dataset 'stsb'.*nonfinite_batch_step{bad}\.json"):
        trainer.train()
    assert max(snaps.states) == bad - 1  # stopped at the bad step, before its callbacks
    report = json.load(open(out / f"nonfinite_batch_step{bad}.json"))
    assert report["step"] == bad and report["dataset"] == "stsb"
    i = report["rows"].index(BAD_ROW)
    assert report["texts"]["sentence1"][i] == sts_rows["sentence1"][BAD_ROW]
    assert report["texts"]["sentence2"][i] == sts_rows["sentence2"][BAD_ROW]
    assert report["labels"][i] == math.inf and report["label_column"] == "score"
    assert len(report["rows"]) == 16
    assert set(os.listdir(out)) <= {"logs.jsonl", f"nonfinite_batch_step{bad}.json"}  # no checkpoint, no export
