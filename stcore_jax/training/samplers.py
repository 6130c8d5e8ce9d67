"""Batch samplers with sentence-transformers semantics, in NumPy, seeded by ``(seed, epoch)``.

A sampler turns a dataset into the list of batches (lists of row indices) of one epoch. The list is
a pure function of ``(seed, epoch)``, so the sampler state stored in a checkpoint is just
``(epoch, batches consumed)``: resuming regenerates the epoch and skips what was consumed.
"""

from __future__ import annotations

import numpy as np

from stcore_jax.training.arguments import BatchSamplers, MultiDatasetBatchSamplers


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


class DefaultBatchSampler:
    """Shuffled batches of ``batch_size`` (the last one smaller unless ``drop_last``)."""

    def __init__(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        self.n = len(dataset)
        self.batch_size, self.drop_last, self.seed = batch_size, drop_last, seed
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def _chunks(self, order):
        out = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if out and self.drop_last and len(out[-1]) < self.batch_size:
            out.pop()
        return out

    def __iter__(self):
        return iter(self._chunks(_rng(self.seed, self.epoch).permutation(self.n)))

    def __len__(self):
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)


class NoDuplicatesBatchSampler(DefaultBatchSampler):
    """No text value appears twice in a batch, across all input columns (for in-batch negatives).

    The reference's rule (sentence-transformers 6.2 ``NoDuplicatesBatchSampler``): a pass over a shuffled
    order fills each batch greedily, a row whose texts collide with the batch waiting for a later one. When
    the rows left cannot fill a batch, the partial batch is yielded (or, with ``drop_last``, dropped) and the
    pass goes on with the rest. So without ``drop_last`` every row is used exactly once per epoch. With
    ``drop_last`` a pass can yield fewer than ``len(self)`` batches; then up to 2 more passes over new shuffles
    add batches until there are ``len(self)`` (their rows repeat rows of the epoch). ``rows`` gives each
    row's values (all non-label columns).
    """

    MAX_RESAMPLE_PASSES = 2  # the reference's _MAX_RESAMPLE_PASSES

    def __init__(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0, rows=None):
        super().__init__(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        if rows is None:
            cols = [c for c in dataset.column_names if c not in (valid_label_columns or []) and c != "dataset_name"]
            rows = list(zip(*(dataset[c] for c in cols)))
        self.rows = [frozenset(map(str, r)) for r in rows]

    def _one_pass(self, order: list[int]) -> list[list[int]]:
        """The batches of one greedy pass over ``order`` (row indices)."""
        remaining, batches = order, []
        while remaining:
            batch, seen, rest = [], set(), []
            for i in remaining:
                if len(batch) < self.batch_size and seen.isdisjoint(self.rows[i]):
                    batch.append(i)
                    seen |= self.rows[i]
                else:
                    rest.append(i)
            if len(batch) == self.batch_size or not self.drop_last:
                batches.append(batch)
            remaining = rest
        return batches

    def __iter__(self):
        if self.n == 0:
            return iter([])
        rng = _rng(self.seed, self.epoch)
        batches = self._one_pass(rng.permutation(self.n).tolist())
        want = len(self)
        for _ in range(self.MAX_RESAMPLE_PASSES if batches and len(batches) < want else 0):
            batches += self._one_pass(rng.permutation(self.n).tolist())[: want - len(batches)]
            if len(batches) >= want:
                break
        return iter(batches)


class GroupByLabelBatchSampler(DefaultBatchSampler):
    """Batches of label pairs: every label in a batch appears at least twice (Batch*TripletLoss)."""

    def __init__(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0, labels=None):
        super().__init__(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        if batch_size < 4 or batch_size % 2:
            raise ValueError(f"GROUP_BY_LABEL needs an even batch_size >= 4, got {batch_size}")
        if labels is None:
            col = next((c for c in (valid_label_columns or []) if c in dataset.column_names), None)
            if col is None:
                raise ValueError(f"GROUP_BY_LABEL needs a label column; the dataset has {dataset.column_names}")
            labels = dataset[col]
        groups: dict = {}
        for i, lab in enumerate(labels):
            groups.setdefault(lab if not isinstance(lab, list) else tuple(lab), []).append(i)
        self.groups = {k: v for k, v in groups.items() if len(v) >= 2}
        if len(self.groups) < 2:
            raise ValueError("GROUP_BY_LABEL needs at least 2 labels with >= 2 samples each")
        # Rows per epoch: the round-robin stops when one label is left, i.e. after the second-largest
        # label's pairs (the reference's _stream_length).
        pairs = sorted((len(v) // 2 for v in self.groups.values()), reverse=True)
        self.stream_length = 2 * sum(min(p, pairs[1]) for p in pairs)

    def __iter__(self):
        rng = _rng(self.seed, self.epoch)
        queues = {k: [v[i] for i in rng.permutation(len(v))][: len(v) // 2 * 2] for k, v in self.groups.items()}
        labels = list(queues)
        batches, batch, last = [], [], None
        while len(labels) >= 2:
            labels = [labels[i] for i in rng.permutation(len(labels))]
            if batch and labels[0] == last:
                labels[0], labels[1] = labels[1], labels[0]
            for lab in labels:
                batch += [queues[lab].pop(0), queues[lab].pop(0)]
                if len(batch) >= self.batch_size:
                    batches.append(batch[: self.batch_size])
                    batch = batch[self.batch_size :]
            last = labels[-1]
            labels = [lab for lab in labels if queues[lab]]
        if not self.drop_last and len(batch) >= 4:
            batches.append(batch)
        return iter(batches)

    def __len__(self):
        n = self.stream_length // self.batch_size
        return n + int(not self.drop_last and self.stream_length % self.batch_size >= 4)


def epoch_batches(sampler, epoch: int) -> list[list[int]]:
    """Materialise one epoch of a (possibly user-supplied) sampler."""
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    return [list(map(int, b)) for b in sampler]


def multi_dataset_order(kind, batch_counts: dict[str, int], seed: int, epoch: int) -> list[str]:
    """Which dataset each batch of the epoch comes from.

    ROUND_ROBIN: one batch per dataset in turn, stopping when the smallest is exhausted.
    PROPORTIONAL: every batch of every dataset, in a seeded random order (so each dataset is used
    in proportion to its size and all data is used).
    """
    names = list(batch_counts)
    if kind == MultiDatasetBatchSamplers.ROUND_ROBIN:
        return names * min(batch_counts.values())
    if kind == MultiDatasetBatchSamplers.PROPORTIONAL:
        order = [n for n in names for _ in range(batch_counts[n])]
        return [order[i] for i in _rng(seed, epoch).permutation(len(order))]
    raise ValueError(f"Unknown multi_dataset_batch_sampler {kind!r}")


SAMPLERS = {
    BatchSamplers.BATCH_SAMPLER: DefaultBatchSampler,
    BatchSamplers.NO_DUPLICATES: NoDuplicatesBatchSampler,
    BatchSamplers.NO_DUPLICATES_HASHED: NoDuplicatesBatchSampler,
    BatchSamplers.GROUP_BY_LABEL: GroupByLabelBatchSampler,
}


def accumulation_groups(plan: list[tuple[str, list[int]]], accum: int) -> list[tuple[int, str, list[list[int]]]]:
    """Group an epoch's batch plan into optimizer steps of ``accum`` micro-batches of one dataset.

    A step's micro-batches must share a dataset (one compiled loss per step), so each dataset fills its
    own group in plan order and a step is emitted when its group is full: with ROUND_ROBIN
    (A, B, A, B, ...) and ``accum=2`` the steps are (A, A), (B, B), ... A dataset's last group, if
    short, is dropped (as the reference's trailing partial accumulation is not stepped).

    Returns ``[(done, name, micro_batches)]`` in step order, ``done`` being the plan index after the
    group's last micro-batch: steps complete in increasing ``done``, so "resume after ``done = k``" is
    exactly "emit the groups with ``done > k``" (the checkpoint stores ``k``).
    """
    pending: dict[str, list[list[int]]] = {}
    steps = []
    for i, (name, rows) in enumerate(plan):
        group = pending.setdefault(name, [])
        group.append(rows)
        if len(group) == accum:
            steps.append((i + 1, name, pending.pop(name)))
    return steps
