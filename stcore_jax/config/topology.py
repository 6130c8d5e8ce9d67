"""Known topologies (Cloud TPU slices, GPU hosts) and the mesh arithmetic checked against them.

Device counts are what ``jax.device_count()`` reports: TPU v4 and v5p cores are fused in pairs
("megacore"), so ``v4-8`` and ``v5p-64`` (names count TensorCores) expose 4 and 32 devices; v5e and
v6e names count chips.
"""

from __future__ import annotations

import dataclasses
import math

from stcore_jax.config.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str
    devices: int  # jax.device_count() on the whole slice
    hosts: int  # processes (one per TPU VM worker)
    accelerator_type: str | None = None  # gcloud --accelerator-type
    runtime_version: str | None = None  # gcloud --version (TPU VM software image)
    zone: str | None = None  # a zone that offers it

    @property
    def devices_per_host(self) -> int:
        return self.devices // self.hosts


TOPOLOGIES = {t.name: t for t in (
    Topology("v4-8", 4, 1, "v4-8", "tpu-ubuntu2204-base", "us-central2-b"),
    Topology("v5e-8", 8, 1, "v5litepod-8", "v2-alpha-tpuv5-lite", "us-west4-a"),
    Topology("v5p-64", 32, 8, "v5p-64", "v2-alpha-tpuv5", "us-east5-a"),
    Topology("v6e-8", 8, 1, "v6e-8", "v2-alpha-tpuv6e", "us-east5-b"),
    Topology("gpu-1", 1, 1),
    Topology("gpu-8", 8, 1),
)}


def get_topology(name: str, key: str = "mesh.topology") -> Topology:
    if name not in TOPOLOGIES:
        raise ConfigError(f"config key {key!r}: unknown topology {name!r}; allowed values: {sorted(TOPOLOGIES)}")
    return TOPOLOGIES[name]


def mesh_shape(mesh, device_count: int, key: str = "mesh") -> dict:
    """``{"data": d, "fsdp": f}`` for ``mesh`` (a MeshConfig) on ``device_count`` devices.

    Raises ValueError naming ``key`` when the mesh needs more devices than there are, or when a
    ``topology`` is given and the mesh does not use exactly its devices.
    """
    for axis in ("data", "fsdp"):
        v = getattr(mesh, axis)
        if v is not None and v < 1:
            raise ConfigError(f"config key '{key}.{axis}' must be >= 1, got {v}")
    if mesh.topology is not None:
        topo = get_topology(mesh.topology, f"{key}.topology")
        if topo.devices != device_count:
            raise ConfigError(f"config key '{key}.topology': {topo.name} has {topo.devices} devices but this run sees "
                             f"{device_count}; run on that topology or drop/adjust '{key}.topology'")
    if device_count % mesh.fsdp:
        raise ConfigError(f"config key '{key}.fsdp'={mesh.fsdp} does not divide the {device_count} devices")
    data = mesh.data if mesh.data is not None else device_count // mesh.fsdp
    total = data * mesh.fsdp
    if total > device_count:
        raise ConfigError(f"config key '{key}': data={data} x fsdp={mesh.fsdp} needs {total} devices but only "
                         f"{device_count} are available; make data x fsdp <= {device_count}")
    if mesh.topology is not None and total != device_count:
        raise ConfigError(f"config key '{key}': data={data} x fsdp={mesh.fsdp} = {total} does not use the "
                         f"{device_count} devices of {mesh.topology}; make data x fsdp == {device_count}")
    return {"data": data, "fsdp": mesh.fsdp} if mesh.fsdp > 1 else {"data": data}


def global_batch(per_device: int, shape: dict) -> int:
    """Rows per step: the per-device batch times the data-parallel devices (``data`` x ``fsdp``: both
    axes split the batch, training/sharding.py)."""
    return per_device * math.prod(v for k, v in shape.items() if k in ("data", "fsdp"))
