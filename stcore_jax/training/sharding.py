"""FSDP: how the batch and the train state are laid out on the ``("data", "fsdp")`` mesh.

Both axes are data parallel: a batch ``[B, ...]`` is sharded ``P(("data", "fsdp"))``, i.e. cut into
``d * f`` contiguous blocks of ``B / (d * f)`` rows, one per device in mesh order (``data``-major). The
data-parallel size is therefore ``d * f`` and the global batch ``per_device_train_batch_size * d * f``;
losses with per-device in-batch negatives get ``num_shards = d * f`` and their blocks are exactly the
devices' rows.

The ``fsdp`` axis also shards the train state. An array of at least ``min_size`` elements is split
over ``fsdp`` along its largest dimension divisible by ``f`` (the first such on a tie) and replicated
over ``data``; an array with no such dimension, and a small one (LayerNorm scales, biases, step
counters: the all-gather would cost more than the memory it saves), stays replicated. The rule reads
shapes only, so an Adam ``mu`` / ``nu`` is sharded exactly like its parameter. Compiled with these
shardings as ``in_shardings``/``out_shardings`` (state donated), XLA's SPMD partitioner all-gathers
each weight where the forward and backward use it and reduce-scatters its gradient; the step
function itself does not change. (This is ZeRO-3 / FSDP by sharding annotation, no ``shard_map``.)
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
DEFAULT_MIN_SIZE = 2**14  # 16k elements = 64 KiB in float32: below that, gathering costs more than it saves


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch dimension is split over, in mesh order (``("data",)``, ``("data", "fsdp")``)."""
    return tuple(a for a in mesh.axis_names if a in BATCH_AXES)


def data_parallel_size(mesh: Mesh) -> int:
    """How many blocks a batch is cut into: the product of the batch axes' sizes (``d * f``)."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_spec(mesh: Mesh, *, leading_accum: bool = False) -> P:
    """``P("data")`` / ``P(("data", "fsdp"))`` for ``[B, ...]``; with a leading micro-batch axis
    (``[accum, B, ...]``) the same on dimension 1."""
    axes = batch_axes(mesh)
    rows = axes[0] if len(axes) == 1 else axes
    return P(None, rows) if leading_accum else P(rows)


def batch_sharding(mesh: Mesh, *, leading_accum: bool = False) -> NamedSharding:
    return NamedSharding(mesh, batch_spec(mesh, leading_accum=leading_accum))


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int = DEFAULT_MIN_SIZE) -> P:
    """The ``PartitionSpec`` of one state array of ``shape`` on an ``fsdp``-way axis.

    ``P()`` (replicated) when ``fsdp == 1``, the array has fewer than ``min_size`` elements, or no
    dimension is divisible by ``fsdp``; otherwise ``"fsdp"`` on the largest divisible dimension, e.g.
    ``(30522, 384) -> P("fsdp", None)`` and ``(384, 1536) -> P(None, "fsdp")`` for ``fsdp=2``.
    """
    if fsdp <= 1 or math.prod(shape) < min_size:
        return P()
    candidates = [i for i, n in enumerate(shape) if n % fsdp == 0]
    if not candidates:
        return P()
    dim = max(candidates, key=lambda i: (shape[i], -i))  # largest; the first of equals
    return P(*(["fsdp" if i == dim else None for i in range(len(shape))]))


def param_shardings(tree, mesh: Mesh, min_size: int = DEFAULT_MIN_SIZE):
    """A tree of ``NamedSharding`` matching ``tree`` (parameters, optimizer state or the whole train
    state; leaves are arrays or ``jax.ShapeDtypeStruct``) under :func:`fsdp_spec`. Without an
    ``fsdp`` axis everything is replicated."""
    fsdp = mesh.shape["fsdp"] if "fsdp" in mesh.axis_names else 1
    return jax.tree_util.tree_map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), fsdp, min_size)), tree)


def sharded_train_state(trainable, tx, mesh: Mesh, min_size: int = DEFAULT_MIN_SIZE):
    """``(state, shardings)``: the train state of step.py (``trainable``, ``tx``'s optimizer state, the
    ``step`` and ``skipped`` counters) born sharded under :func:`param_shardings`; the optimizer state is
    initialised under ``jit`` with its output shardings, so it is never whole on one device."""
    counter = jax.ShapeDtypeStruct((), jnp.int32)
    abstract = {"trainable": trainable, "opt_state": jax.eval_shape(tx.init, trainable), "step": counter,
                "skipped": counter}
    shardings = param_shardings(abstract, mesh, min_size)
    trainable = jax.device_put(trainable, shardings["trainable"])
    opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(trainable)
    zeros = [jax.device_put(jnp.zeros((), jnp.int32), shardings[k]) for k in ("step", "skipped")]
    return {"trainable": trainable, "opt_state": opt_state, "step": zeros[0], "skipped": zeros[1]}, shardings


def gather_to_host(tree):
    """``tree`` with every array a process cannot read whole (sharded across processes) gathered into a
    host numpy array; everything else returned as is (so on one process this is free, and
    ``jax.device_get`` of a sharded array assembles it). Collective: every process must call it."""
    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return x
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree_util.tree_map(one, tree)
