"""NO_DUPLICATES and GROUP_BY_LABEL against sentence-transformers' samplers, and through the trainer.

The two libraries shuffle with different generators, so the parity tests hand both the same shuffles
(the k-th shuffle drawn in an epoch is the same permutation in both) and then require the very same
batches: that pins the semantics (which rows a batch takes, what happens to rows that cannot be placed,
``drop_last``, the reference's extra passes, the label round-robin and its tail), not the RNG.
"""

import collections

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers.base.sampler import (
    GroupByLabelBatchSampler as RefGroupByLabel,
    NoDuplicatesBatchSampler as RefNoDuplicates,
)

from stcore_jax import (
    BatchSamplers,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from stcore_jax.losses import BatchHardTripletLoss, MultipleNegativesRankingLoss
from stcore_jax.training import samplers
from stcore_jax.training.samplers import GroupByLabelBatchSampler, NoDuplicatesBatchSampler


class Shuffles:
    """The k-th ``permutation(n)`` call returns ``default_rng([11, k]).permutation(n)``."""

    def __init__(self):
        self.k = 0

    def permutation(self, n):
        self.k += 1
        return np.random.default_rng([11, self.k - 1]).permutation(n)


def _batches_with_shared_shuffles(monkeypatch, ours, ref):
    """``(our batches, reference batches)`` of one epoch, both drawing their shuffles from :class:`Shuffles`."""
    monkeypatch.setattr(samplers, "_rng", lambda seed, epoch: Shuffles())
    shuffles = Shuffles()
    monkeypatch.setattr(torch, "randperm", lambda n, generator=None, dtype=torch.int64, **kw:
                        torch.as_tensor(shuffles.permutation(n), dtype=dtype))
    got = [list(map(int, b)) for b in ours]
    want = [list(map(int, b)) for b in ref]
    monkeypatch.undo()
    return got, want


def _duplicated_pairs(n=40, seed=0):
    """Anchors drawn from 9 texts, unique positives except every 5th, which repeats an anchor text (a
    duplicate across columns); the label column holds 3 values, which must not count as duplicates."""
    rng = np.random.default_rng(seed)
    anchors = [f"topic {int(rng.integers(9))}" for _ in range(n)]
    positives = [f"topic {int(rng.integers(9))}" if i % 5 == 0 else f"answer {i}" for i in range(n)]
    return Dataset.from_dict({"anchor": anchors, "positive": positives, "label": [i % 3 for i in range(n)]})


def _no_shared_text(ds, batch) -> bool:
    """No text of a row appears in another row of ``batch`` (in any column). A row may repeat a text within
    itself: the reference compares a row's set of values with the batch's."""
    rows = [{ds["anchor"][r], ds["positive"][r]} for r in batch]
    return sum(map(len, rows)) == len(set().union(*rows))


@pytest.mark.parametrize("drop_last", [False, True])
def test_no_duplicates_matches_reference(monkeypatch, drop_last):
    ds = _duplicated_pairs()
    ours = NoDuplicatesBatchSampler(ds, 8, drop_last, valid_label_columns=["label"], seed=1)
    ref = RefNoDuplicates(ds, 8, drop_last, valid_label_columns=["label"], seed=1)
    got, want = _batches_with_shared_shuffles(monkeypatch, ours, ref)
    assert got == want
    assert len(ours) == len(ref) == 5
    assert all(_no_shared_text(ds, b) for b in got)
    counts = collections.Counter(r for b in got for r in b)
    if drop_last:
        # Rows left over make partial batches, which are dropped, so one pass cannot fill len() = 5 batches:
        # the reference reshuffles and adds full batches of rows already used this epoch.
        assert len(got) == 5 and all(len(b) == 8 for b in got)
        assert max(counts.values()) == 2
    else:
        assert sorted(counts) == list(range(len(ds))) and set(counts.values()) == {1}  # every row once
        assert len(got) > len(ours) and min(len(b) for b in got) < 8  # leftovers made extra, smaller batches


def _labelled(counts, seed=0):
    labels = [lab for lab, c in counts.items() for _ in range(c)]
    labels = [labels[i] for i in np.random.default_rng(seed).permutation(len(labels))]
    return Dataset.from_dict({"text": [f"text {i}" for i in range(len(labels))], "label": labels})


@pytest.mark.parametrize("batch_size,drop_last", [(6, False), (6, True), (4, False)])
def test_group_by_label_matches_reference(monkeypatch, batch_size, drop_last):
    # label 3 has one row (never usable), odd counts lose a row, label 0 dominates (its tail is left over)
    ds = _labelled({0: 13, 1: 5, 2: 2, 3: 1, 4: 7})
    ours = GroupByLabelBatchSampler(ds, batch_size, drop_last, valid_label_columns=["label"], seed=1)
    ref = RefGroupByLabel(ds, batch_size, drop_last, valid_label_columns=["label"], seed=1)
    got, want = _batches_with_shared_shuffles(monkeypatch, ours, ref)
    assert got == want
    assert len(ours) == len(ref) == len(got)
    labels = ds["label"]
    for b in got:
        per_label = collections.Counter(labels[r] for r in b)
        assert len(per_label) >= 2 and min(per_label.values()) >= 2, b
    assert all(c == 1 for c in collections.Counter(r for b in got for r in b).values())  # each row at most once


@pytest.mark.parametrize("make", [
    lambda ds, seed: NoDuplicatesBatchSampler(ds, 8, False, valid_label_columns=["label"], seed=seed),
    lambda ds, seed: GroupByLabelBatchSampler(ds, 6, False, valid_label_columns=["label"], seed=seed),
], ids=["no_duplicates", "group_by_label"])
def test_samplers_are_a_function_of_seed_and_epoch(make):
    ds = _duplicated_pairs()
    epochs = [samplers.epoch_batches(make(ds, 1), e) for e in (0, 1)]
    assert epochs == [samplers.epoch_batches(make(ds, 1), e) for e in (0, 1)]  # a fresh sampler: same batches
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    assert samplers.epoch_batches(make(ds, 2), 0) != epochs[0]


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1, max_steps=3, save_strategy="no",
                disable_tqdm=True, save_final_model=False, seed=3)  # global batch 8 on the 8 test devices
    return SentenceTransformerTrainingArguments(**{**base, **kw})


def test_no_duplicates_through_the_trainer(tiny_bert_dir, tmp_path):
    """The trainer's NO_DUPLICATES plan: no raw text twice in a batch (the prompt, on the anchors only,
    does not make a duplicate distinct, as in the reference, which checks the dataset's values), every row
    once per epoch; the same plan for a fresh trainer (what resuming regenerates, then skips into)."""
    ds = _duplicated_pairs().remove_columns("label")
    model = SentenceTransformer(tiny_bert_dir)

    def trainer(seed=3):
        args = _args(tmp_path, batch_sampler=BatchSamplers.NO_DUPLICATES, prompts={"anchor": "query: "}, seed=seed)
        return SentenceTransformerTrainer(model=model, args=args, train_dataset=ds,
                                          loss=MultipleNegativesRankingLoss(model))

    first = trainer()
    plan = [rows for _, rows in first.epoch_plan(0)]
    assert all(_no_shared_text(ds, b) for b in plan)
    assert sorted(r for b in plan for r in b) == list(range(len(ds)))
    resumed = trainer()
    assert [rows for _, rows in resumed.epoch_plan(0)] == plan
    assert resumed.epoch_plan(1) == first.epoch_plan(1) != first.epoch_plan(0)
    assert [rows for _, rows in trainer(seed=4).epoch_plan(0)] != plan
    # resuming after 2 steps: the steps train() takes from there are the plan's remaining batches
    assert [rows[0] for *_, rows, _, _, _ in resumed._plan_steps(0, 2)] == plan[2:]


def test_group_by_label_through_the_trainer_needs_labels(tiny_bert_dir, tmp_path):
    model = SentenceTransformer(tiny_bert_dir)
    ds = _labelled({0: 6, 1: 6, 2: 6})
    args = _args(tmp_path, batch_sampler=BatchSamplers.GROUP_BY_LABEL)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=ds, loss=BatchHardTripletLoss(model))
    labels = ds["label"]
    for _, rows in trainer.epoch_plan(0):
        per_label = collections.Counter(labels[r] for r in rows)
        assert len(per_label) >= 2 and min(per_label.values()) >= 2
    with pytest.raises(ValueError, match="GROUP_BY_LABEL needs a label column"):
        SentenceTransformerTrainer(model=model, args=args, loss=MultipleNegativesRankingLoss(model),
                                   train_dataset=Dataset.from_dict({"a": ds["text"], "b": ds["text"][::-1]}))
