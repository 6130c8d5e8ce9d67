"""``SpladeRegularizerWeightSchedulerCallback``: the settings of SpladeLoss's regulariser warm-up.

sentence-transformers' SparseEncoderTrainer inserts this callback for every SpladeLoss (quadratic, over the first
third of training) and it mutates the loss's weights at each step begin. Here the warm-up is a pure function of
the step inside the compiled step (:mod:`stcore_jax.sparse_encoder.losses.warmup`); the callback only carries
the schedule: pass one in ``callbacks=`` to change ``scheduler_type`` or ``warmup_ratio`` for its loss, as in the
reference. Without one the trainer uses the defaults and warns, as the reference does.
"""

from __future__ import annotations

import logging

from stcore_jax.sparse_encoder.losses.splade import SpladeLoss
from stcore_jax.sparse_encoder.losses.warmup import SCHEDULER_TYPES
from stcore_jax.training.callbacks import TrainerCallback

logger = logging.getLogger(__name__)


class SpladeRegularizerWeightSchedulerCallback(TrainerCallback):
    """The warm-up of ``loss``'s regulariser weights from 0 to their maxima over ``warmup_ratio`` of training.

    Args:
      loss: the SpladeLoss (or CachedSpladeLoss) whose weights are warmed up (a ``ValueError`` otherwise).
      scheduler_type: ``"quadratic"`` (default) or ``"linear"``; anything else warns and uses quadratic.
      warmup_ratio: in ``(0, 1]`` (default 1/3); anything else warns and uses 1/3.
    """

    def __init__(self, loss, scheduler_type: str = "quadratic", warmup_ratio: float = 1 / 3):
        name = str(getattr(scheduler_type, "value", scheduler_type)).lower()
        if name not in SCHEDULER_TYPES:
            logger.warning("Invalid scheduler_type: %s. Using default: quadratic", scheduler_type)
            name = "quadratic"
        if not 0 < warmup_ratio <= 1:
            logger.warning("warmup_ratio should be between 0 and 1, got %s. Setting to default 1/3.", warmup_ratio)
            warmup_ratio = 1 / 3
        if not isinstance(loss, SpladeLoss):
            raise ValueError(f"SpladeRegularizerWeightSchedulerCallback warms up a SpladeLoss's regulariser weights, "
                             f"got {type(loss).__name__}; pass the SpladeLoss given to the trainer")
        self.loss, self.scheduler_type, self.warmup_ratio = loss, name, float(warmup_ratio)

    def schedule(self) -> dict:
        """Keyword arguments of ``SpladeLoss.at_step`` / ``regularizer_weights``."""
        return {"warmup_ratio": self.warmup_ratio, "scheduler_type": self.scheduler_type}
