"""Multi-process start-up: ``jax.distributed.initialize()`` when launched on several processes."""

from __future__ import annotations

import logging
import os

import jax

logger = logging.getLogger(__name__)

# Environment variables that mean "this is one process of a multi-process job".
_MULTI_PROCESS_ENV = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                      "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


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
    jax.distributed.initialize()
    logger.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())
    return jax.process_count() > 1
