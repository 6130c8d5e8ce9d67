"""Streaming training data (``datasets.IterableDataset``): batches in stream order, resumable by count.

A stream has no length, so a run over it is bounded by ``max_steps`` (as in the Hugging Face
Trainer). Batches are formed in stream order, ``global_batch`` examples each (the last one of an epoch
smaller unless ``dataloader_drop_last``), exactly like the reference's ``DataLoader(batch_size=...)``
over an IterableDataset; ``batch_sampler`` values do not apply to a stream (the reference warns and
ignores them; shuffle a stream with ``dataset.shuffle(seed=..., buffer_size=...)``). When the stream
ends, the next epoch starts: ``set_epoch(epoch)`` (which reseeds a shuffled stream) and a fresh pass.

Several streams (a dict of IterableDatasets) take turns, one optimizer step each, in dict order
(round robin); an epoch ends at the first turn whose stream cannot fill its step, as with
``MultiDatasetBatchSamplers.ROUND_ROBIN`` on map-style data. Proportional sampling needs dataset sizes,
which streams do not have.

Resume: a :class:`StreamPosition` (epoch, examples consumed per stream in that epoch, steps taken in
it) goes into the checkpoint; resuming calls ``set_epoch`` and drops the consumed examples, so the run
continues with exactly the batches it would have had.

Every process reads the whole stream and prepares (validates, tokenizes) each step's whole global batch
(so all processes agree on its length bucket without talking to each other), then collates only the rows
its own devices hold (``Trainer._collate_step``). Do not split the stream per process
(``split_dataset_by_node``) yourself. A family's stream source (``Task.stream_source``, e.g.
sentence_transformer/stream.py) turns a step's examples into prepared rows.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Iterator

from stcore_jax.training.arguments import BatchSamplers, MultiDatasetBatchSamplers

logger = logging.getLogger(__name__)


def is_stream(dataset) -> bool:
    """Whether ``dataset`` is a ``datasets.IterableDataset``."""
    try:
        from datasets import IterableDataset
    except ImportError:  # pragma: no cover
        return False
    return isinstance(dataset, IterableDataset)


def require_max_steps(max_steps: int) -> None:
    """A stream has no length, so the run length must come from ``max_steps`` (the HF Trainer's rule)."""
    if max_steps is None or max_steps <= 0:
        raise ValueError(
            f"train_dataset is an IterableDataset (streaming), which has no length, so the number of training steps "
            f"cannot be derived from num_train_epochs: set max_steps to a positive number of optimizer steps (got "
            f"max_steps={max_steps}). Alternatively, materialise the data as a datasets.Dataset (e.g. "
            "Dataset.from_generator(lambda: iter(stream), features=stream.features) or from stream.take(n)).")


def warn_ignored_samplers(batch_sampler, multi_dataset_batch_sampler, n_streams: int) -> None:
    """The reference ignores ``batch_sampler`` for an IterableDataset (with this warning); so do we."""
    if batch_sampler != BatchSamplers.BATCH_SAMPLER:
        logger.warning("When using an IterableDataset, you cannot specify a batch sampler: batch_sampler=%r is ignored "
                       "and the stream is batched in order (shuffle it with dataset.shuffle(buffer_size=...) instead).",
                       getattr(batch_sampler, "value", batch_sampler))
    if n_streams > 1 and multi_dataset_batch_sampler != MultiDatasetBatchSamplers.ROUND_ROBIN:
        logger.warning("Streams have no length, so multi_dataset_batch_sampler=%r cannot apply; the streams take turns "
                       "(round robin).", getattr(multi_dataset_batch_sampler, "value", multi_dataset_batch_sampler))


def stream_column_names(dataset, name: str) -> list[str]:
    """The stream's columns: from its features when known, else the keys of its first example (read
    from a fresh iterator, so training still starts at that example)."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset), None)
    if first is None:
        raise ValueError(f"Dataset {name!r}: the IterableDataset yielded no examples")
    return list(first)


@dataclasses.dataclass
class StreamPosition:
    """Where a run stands in its streams: the epoch, the examples consumed from each stream in that
    epoch, and the steps taken in it (whose turn is next). JSON-able for ``trainer_state.json``."""

    epoch: int = 0
    consumed: dict = dataclasses.field(default_factory=dict)
    steps: int = 0

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": dict(self.consumed), "steps": self.steps}

    @classmethod
    def from_dict(cls, d: dict) -> StreamPosition:
        return cls(int(d["epoch"]), {k: int(v) for k, v in d["consumed"].items()}, int(d["steps"]))

    @property
    def fresh(self) -> bool:
        """At the very start of its epoch."""
        return self.steps == 0 and not any(self.consumed.values())


def resume_position(trainer_state: dict, path: str) -> StreamPosition:
    """The stream position saved in a checkpoint's ``trainer_state.json`` (clear error if it has none)."""
    if "stream" not in trainer_state:
        raise ValueError(f"{path} was not written by a streaming run (its trainer_state.json has no stream position), "
                         "so it cannot resume training on an IterableDataset; resume it with the map-style dataset "
                         "it was trained on")
    return StreamPosition.from_dict(trainer_state["stream"])


def open_stream(dataset, epoch: int, skip: int = 0) -> Iterator[dict]:
    """The examples of ``dataset`` in ``epoch``, from example ``skip`` on: ``set_epoch`` (a shuffled
    stream reshuffles per epoch), then iterate and drop. (``dataset.skip`` would be the same count, but
    on a shuffled stream it also changes the shard order, so it would not reproduce the original pass.)"""
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)
    return itertools.islice(iter(dataset), skip, None)


@dataclasses.dataclass
class StreamGroup:
    """The examples of one optimizer step: ``micro_batches`` of one stream, in stream order."""

    name: str
    micro_batches: list  # [accum] lists of examples
    first_row: int  # stream index (in this epoch) of the first example
    position: StreamPosition  # after this step


def epoch_groups(streams: dict, batch_size: int, accum: int, drop_last: bool,
                 position: StreamPosition) -> Iterator[StreamGroup]:
    """The remaining steps of ``position.epoch``: streams take turns (dict order), ``accum`` micro-batches
    of ``batch_size`` consecutive examples per step. The epoch ends at the first turn whose stream cannot
    fill its step (a short last micro-batch is kept unless ``drop_last``; a step short of micro-batches
    is dropped, as map-style epochs drop an incomplete accumulation group). An epoch without a single
    step is an error (it would start over forever)."""
    names = list(streams)
    consumed = {n: int(position.consumed.get(n, 0)) for n in names}
    iters: dict = {}
    steps = position.steps
    while True:
        name = names[steps % len(names)]
        if name not in iters:
            iters[name] = open_stream(streams[name], position.epoch, consumed[name])
        micro = []
        for _ in range(accum):
            batch = list(itertools.islice(iters[name], batch_size))
            if not batch or (drop_last and len(batch) < batch_size):
                if steps == 0 and position.fresh:
                    raise ValueError(
                        f"Dataset {name!r}: the stream ended before the first step of epoch {position.epoch}, which "
                        f"takes gradient_accumulation_steps={accum} batch(es) of {batch_size} examples"
                        f"{' (full ones, as dataloader_drop_last=True)' if drop_last else ' (the last may be short)'}"
                        f"; it yielded {sum(map(len, micro)) + len(batch)}")
                return
            micro.append(batch)
        first = consumed[name]
        consumed[name] += sum(len(b) for b in micro)
        steps += 1
        yield StreamGroup(name, micro, first, StreamPosition(position.epoch, dict(consumed), steps))


def group_rows(group: StreamGroup) -> tuple[list[dict], list[list[int]], list[list[int]]]:
    """``(examples, micro-batch rows into examples, micro-batch rows as stream indices)``."""
    examples, local, indices = [], [], []
    for b in group.micro_batches:
        start = len(examples)
        examples += b
        local.append(list(range(start, start + len(b))))
        indices.append([group.first_row + r for r in local[-1]])
    return examples, local, indices
