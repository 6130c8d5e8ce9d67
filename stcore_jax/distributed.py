"""Multi-process start-up: ``jax.distributed.initialize`` when the environment describes a multi-process job.

Models and the trainer call :func:`maybe_initialize_distributed` before they touch the devices; the
per-process batch slices are in stcore_jax/training/distributed.py.
"""

from __future__ import annotations

import logging
import os

import jax

logger = logging.getLogger(__name__)

# Environment variables that mean "this is one process of a multi-process job".
_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                      "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def use_gloo_on_cpu() -> None:
    """CPU collectives across processes need gloo (the default implementation is single-process only).
    The option only affects the CPU backend, so setting it is harmless on TPU/GPU."""
    try:
        if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # pragma: no cover - older/newer jax without the option
        pass


def maybe_initialize_distributed() -> bool:
    """Call ``jax.distributed.initialize()`` once if the environment describes a multi-process job.

    TPU pods find their peers on their own; elsewhere set ``JAX_COORDINATOR_ADDRESS``,
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (or run under SLURM / Open MPI). Returns whether
    the runtime is (now) multi-process. Must run before anything touches the devices.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    if not any(os.environ.get(k) for k in _MULTI_PROCESS_ENV):
        return False
    if os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") == 0 and not any(
            os.environ.get(k) for k in _MULTI_PROCESS_ENV if k != "TPU_WORKER_HOSTNAMES"):
        return False  # a single-host TPU VM also sets TPU_WORKER_HOSTNAMES (to one host)
    use_gloo_on_cpu()
    jax.distributed.initialize()
    logger.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())
    return jax.process_count() > 1


def process_major_devices() -> list:
    """Every process's devices, process 0's first (each process's by id): a 1-D mesh over them gives each
    process one contiguous block of a ``P(axis)``-sharded batch, so a process's share of a batch is a
    contiguous slice of its rows (inference across processes, ``BaseModel._run_bucketed``)."""
    return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
