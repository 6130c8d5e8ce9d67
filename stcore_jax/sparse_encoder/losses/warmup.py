"""The regulariser weight warm-up that sentence-transformers' SparseEncoderTrainer adds to every SpladeLoss run.

The reference trainer silently inserts ``SpladeRegularizerWeightSchedulerCallback(loss)`` (quadratic, warm-up
ratio 1/3; sparse_encoder/callbacks/splade_callbacks.py) whenever the loss is a ``SpladeLoss``. It sets both
regulariser weights to 0 at train begin and, at the beginning of each step, to

    w(step) = w_max * (step / W) ** p        for step < W   (p = 2 quadratic, 1 linear)
    w(step) = w_max                          for step >= W,  W = max(1, int(total_steps * warmup_ratio))

where ``step`` is the number of optimizer steps already taken (``state.global_step``, 0 on the first step). So
the first step trains with no regularisation at all, and the loss values change over the first third of training:
a parity run must replay the same weights. Here the weight is a pure function of the step counter, usable
inside a jitted train step on ``state.step`` (a traced integer) without retracing when it changes.
"""

from __future__ import annotations

import jax.numpy as jnp

SCHEDULER_TYPES = ("quadratic", "linear")


def warmup_steps(total_steps: int, warmup_ratio: float = 1 / 3) -> int:
    """``W = max(1, int(total_steps * warmup_ratio))``, the reference's ``on_train_begin`` (static ints)."""
    if not 0 < warmup_ratio <= 1:
        raise ValueError(f"warmup_ratio must be in (0, 1], got {warmup_ratio}.")
    if int(total_steps) < 1:
        raise ValueError(f"total_steps must be a positive number of optimizer steps, got {total_steps}.")
    return max(1, int(int(total_steps) * warmup_ratio))


def check_scheduler_type(scheduler_type: str) -> str:
    name = getattr(scheduler_type, "value", scheduler_type)
    name = str(name).lower()
    if name not in SCHEDULER_TYPES:
        raise ValueError(f"scheduler_type must be one of {SCHEDULER_TYPES}, got {scheduler_type!r}.")
    return name


def regularizer_weight(step, total_steps: int, max_weight: float | None, *, warmup_ratio: float = 1 / 3,
                       scheduler_type: str = "quadratic"):
    """The regulariser weight at optimizer step ``step`` (0-based: the steps taken before this one).

    Args:
      step: int or a traced integer scalar (``state.step`` inside a jitted step).
      total_steps: the run's number of optimizer steps (static; the reference's ``state.max_steps``).
      max_weight: the weight reached after warm-up (``SpladeLoss``'s constructor value). ``None`` (no query
        regulariser) stays ``None``.
      warmup_ratio: fraction of ``total_steps`` over which the weight rises (default 1/3, as the trainer's).
      scheduler_type: ``"quadratic"`` (the trainer's default) or ``"linear"``.

    Returns:
      ``None`` if ``max_weight`` is None, else a float32 scalar: ``max_weight * min(step / W, 1) ** p``.
    """
    if max_weight is None:
        return None
    power = 2 if check_scheduler_type(scheduler_type) == "quadratic" else 1
    w = warmup_steps(total_steps, warmup_ratio)
    ratio = jnp.minimum(jnp.asarray(step, jnp.float32) / jnp.float32(w), 1.0)
    return jnp.float32(max_weight) * ratio ** power
