"""The device mesh: ``data`` and optional ``fsdp`` axes; default all devices on ``data``.

Both axes split the batch; ``fsdp`` also shards the parameters and optimizer state (training/sharding.py).
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np
from jax.sharding import Mesh

logger = logging.getLogger(__name__)


def make_mesh(mesh_shape: dict | None = None) -> Mesh:
    """``{"data": n}`` or ``{"data": n, "fsdp": m}`` over all devices (every process's, multi-host)."""
    devices = jax.devices()
    if not mesh_shape:
        return Mesh(np.array(devices), ("data",))
    unknown = [k for k in mesh_shape if k not in ("data", "fsdp")]
    if unknown:
        raise ValueError(f"mesh_shape has unknown axes {unknown}; allowed axes: data, fsdp")
    sizes = {k: int(v) for k, v in mesh_shape.items()}
    if any(v < 1 for v in sizes.values()):
        raise ValueError(f"mesh_shape sizes must be >= 1, got {mesh_shape}")
    total = math.prod(sizes.values())
    if total > len(devices):
        raise ValueError(f"mesh_shape {mesh_shape} needs {total} devices but only {len(devices)} are available; "
                         "make the product of the axis sizes at most the device count")
    if total < len(devices):
        logger.warning("mesh_shape %s uses %d of %d devices", mesh_shape, total, len(devices))
    names = tuple(sizes)
    return Mesh(np.array(devices[:total]).reshape(tuple(sizes.values())), names)
