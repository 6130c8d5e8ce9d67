"""``TrainerState``: the whole state of the training loop in one dataclass.

Callbacks read it under the names of ``transformers.TrainerState`` (``global_step``, ``epoch``,
``log_history``, ``best_metric``, ...); it also holds where the run stands in its data (the epoch and the
batches done in it, or the position in the streams), which is what ``checkpoint-*/trainer_state.json``
stores next to the orbax state, and the bookkeeping of the save and best-model schedules.
"""

from __future__ import annotations

import dataclasses

from stcore_jax.training.stream import StreamPosition, resume_position


@dataclasses.dataclass
class TrainerState:
    global_step: int = 0
    epoch: float = 0.0  # fractional: epochs done, as logged
    max_steps: int = 0
    num_train_epochs: int = 0
    log_history: list = dataclasses.field(default_factory=list)
    best_metric: float | None = None
    best_model_checkpoint: str | None = None
    is_world_process_zero: bool = True
    # Where the run stands in its data: epoch ``epoch_index``, ``batches_in_epoch`` of its plan done (map-style
    # data), or ``stream_position`` (streams). Resuming regenerates the epoch's plan and skips what was done.
    epoch_index: int = 0
    batches_in_epoch: int = 0
    stream_position: StreamPosition | None = None
    # Schedule bookkeeping (not saved): the last steps saved and evaluated, and whether the last evaluation
    # improved ``best_metric`` (its step's checkpoint becomes ``best_model_checkpoint``).
    last_save_step: int | None = None
    last_eval_step: int | None = None
    pending_best: bool = False

    def to_json(self, *, data_seed: int, global_batch: int, streaming: bool) -> dict:
        """The ``trainer_state.json`` of a checkpoint (its keys are pinned by tests/reliability)."""
        return {"global_step": self.global_step, "epoch": self.epoch, "epoch_index": self.epoch_index,
                "batches_in_epoch": self.batches_in_epoch, "log_history": self.log_history,
                "best_metric": self.best_metric, "best_model_checkpoint": self.best_model_checkpoint,
                "data_seed": data_seed, "global_batch": global_batch,
                **({"stream": (self.stream_position or StreamPosition()).to_dict()} if streaming else {})}

    def restore(self, saved: dict, path: str, *, streaming: bool) -> None:
        """Continue from a checkpoint's ``trainer_state.json`` (``path``: the checkpoint, for errors)."""
        self.global_step = saved["global_step"]
        self.log_history = saved.get("log_history", [])
        self.best_metric = saved.get("best_metric")
        self.best_model_checkpoint = saved.get("best_model_checkpoint")
        self.epoch_index, self.batches_in_epoch = saved["epoch_index"], saved["batches_in_epoch"]
        self.stream_position = resume_position(saved, path) if streaming else None

    def advance(self, epoch_index: int, batches_in_epoch: int, stream_position: StreamPosition | None) -> None:
        """Record where the data stand after a step (or at an epoch's end)."""
        self.epoch_index, self.batches_in_epoch, self.stream_position = epoch_index, batches_in_epoch, stream_position
