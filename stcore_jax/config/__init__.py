"""Run configuration: dataclasses per concern, filled from YAML (``stcore-jax train CONFIG.yaml``)."""

from stcore_jax.config.load import ConfigError, apply_overrides, check_devices, load_config, parse_config
from stcore_jax.config.schema import (
    DataConfig,
    DatasetConfig,
    EvaluatorConfig,
    HardNegativesConfig,
    LossConfig,
    MeshConfig,
    ModelConfig,
    RunConfig,
)
from stcore_jax.config.topology import TOPOLOGIES, Topology, get_topology, mesh_shape

__all__ = ["ConfigError", "DataConfig", "DatasetConfig", "EvaluatorConfig", "HardNegativesConfig", "LossConfig",
           "MeshConfig", "ModelConfig", "RunConfig", "TOPOLOGIES", "Topology", "apply_overrides", "check_devices",
           "get_topology", "load_config", "mesh_shape", "parse_config"]
