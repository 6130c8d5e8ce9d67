"""The loop is generic: a fake model family (vectors in, vectors out through one small parameter matrix, with
dropout; no tokenizer, no text, no stcore_jax loss) trains through ``stcore_jax.training.Trainer`` on 8
devices, checkpoints, evaluates, and resumes bitwise: 3 steps straight equal 2 steps + a resume to 3 (across
an epoch boundary, so the resume must skip into the right epoch plan and restore the optimizer state,
the step counter that the dropout keys derive from, and the loop state)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from datasets import Dataset

from stcore_jax.training import Task, Trainer, TrainerCallback
from stcore_jax.training.arguments import TrainingArguments

D, ROWS, KEEP = 4, 16, 0.75  # 16 rows, global batch 8: 2 steps per epoch, so step 3 opens epoch 1


class VectorModel:
    """``y = x @ w``; the loop trains ``params`` and writes them back."""

    def __init__(self, seed=0):
        self.params = {"w": np.random.default_rng(seed).normal(size=(D, D)).astype(np.float32)}


class SquaredError:
    """The fake family's only loss: ``||dropout(x @ w) - y||^2`` per row, averaged over the real rows."""


class Prepared:
    def __init__(self, dataset):
        self.x = np.asarray(dataset["x"], np.float32)
        self.y = np.asarray(dataset["y"], np.float32)

    def __len__(self):
        return len(self.x)


class VectorTask(Task):
    def default_loss(self):
        return SquaredError()

    def prepare(self, dataset, name, loss, *, is_dict):
        if set(dataset.column_names) != {"x", "y"}:
            raise ValueError(f"dataset {name!r} needs columns x and y")
        return Prepared(dataset)

    def collate(self, prepared, rows, batch_size, length):
        x, y, mask = (np.zeros((batch_size, D), np.float32), np.zeros((batch_size, D), np.float32),
                      np.zeros((batch_size,), bool))
        x[: len(rows)], y[: len(rows)], mask[: len(rows)] = prepared.x[rows], prepared.y[rows], True
        return {"x": x, "y": y, "mask": mask}

    def objective(self, loss, *, loss_key, num_shards, model=None):
        def objective(trainable, batch, key):
            out = batch["x"] @ trainable["model"]["w"]
            if key is not None:  # dropout: what makes the step key part of an exact resume
                out = jnp.where(jax.random.bernoulli(key, KEEP, out.shape), out / KEEP, 0.0)
            per_row = jnp.sum((out - batch["y"]) ** 2, axis=-1) * batch["mask"]
            return per_row.sum() / jnp.maximum(batch["mask"].sum(), 1), {}

        return objective

    def save(self, path, *, create_model_card=True):
        os.makedirs(path, exist_ok=True)
        np.save(os.path.join(path, "w.npy"), np.asarray(self.model.params["w"]))


class RecordRows(TrainerCallback):
    def __init__(self):
        self.rows, self.params = {}, {}

    def on_step_end(self, args, state, control, model=None, rows=None, **kwargs):
        self.rows[state.global_step] = [list(r) for r in rows]
        self.params[state.global_step] = np.asarray(jax.device_get(model.params["w"]))


def _dataset(seed, n=ROWS):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype(np.float32)
    return Dataset.from_dict({"x": x.tolist(), "y": (x @ rng.normal(size=(D, D))).tolist()})


def _trainer(out_dir, eval_dataset=None):
    args = TrainingArguments(output_dir=str(out_dir), max_steps=3, per_device_train_batch_size=1,
                             per_device_eval_batch_size=1, learning_rate=0.05, warmup_steps=1, save_steps=2,
                             logging_steps=1, disable_tqdm=True, seed=11)
    recorder = RecordRows()
    trainer = Trainer(VectorTask(VectorModel(), args), args, train_dataset=_dataset(0), eval_dataset=eval_dataset,
                      callbacks=[recorder])
    return trainer, recorder


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("generic_straight")
    trainer, recorder = _trainer(out, eval_dataset=_dataset(1, n=12))
    result = trainer.train()
    return out, trainer, recorder, result


def test_a_fake_family_trains_and_checkpoints(straight):
    out, trainer, recorder, result = straight
    assert result == {"global_step": 3, "skipped_steps": 0}
    assert trainer.global_batch == 8 and trainer.steps_per_epoch == 2 and not trainer.packing
    assert sorted(os.listdir(out)) == ["checkpoint-2", "final", "logs.jsonl"]
    assert sorted(os.listdir(out / "checkpoint-2")) == ["state", "trainer_state.json", "w.npy"]  # the task's export
    saved = json.load(open(out / "checkpoint-2" / "trainer_state.json"))
    assert (saved["global_step"], saved["epoch_index"], saved["batches_in_epoch"]) == (2, 0, 2)
    np.testing.assert_array_equal(np.load(out / "checkpoint-2" / "w.npy"), recorder.params[2])
    np.testing.assert_array_equal(np.load(out / "final" / "w.npy"), trainer.model.params["w"])
    # every row once per epoch, and epoch 1 is another order
    epoch0 = sorted(r for s in (1, 2) for micro in recorder.rows[s] for r in micro)
    assert epoch0 == list(range(ROWS)) and recorder.rows[3] != recorder.rows[1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_the_generic_eval_loop_averages_the_objective(straight):
    _, trainer, _, _ = straight
    ds = _dataset(1, n=12)  # two eval batches of 8: one full, one with 4 padded rows
    metrics = trainer.evaluate()
    x, y = np.asarray(ds["x"], np.float64), np.asarray(ds["y"], np.float64)
    expected = np.mean(np.sum((x @ np.asarray(trainer.model.params["w"], np.float64) - y) ** 2, axis=-1))
    np.testing.assert_allclose(metrics["eval_loss"], expected, rtol=1e-5)


def test_resume_is_bitwise(straight, tmp_path):
    out, _, first, _ = straight
    resumed, second = _trainer(tmp_path)
    assert resumed.train(resume_from_checkpoint=str(out / "checkpoint-2")) == {"global_step": 3, "skipped_steps": 0}
    assert list(second.rows) == [3] and second.rows[3] == first.rows[3]  # the step epoch 1 opens with
    assert not np.array_equal(first.params[3], first.params[2])  # step 3 changed the weights...
    np.testing.assert_array_equal(second.params[3], first.params[3])  # ...identically after the resume
    saved = json.load(open(out / "checkpoint-2" / "trainer_state.json"))["log_history"]
    history = resumed.state.log_history
    assert history[:2] == saved and [h["step"] for h in history] == [1, 2, 3]  # the log history came back too
    assert history[2]["loss"] == next(h["loss"] for h in straight[1].state.log_history if h["step"] == 3)
