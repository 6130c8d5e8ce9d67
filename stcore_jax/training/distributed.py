"""Multi-process runs: start-up (``jax.distributed.initialize``) and per-process batch slices.

Every process computes the same batch plan (a pure function of the seed), but each collates only the
rows that land on its own devices, and the global batch is assembled with
:func:`jax.make_array_from_process_local_data`: no process tokenizes-and-pads, or ships, rows another
process owns.
"""

from __future__ import annotations

import functools
import logging
import os

import jax
import numpy as np

from stcore_jax.training.sharding import batch_sharding, data_parallel_size

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


@functools.lru_cache(maxsize=64)  # called per step and per batch leaf; the answer depends on the mesh only
def local_batch_slots(mesh, global_batch: int) -> np.ndarray:
    """``[n_local]`` positions of a global batch (sharded over the batch axes ``data`` and ``fsdp``, see
    training/sharding.py) held by this process's devices, in the order
    :func:`jax.make_array_from_process_local_data` maps its local rows onto them (ascending). Single
    process: ``arange(global_batch)``."""
    if global_batch % data_parallel_size(mesh):
        raise ValueError(f"global batch {global_batch} is not divisible by the data-parallel size "
                         f"({data_parallel_size(mesh)}: the mesh's data x fsdp)")
    index = batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
    blocks = sorted({(s[0].start or 0, global_batch if s[0].stop is None else s[0].stop) for s in index.values()})
    slots = np.concatenate([np.arange(a, b) for a, b in blocks])
    slots.flags.writeable = False  # shared by every caller through the cache
    return slots


def local_rows(rows, slots) -> list:
    """The rows of a (possibly partial) global batch that sit at ``slots``. Positions past ``len(rows)``
    are padding; as ``slots`` ascend they come last, which is where ``collate`` puts its padding."""
    return [rows[s] for s in slots if s < len(rows)]


def to_global(batch, mesh, global_batch: int, *, leading_accum: bool = False, local: bool = False):
    """Host numpy batch -> global ``jax.Array`` pytree sharded over the batch axes, ``P(("data", "fsdp"))``
    (``P(None, ("data", "fsdp"))`` with a leading micro-batch axis; ``P("data")`` without fsdp).
    ``local=True``: ``batch`` holds only this process's slots (:func:`local_batch_slots`); otherwise it
    is the whole global batch and the slots are cut from it."""
    sharding = batch_sharding(mesh, leading_accum=leading_accum)
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    axis = 1 if leading_accum else 0
    slots = local_batch_slots(mesh, global_batch)

    def one(x):
        # Leaves shard over the batch axes in blocks; a leaf with one entry per data shard rather than per row
        # (a packed batch's [shards, rows, length] arrays) maps this process's rows to its shards alike.
        x = np.asarray(x)
        if not local:
            n = x.shape[axis]
            x = np.take(x, np.unique(slots * n // global_batch) if n != global_batch else slots, axis=axis)
        size = x.shape[axis] * global_batch // len(slots)
        shape = x.shape[:axis] + (size,) + x.shape[axis + 1:]
        return jax.make_array_from_process_local_data(sharding, np.ascontiguousarray(x), shape)

    return jax.tree_util.tree_map(one, batch)
