"""What the loop feeds the step, for any model family: the batch samplers and the epoch plan, the batch
geometry (length buckets fitted to the plan, or sequence packing), the steps of an epoch (from its plan,
or from streams), and the collated batches placed on the mesh. What a row is and how rows are collated
is the task's (training/task.py).

:class:`DataFeed` is the data side of :class:`~stcore_jax.training.trainer.Trainer` (its base class); the
sampler methods and ``epoch_plan`` are the trainer's override points, as in sentence-transformers."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import numpy as np

from stcore_jax.batching.buckets import bucket_for, covering, default_buckets, fit_buckets
from stcore_jax.training.arguments import BatchSamplers
from stcore_jax.training.distributed import local_batch_slots, to_global
from stcore_jax.training.samplers import SAMPLERS, accumulation_groups, epoch_batches, multi_dataset_order
from stcore_jax.training.stream import StreamPosition, epoch_groups, group_rows, is_stream

DEFAULT_FITTED_BUCKETS = 4  # length buckets fitted to the training batches when length_buckets is None


def as_dataset_dict(ds, what: str, allow_streams: bool = False) -> tuple[dict, bool]:
    """``(dict name -> dataset, is_dict)``; a single dataset becomes ``{"train"|"eval": ds}``. With
    ``allow_streams`` (training data) the datasets may be IterableDatasets: all of a dict's, or none."""
    if ds is None:
        return {}, False
    if isinstance(ds, dict):  # DatasetDict and IterableDatasetDict are dicts
        if not ds:
            raise ValueError(f"{what} is an empty dict")
        data, is_dict = dict(ds), True
    else:
        if not hasattr(ds, "column_names"):
            raise ValueError(f"{what} must be a datasets.Dataset, DatasetDict or dict of Datasets"
                             f"{' (or IterableDatasets)' if allow_streams else ''}, got {type(ds).__name__}")
        data, is_dict = {what: ds}, False
    streams = [n for n, d in data.items() if is_stream(d)]
    if streams and not allow_streams:
        raise ValueError(f"{what}: IterableDataset (streaming) is supported for train_dataset only; materialise the "
                         "eval data with datasets.Dataset.from_generator or .take(n)")
    if streams and len(streams) < len(data):
        raise ValueError(f"{what}: datasets {streams} are IterableDatasets (streams) but "
                         f"{[n for n in data if n not in streams]} are not; use streams for all of them or for none")
    return data, is_dict


def stack_micro_batches(parts: list):
    """One collated micro-batch as is; several stacked on a leading axis (gradient accumulation)."""
    return parts[0] if len(parts) == 1 else jax.tree_util.tree_map(lambda *xs: np.stack(xs), *parts)


def fitted_length_buckets(given, max_len: int, prepared: dict, plan, accum: int, longest: Callable) -> tuple:
    """``length_buckets``: a tuple is used as given (plus ``max_len`` last, so that every row fits); an int
    ``k`` (default ``None``: 4) fits ``k`` lengths to the longest row of every step of the first epoch's
    ``plan`` (``fit_buckets``), plus ``max_len`` for longer eval rows. Each step compiles once per bucket it
    reaches, so a few fitted buckets pad about as little as the reference's pad-to-longest (STS-B train,
    batch 16: 1.22x its tokens with 4 fitted buckets, 1.63x with powers of two; bench/padding.py). The plan
    is a pure function of the seed, so every host and every resume fits the same buckets. No plan
    (streams, or no training data; ``plan`` None): powers of two from 16. ``longest(prepared, rows)``: the
    task's row length."""
    if isinstance(given, (tuple, list)):
        return covering(given, max_len)
    if plan is None:
        return default_buckets(max_len, smallest=16, per_octave=1)
    lengths = [max(longest(prepared[name], rows) for rows in micro)
               for _, name, micro in accumulation_groups(plan, accum)]
    # every row, so that later epochs (other batches) fit in the last bucket too
    lengths += [longest(p, range(len(p))) for p in prepared.values() if len(p)]
    if not lengths:
        return default_buckets(max_len, smallest=16, per_octave=1)
    fitted = fit_buckets(lengths, DEFAULT_FITTED_BUCKETS if given is None else given, cap=max_len)
    return covering(fitted, max_len)


def plan_steps(plan, prepared: dict, epoch: int, skip: int, accum: int) -> Iterator[tuple]:
    """Map-style data: the steps of ``epoch`` (its ``plan``) from batch ``skip`` on, as ``(dataset name,
    prepared dataset, micro-batch rows, rows for callbacks, epoch progress, (epoch, batches done, None))``."""
    for pos, name, rows in accumulation_groups(plan, accum):
        if pos > skip:
            yield name, prepared[name], rows, rows, epoch + pos / max(len(plan), 1), (epoch, pos, None)


def stream_steps(sources: dict, epoch: int, position, global_batch: int, accum: int, drop_last: bool,
                 max_steps: int) -> Iterator[tuple]:
    """Streams: the steps of ``epoch`` from ``position`` on (a resumed run's; None: the start), each step's
    examples prepared by its source (``Task.stream_source``) as they arrive; the tuples of
    :func:`plan_steps`, the callbacks' rows being stream indices within the epoch. The epoch progress
    advances by 1/max_steps per step (the HF Trainer's convention for data without a length)."""
    position = position if isinstance(position, StreamPosition) else StreamPosition(epoch)
    streams = {n: s.dataset for n, s in sources.items()}
    for group in epoch_groups(streams, global_batch, accum, drop_last, position):
        examples, rows, indices = group_rows(group)
        ds = sources[group.name].prepare(examples, group.first_row)
        pos = group.position
        yield group.name, ds, rows, indices, epoch + pos.steps / max_steps, (epoch, pos.steps * accum, pos)


class DataFeed:
    """The trainer's data side. Reads the trainer's ``task``, ``args``, ``mesh``, ``data_parallel``,
    ``global_batch``, ``loss``, ``streaming``, ``train_prepared``/``eval_prepared``, ``train_streams`` and
    ``samplers``; sets ``buckets``, ``packing`` (and ``pack_length``, ``row_buckets``)."""

    def _data_seed(self):
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def _fit_batch_geometry(self) -> None:
        """The length buckets (checked against the model by the task: none past its limit), and whether and
        how steps are sequence-packed."""
        plan = None if self.streaming or not self.train_prepared else self.epoch_plan(0)
        self.buckets = self.task.check_lengths(fitted_length_buckets(
            self.args.length_buckets, self.task.max_length(), self.train_prepared, plan,
            self.args.gradient_accumulation_steps, self.task.longest))
        self.packing = self._resolve_packing()
        if self.packing:
            self.pack_length, self.row_buckets = self._packed_shape()

    # -- override points: batch samplers and the epoch plan ------------------------------------
    def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0,
                          prepared=None):
        kind = self.args.batch_sampler
        if isinstance(kind, BatchSamplers):
            extra = self.task.sampler_inputs(prepared, kind) if prepared is not None else {}
            return SAMPLERS[kind](dataset, batch_size, drop_last, valid_label_columns, generator, seed, **extra)
        return kind(dataset, batch_size, drop_last, valid_label_columns, generator, seed)

    def get_multi_dataset_batch_sampler(self, batch_counts: dict, epoch: int, seed: int):
        kind = self.args.multi_dataset_batch_sampler
        if callable(kind) and not isinstance(kind, str):
            return list(kind(batch_counts, epoch, seed))
        return multi_dataset_order(kind, batch_counts, seed, epoch)

    def epoch_plan(self, epoch: int) -> list[tuple[str, list[int]]]:
        """The batches of one epoch: ``(dataset name, row indices)``, a pure function of (seed, epoch).
        The last epoch's plan is kept: fitting the buckets, counting the steps and training epoch 0 all
        read it, and a NO_DUPLICATES pass over a large dataset is seconds of Python."""
        cached = self.__dict__.get("_plan_cache")
        if cached is not None and cached[0] == epoch:
            return cached[1]
        per = {n: epoch_batches(s, epoch) for n, s in self.samplers.items()}
        if len(per) == 1:
            (name, batches), = per.items()
            plan = [(name, b) for b in batches]
        else:
            order = self.get_multi_dataset_batch_sampler({n: len(b) for n, b in per.items()}, epoch, self._data_seed())
            cursors, plan = dict.fromkeys(per, 0), []
            for n in order:
                plan.append((n, per[n][cursors[n]]))
                cursors[n] += 1
        self._plan_cache = (epoch, plan)
        return plan

    # -- batches on the devices ----------------------------------------------------------------
    def _to_device(self, batch, leading_accum=False, local=False):
        """Host batch -> global arrays sharded on ``data`` x ``fsdp``. ``local=True``: ``batch`` holds only this
        process's rows of a ``self.global_batch`` batch (:meth:`_collate_step`); otherwise the whole batch."""
        size = self.global_batch if local else jax.tree_util.tree_leaves(batch)[0].shape[1 if leading_accum else 0]
        return to_global(batch, self.mesh, size, leading_accum=leading_accum, local=local)

    def _collate_step(self, name, micro_batches, batch_size, ds=None):
        """Collate the rows this process feeds (all of them on one process; see training/distributed.py).
        ``ds``: the prepared rows (a stream step's); default: dataset ``name``'s."""
        if ds is None:
            ds = self.train_prepared[name] if name in self.train_prepared else self.eval_prepared[name]
        if self.packing and ds is self.train_prepared.get(name):
            return self._collate_packed(ds, micro_batches, batch_size)
        length = max(bucket_for(self.task.longest(ds, rows), self.buckets) for rows in micro_batches)  # all agree
        slots = local_batch_slots(self.mesh, batch_size) if jax.process_count() > 1 else None
        parts = [self.task.collate(ds, rows, batch_size, length) if slots is None else
                 self.task.collate_local(ds, rows, slots, batch_size, length) for rows in micro_batches]
        return stack_micro_batches(parts)

    def _collate_packed(self, ds, micro_batches, batch_size):
        """A packed step: this process's data shards only."""
        shards = self.data_parallel
        slots = local_batch_slots(self.mesh, batch_size) if jax.process_count() > 1 else np.arange(batch_size)
        local_shards = sorted({int(s) // (batch_size // shards) for s in slots})
        return stack_micro_batches(self.task.collate_packed(ds, micro_batches, batch_size, shards, local_shards,
                                                            self.pack_length, self.row_buckets))

    def _resolve_packing(self) -> bool:
        """``sequence_packing``: None packs wherever the task can keep the step's results (map-style data, a
        model and losses that take packed rows); True requires it; False never."""
        want = self.args.sequence_packing
        if want is False or not self.streaming and not any(len(p) for p in self.train_prepared.values()):
            return False  # nothing to train on (an evaluate-only trainer)
        reasons = []
        if self.streaming:
            reasons.append("the training data are streams (no epoch plan to fit the packed shapes to)")
        reasons += self.task.packing_obstacles(self.loss)
        if want is True and reasons:
            raise ValueError("sequence_packing=True, but " + "; ".join(reasons) + ". Use sequence_packing=None "
                             "(pack where possible) or False.")
        return not reasons

    def _packed_shape(self) -> tuple[int, tuple[int, ...]]:
        """``(row_length, rows-per-shard buckets)`` of packed steps, fitted by the task to the first epoch's
        plan. On STS-B train (batch 16) packing computes on 0.50x the reference's padded tokens, against
        1.22x for fitted length buckets (bench/padding.py)."""
        groups = accumulation_groups(self.epoch_plan(0), self.args.gradient_accumulation_steps)
        steps = [(self.train_prepared[name], micro) for _, name, micro in groups]
        k = self.args.length_buckets if isinstance(self.args.length_buckets, int) else DEFAULT_FITTED_BUCKETS
        return self.task.packed_shape(list(self.train_prepared.values()), steps, self.global_batch,
                                      self.data_parallel, k)

    def _epoch_steps(self, epoch, resume_at):
        """The steps of ``epoch`` from ``resume_at`` (a resumed run's batches done, or stream position) on."""
        if self.streaming:
            args = self.args
            return stream_steps(self.train_streams, epoch, resume_at, self.global_batch,
                                args.gradient_accumulation_steps, args.dataloader_drop_last, args.max_steps)
        return self._plan_steps(epoch, resume_at or 0)

    def _planned_inputs(self, epoch: int, skip: int, limit: int):
        """Per step of the next ``limit`` steps of ``epoch`` (from batch ``skip`` on), in the loop's order: the
        step's ``(dataset name, abstract device batch)`` (ShapeDtypeStructs on the batch sharding), or ``None``
        where an unpacked step repeats an earlier step's (dataset, length bucket) (nothing collated). What
        :class:`~stcore_jax.compile_cache.BackgroundCompiler` compiles ahead; one process only (the batch
        shapes here are the whole batch's)."""
        import itertools

        from stcore_jax.training.sharding import batch_sharding

        accum = self.args.gradient_accumulation_steps
        sharding = batch_sharding(self.mesh, leading_accum=accum > 1)
        seen = set()
        for name, ds, rows, *_ in itertools.islice(self._plan_steps(epoch, skip), limit):
            if not (self.packing and ds is self.train_prepared.get(name)):  # packed shapes: the task's, collated
                key = (name, len(rows), max(bucket_for(self.task.longest(ds, r), self.buckets) for r in rows))
                if key in seen:
                    yield None
                    continue
                seen.add(key)
            host = self._collate_step(name, rows, self.global_batch, ds)
            yield name, jax.tree_util.tree_map(
                lambda x: jax.ShapeDtypeStruct(np.shape(x), jax.dtypes.canonicalize_dtype(np.asarray(x).dtype),
                                               sharding=sharding), host)

    def _plan_steps(self, epoch, skip):
        """Map-style data: the steps of ``epoch`` from batch ``skip`` on (:func:`plan_steps`)."""
        accum = self.args.gradient_accumulation_steps
        return plan_steps(self.epoch_plan(epoch), self.train_prepared, epoch, skip, accum)
