"""Trainer behaviour on a tiny BERT: composition of multi-dataset epochs, logging, schedules, compiles.
Device-count invariance (1 == 8 devices) is in test_trainer_equalities.py."""

import json
import os

import jax
import numpy as np
import pytest
from datasets import Dataset

from stcore_jax import (
    MultiDatasetBatchSamplers,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from stcore_jax.losses import CoSENTLoss, MultipleNegativesRankingLoss
from stcore_jax.training import TrainerCallback


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=2,
                learning_rate=1e-3, logging_steps=1, save_strategy="no", disable_tqdm=True, save_final_model=False)
    base.update(kw)
    return SentenceTransformerTrainingArguments(**base)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


class Recorder(TrainerCallback):
    def __init__(self):
        self.batches, self.logs = [], []

    def on_step_end(self, args, state, control, dataset_name=None, rows=None, **kw):
        self.batches.append((dataset_name, rows))

    def on_log(self, args, state, control, logs=None, **kw):
        self.logs.append(dict(logs))


def _two_datasets(stsb_train):
    s1, s2, sc = stsb_train
    sts = Dataset.from_dict({"s1": s1[:40], "s2": s2[:40], "score": [x / 5 for x in sc[:40]]})
    pairs = Dataset.from_dict({"anchor": s1[100:120], "positive": s2[100:120]})
    return {"sts": sts, "pairs": pairs}


@pytest.mark.parametrize("kind", [MultiDatasetBatchSamplers.ROUND_ROBIN, MultiDatasetBatchSamplers.PROPORTIONAL])
def test_multi_dataset_composition(kind, tiny_bert_dir, stsb_train, tmp_path):
    model = SentenceTransformer(tiny_bert_dir)
    data = _two_datasets(stsb_train)
    losses = {"sts": CoSENTLoss(model), "pairs": MultipleNegativesRankingLoss(model)}
    rec = Recorder()
    # global batch 8. A constant learning rate: a decaying one bakes the run length (6 vs 8 steps) into the
    # step, so the two samplers would compile the same two steps twice; with it the second run loads them
    # from the run's XLA compilation cache (tests/conftest.py).
    args = _args(tmp_path, per_device_train_batch_size=1, multi_dataset_batch_sampler=kind, lr_scheduler_type="constant")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=losses, callbacks=[rec])
    trainer.train()
    names = [n for n, _ in rec.batches]
    # One dataset per batch, and its rows come from that dataset only.
    for name, rows in rec.batches:
        assert all(0 <= r < len(data[name]) for r in rows[0])
    if kind == MultiDatasetBatchSamplers.ROUND_ROBIN:
        # 40 rows -> 5 batches, 20 rows -> 3 batches: alternate until the smaller is exhausted.
        assert names == ["sts", "pairs"] * 3
    else:
        # Proportional: every batch of every dataset, so 5 + 3, in a seeded shuffled order.
        assert sorted(names) == ["pairs"] * 3 + ["sts"] * 5
        assert names != sorted(names)
        # Every row of each dataset is used exactly once in the epoch.
        for name, n_rows in (("sts", 40), ("pairs", 20)):
            used = sorted(r for nm, rows in rec.batches if nm == name for r in rows[0])
            assert used == list(range(n_rows))
    assert trainer.compile_count[0] <= 2 * len(trainer.buckets)
    assert all(np.isfinite(log["loss"]) for log in rec.logs if "loss" in log)


def test_accumulation_groups_keep_one_dataset_per_step():
    from stcore_jax.training.samplers import accumulation_groups

    plan = [("a", [0]), ("b", [1]), ("a", [2]), ("b", [3]), ("a", [4]), ("b", [5]), ("a", [6])]
    steps = accumulation_groups(plan, 2)
    assert [(done, name, rows) for done, name, rows in steps] == [
        (3, "a", [[0], [2]]), (4, "b", [[1], [3]]), (7, "a", [[4], [6]])]  # b's lone [5] is dropped
    assert [s[2] for s in accumulation_groups(plan[:4], 1)] == [[[0]], [[1]], [[2]], [[3]]]


def test_round_robin_with_gradient_accumulation_trains(tiny_bert_dir, stsb_train, tmp_path):
    """ROUND_ROBIN alternates datasets, so consecutive micro-batches never share one: each step takes
    its micro-batches from one dataset (a bug skipped every such group: zero steps, silently)."""
    model = SentenceTransformer(tiny_bert_dir)
    data = _two_datasets(stsb_train)
    losses = {"sts": CoSENTLoss(model), "pairs": MultipleNegativesRankingLoss(model)}
    rec = Recorder()
    args = _args(tmp_path, per_device_train_batch_size=1, gradient_accumulation_steps=2,
                 multi_dataset_batch_sampler=MultiDatasetBatchSamplers.ROUND_ROBIN)  # global batch 8
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=losses, callbacks=[rec])
    trainer.train()
    # Plan: sts, pairs, sts, pairs, sts, pairs -> steps (sts, sts), (pairs, pairs); the third sts and pairs
    # batches are each a short group and are dropped.
    assert trainer.state.global_step == trainer.steps_per_epoch == 2
    assert [n for n, _ in rec.batches] == ["sts", "pairs"]
    for name, rows in rec.batches:
        assert len(rows) == 2 and all(0 <= r < len(data[name]) for mb in rows for r in mb)


PROBE = ["a small probe sentence"]


@pytest.fixture(scope="module")
def cosent_run(tiny_bert_dir, stsb_train, tmp_path_factory):
    """One CoSENT run on 128 STS-B pairs, padded (no packing: the length buckets are what it checks), global
    batch 16, 4 steps, logging every 2, a final export and an eval set, shared by the logging/export,
    bucket-compile, evaluate and callback tests: they check different facts of one training run, which
    compiled the same train step four times when each test trained its own. One row in 8 is twice as
    long, so that batches land in different length buckets. A callback encodes a probe after every step;
    the logs are read right after training, before any test's ``evaluate()`` appends to them."""
    s1, s2, sc = stsb_train
    pairs = Dataset.from_dict({"sentence1": s1[:128], "sentence2": s2[:128], "score": [x / 5 for x in sc[:128]]})
    longer = pairs.map(lambda r, i: {"sentence1": r["sentence1"] + " " + r["sentence2"] if i % 8 == 0 else r["sentence1"]},
                       with_indices=True)
    model = SentenceTransformer(tiny_bert_dir)
    loss = CoSENTLoss(model)
    before = model.encode(PROBE)
    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            seen.append(model.encode(PROBE))

    args = _args(tmp_path_factory.mktemp("cosent_run"), per_device_train_batch_size=2, max_steps=4, logging_steps=2,
                 save_final_model=True, learning_rate=1e-3, sequence_packing=False)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=longer,
                                         eval_dataset=pairs.select(range(32)), loss=loss, callbacks=[Probe()])
    # the padded length of every step the run takes (its first max_steps batches)
    used = {trainer._collate_step(name, [rows], trainer.global_batch)["columns"][0]["input_ids"].shape[1]
            for name, rows in trainer.epoch_plan(0)[:args.max_steps]}
    trainer.train()
    rows = [json.loads(line) for line in open(os.path.join(args.output_dir, "logs.jsonl"))]
    return {"model": model, "loss": loss, "trainer": trainer, "args": args, "rows": rows, "before": before,
            "seen": seen, "used": used}


def test_logs_and_final_export(cosent_run):
    model, args, rows = cosent_run["model"], cosent_run["args"], cosent_run["rows"]
    assert [r["step"] for r in rows] == [2, 4]
    assert {"loss", "grad_norm", "learning_rate", "epoch", "samples_per_second", "tokens_per_second"} <= set(rows[0])
    exported = SentenceTransformer(os.path.join(args.output_dir, "final"))
    for a, b in zip(_leaves(exported.params), _leaves(model.params)):
        np.testing.assert_array_equal(a, b)


def test_learning_rate_schedule_matches_transformers(tmp_path):
    import torch
    from transformers import get_scheduler

    from stcore_jax.training.optim import make_schedule

    for kind in ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"):
        args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, lr_scheduler_type=kind,
                                                    warmup_steps=5)
        ours = make_schedule(args, 40)
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = get_scheduler(kind, opt, num_warmup_steps=5, num_training_steps=40)
        for step in range(40):
            assert abs(float(ours(step)) - opt.param_groups[0]["lr"]) < 1e-9, (kind, step)
            opt.step()
            sched.step()


@pytest.mark.parametrize("scale,max_norm", [(1.0, 0.5), (1.0, 100.0), (1e-4, 1e-5)])
def test_gradient_clipping_matches_torch(scale, max_norm):
    """torch's rule, ``min(1, max_norm / (norm + 1e-6))``: the 1e-6 shows on small gradients (last case)."""
    import jax.numpy as jnp
    import optax
    import torch

    from stcore_jax.training.optim import clip_grad_norm

    rng = np.random.default_rng(0)
    grads = {"a": (scale * rng.normal(size=(5, 3))).astype(np.float32), "b": (scale * rng.normal(size=7)).astype(np.float32)}
    params = [torch.nn.Parameter(torch.zeros(grads[k].shape)) for k in ("a", "b")]
    for p, k in zip(params, ("a", "b")):
        p.grad = torch.tensor(grads[k])
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    ours, _ = clip_grad_norm(max_norm).update(jax.tree_util.tree_map(jnp.asarray, grads), optax.EmptyState())
    for p, k in zip(params, ("a", "b")):
        np.testing.assert_allclose(np.asarray(ours[k]), p.grad.numpy(), rtol=2e-6, atol=0)


def test_compiles_once_per_length_bucket_in_use(cosent_run):
    trainer, used = cosent_run["trainer"], cosent_run["used"]
    assert len(used) >= 2  # the run really spans several buckets
    assert trainer.compile_count[0] == len(used)
    assert trainer.compile_seconds > 0  # the compiling calls were timed (bench/train.py reports them)


def test_length_buckets_fitted_to_the_batches(tiny_bert_dir, stsb_train, tmp_path):
    from stcore_jax.batching.buckets import bucket_for
    from stcore_jax.sentence_transformer.data import batch_longest

    s1, s2, sc = stsb_train
    data = Dataset.from_dict({"sentence1": s1[:256], "sentence2": s2[:256], "score": [x / 5 for x in sc[:256]]})
    model = SentenceTransformer(tiny_bert_dir)
    model.max_seq_length = 128

    def make(**kw):
        return SentenceTransformerTrainer(model=model, args=_args(tmp_path, per_device_train_batch_size=4, **kw),
                                          train_dataset=data, loss=CoSENTLoss(model))

    fitted = make()
    longest = [batch_longest(fitted.train_prepared[name], rows) for name, rows in fitted.epoch_plan(0)]
    fit, rest = fitted.buckets[:-1], fitted.buckets[-1]
    assert len(fit) <= 4 and all(b % 8 == 0 for b in fit) and rest == 128
    assert max(longest) <= fit[-1]  # the fitted buckets cover every batch; 128 is only for longer eval rows

    def padded(buckets):
        return sum(bucket_for(n, buckets) for n in longest)

    # optimal among multiples of 8, so never worse than powers of two (which are such a set)
    assert padded(fitted.buckets) <= padded((16, 32, 64, 128))
    assert padded(fitted.buckets) < 1.2 * sum(longest)  # pad-to-longest is the floor
    assert make().buckets == fitted.buckets  # a function of the seeded plan: every host and resume agree
    one = make(length_buckets=1).buckets
    assert len(one) <= 2 and one[0] >= max(longest)
    # given buckets are used as given, plus max_seq_length (128) last: longer rows would not fit (a bare numpy
    # broadcast error mid-training before)
    assert make(length_buckets=(16, 64)).buckets == (16, 64, 128)
    assert make(length_buckets=(16, 128)).buckets == (16, 128)


def test_evaluate_reuses_its_compiled_step(cosent_run):
    trainer, loss = cosent_run["trainer"], cosent_run["loss"]
    first = trainer.evaluate()
    fn = trainer._eval_step_fn(loss)
    compiled = fn._cache_size()
    assert compiled >= 1
    second = trainer.evaluate()
    assert trainer._eval_step_fn(loss) is fn and fn._cache_size() == compiled  # no new trace or compile
    assert second["eval_loss"] == first["eval_loss"]


def test_callbacks_can_encode_with_the_current_weights(cosent_run):
    """A callback calling ``model.encode`` between steps (a common custom-evaluation pattern) gets the
    weights of the step just taken, not donated (deleted) buffers or the weights from before training."""
    model, before, seen = cosent_run["model"], cosent_run["before"], cosent_run["seen"]
    assert len(seen) == cosent_run["args"].max_steps == 4
    assert not np.allclose(seen[0], before)  # step 1's weights, not the initial ones
    assert not np.allclose(seen[1], seen[0]) and not np.allclose(seen[2], seen[1])
    np.testing.assert_allclose(seen[-1], model.encode(PROBE), atol=1e-6)
