"""Multi-process runs: per-process batch slices (start-up is stcore_jax/distributed.py).

Every process computes the same batch plan (a pure function of the seed), but each collates only the
rows that land on its own devices, and the global batch is assembled with
:func:`jax.make_array_from_process_local_data`: no process tokenizes-and-pads, or ships, rows another
process owns.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from stcore_jax.training.sharding import batch_sharding, data_parallel_size


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
