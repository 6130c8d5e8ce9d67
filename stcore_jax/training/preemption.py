"""Graceful stop on SIGTERM / SIGINT: finish the step, write a checkpoint, exit with a clear message.

Schedulers announce preemption with SIGTERM (TPU pods, spot VMs, Kubernetes, SLURM) and people press
Ctrl-C. Either way the process should not die mid-step: :class:`PreemptionGuard` turns the signal into
a flag that the training loop polls between steps; the trainer then writes a checkpoint (waiting for
the orbax write to commit) and raises :class:`TrainingInterrupted`, a ``SystemExit`` with the
conventional code ``128 + signal`` (143 for SIGTERM, 130 for SIGINT), so an unhandled one ends the
process non-zero without a traceback and ``except Exception`` in user code does not swallow it.

Multi-process: the processes must agree on the step at which they stop (the checkpoint is a
collective). With JAX's preemption service (on by default in ``jax.distributed``), SIGTERM is caught by
JAX itself and :func:`jax.experimental.multihost_utils.reached_preemption_sync_point` names the same
step on every process; we do not install a Python SIGTERM handler then, as it would replace JAX's.
Without the service the local flags are combined with an all-gather every step. SIGINT keeps its
default behaviour in multi-process runs (one process's Ctrl-C cannot be agreed on cheaply).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import jax

logger = logging.getLogger(__name__)


class TrainingInterrupted(SystemExit):
    """Raised by ``train()`` after the preemption checkpoint is written. ``code`` is ``128 + signum``."""

    def __init__(self, signum: int, step: int, checkpoint: str | None):
        super().__init__(128 + signum)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    def __str__(self):
        return interrupted_message(self.signum, self.step, self.checkpoint)


def interrupted_message(signum: int, step: int, checkpoint: str | None) -> str:
    where = f"wrote {checkpoint}" if checkpoint else "no checkpoint was written"
    return (f"stcore_jax: received {signal.Signals(signum).name}; stopped after step {step} and {where}. "
            "Run the same script with trainer.train(resume_from_checkpoint=True) to continue exactly where it stopped.")


def _jax_preemption_service() -> bool:
    """True when JAX's preemption sync manager is running (multi-process with the service enabled)."""
    if jax.process_count() == 1:
        return False
    try:  # private, but the only way to ask; multihost_utils.reached_preemption_sync_point raises without it
        from jax._src import distributed

        return distributed.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):  # pragma: no cover - a jax that moved it: use the all-gather path
        return False


class PreemptionGuard:
    """Context manager: while inside, SIGTERM/SIGINT only set a flag (see the module docstring).

    A signal that arrives but is never acted on (e.g. during the final export) is re-delivered with
    the default behaviour on exit, so the process still ends as the sender intended.
    """

    def __init__(self):
        self.signum: int | None = None  # the first signal received
        self.handled = False
        self._previous: dict[int, object] = {}

    def _signals(self) -> tuple[int, ...]:
        if jax.process_count() == 1:
            return (signal.SIGTERM, signal.SIGINT)
        return () if _jax_preemption_service() else (signal.SIGTERM,)

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            logger.info("train() is not running in the main thread: no SIGTERM/SIGINT handling")
            return self
        for s in self._signals():
            self._previous[s] = signal.signal(s, self._on_signal)
        return self

    def _on_signal(self, signum, frame):
        if self.signum is not None:  # a second signal: stop waiting, behave as without the guard
            self._restore()
            signal.raise_signal(signum)
            return
        self.signum = signum
        print(f"stcore_jax: received {signal.Signals(signum).name}; finishing the current step, then writing a "
              "checkpoint (send it again to stop at once)", file=sys.stderr, flush=True)

    def _restore(self):
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def __exit__(self, exc_type, exc, tb):
        self._restore()
        if self.signum is not None and not self.handled and exc_type is None:
            os.kill(os.getpid(), self.signum)  # re-deliver: the default action (terminate / KeyboardInterrupt)
        return False

    def should_stop(self, step: int) -> bool:
        """Whether every process should stop after ``step`` (all processes call this at every step)."""
        if jax.process_count() == 1:
            return self.signum is not None
        if _jax_preemption_service():
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = self.signum or signal.SIGTERM
                return True
            return False
        import numpy as np
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.signum or 0))
        hit = int(np.max(flags))
        if hit:
            self.signum = self.signum or hit
        return bool(hit)
