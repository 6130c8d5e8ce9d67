"""YAML configs: every tpu_configs/*.yaml parses and its mesh fits its topology; bad configs name the key."""

import glob
import math
import os

import pytest

from stcore_jax.config import TOPOLOGIES, ConfigError, RunConfig, check_devices, load_config, parse_config
from stcore_jax.config.topology import global_batch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TPU_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "tpu_configs", "*.yaml")))
# Device counts as jax reports them on each slice (megacore v4/v5p: one device per chip).
EXPECTED_DEVICES = {"v4-8": 4, "v5e-8": 8, "v5p-64": 32, "v6e-8": 8, "gpu-1": 1, "gpu-8": 8}


def test_all_topologies_have_a_config():
    names = {os.path.basename(p)[:-5] for p in TPU_CONFIGS}
    assert {"v4-8", "v5e-8", "v5p-64", "v6e-8", "gpu-1x", "gpu-8x"} <= names


@pytest.mark.parametrize("path", TPU_CONFIGS, ids=os.path.basename)
def test_tpu_config_parses_and_mesh_matches_topology(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    topo = TOPOLOGIES[cfg.mesh.topology]
    assert topo.devices == EXPECTED_DEVICES[topo.name]
    assert topo.devices % topo.hosts == 0
    # The mesh uses exactly the slice's devices, checked against a simulated device count...
    shape = check_devices(cfg, topo.devices)
    assert math.prod(shape.values()) == topo.devices
    # ...and every host holds an equal share of the global batch.
    gb = global_batch(cfg.arguments.per_device_train_batch_size, shape)
    assert gb % topo.hosts == 0 and gb == cfg.arguments.per_device_train_batch_size * math.prod(shape.values())
    assert cfg.arguments.bf16 and cfg.model.dtype == "bfloat16"
    assert list(cfg.arguments.length_buckets) == sorted(cfg.arguments.length_buckets)
    assert max(cfg.arguments.length_buckets) <= cfg.model.max_seq_length
    # On any other device count the same config is refused, naming the key.
    with pytest.raises(ConfigError, match="mesh"):
        check_devices(cfg, topo.devices * 2)


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


GOOD = """
model: {name_or_path: all-MiniLM-L6-v2, max_seq_length: 32}
data: {train: quickstart, eval: quickstart}
loss: {name: CoSENTLoss, kwargs: {scale: 20.0}}
arguments: {output_dir: out, max_steps: 2, per_device_train_batch_size: 2}
evaluator: {name: EmbeddingSimilarityEvaluator}
"""


def test_good_config_and_overrides(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD), ["arguments.learning_rate=3e-5", "mesh.data=4", "loss.kwargs.scale=10"])
    assert cfg.arguments.learning_rate == 3e-5 and cfg.arguments.max_steps == 2
    assert cfg.loss.kwargs == {"scale": 10}
    assert check_devices(cfg, 8) == {"data": 4}
    assert check_devices(load_config(_write(tmp_path, GOOD)), 8) == {"data": 8}
    fsdp = check_devices(load_config(_write(tmp_path, GOOD), ["mesh.fsdp=2"]), 8)
    assert fsdp == {"data": 4, "fsdp": 2} and global_batch(16, fsdp) == 16 * 8  # fsdp splits the batch too


@pytest.mark.parametrize("yaml_text, overrides, match", [
    (GOOD + "optimizer: adam\n", [], r"'optimizer' is unknown; allowed keys at the top level: \['arguments', 'data'"),
    (GOOD, ["model.nmae_or_path=x"], r"'model.nmae_or_path' is unknown; allowed keys under 'model': .*'name_or_path'"),
    (GOOD, ["arguments.learning_rat=1e-4"], r"'arguments.learning_rat' is unknown.*'learning_rate'"),
    (GOOD, ["arguments.learning_rate=fast"], r"'arguments.learning_rate' must be float, got str 'fast'"),
    (GOOD, ["arguments.max_steps=2.5"], r"'arguments.max_steps' must be int, got float"),
    (GOOD, ["model.max_seq_length=[1]"], r"'model.max_seq_length' must be int or null, got list"),
    (GOOD, ["loss.name=CoolLoss"], r"'loss.name': unknown loss 'CoolLoss'; allowed values: \[.*'CoSENTLoss'.*'MultipleNegativesRankingLoss'"),
    (GOOD, ["loss.kwargs.temperature=2"], r"'loss.kwargs.temperature': CoSENTLoss has no argument 'temperature'; allowed: \['scale', 'similarity_fct'\]"),
    (GOOD, ["loss.name=MatryoshkaLoss"], r"'loss.kwargs.scale': MatryoshkaLoss has no argument 'scale'"),
    (GOOD, ["loss.name=MatryoshkaLoss", "loss.kwargs={}"], r"'loss.kwargs': MatryoshkaLoss needs \['loss', 'matryoshka_dims'\]"),
    (GOOD, ["loss.name=MatryoshkaLoss", "loss.kwargs={loss: {name: MNRL}, matryoshka_dims: [8]}"],
     r"'loss.kwargs.loss.name': unknown loss 'MNRL'"),
    (GOOD, ["evaluator.name=F1Evaluator"], r"'evaluator.name': unknown evaluator 'F1Evaluator'; allowed values"),
    (GOOD, ["model.family=reranker"], r"'model.family': unknown model family 'reranker'; allowed values: \['cross_encoder', 'sentence_transformer', 'sparse_encoder'\]"),
    (GOOD, ["data.format=xml"], r"'data.format': 'xml' is not supported; allowed values: \['auto', 'stsb'"),
    (GOOD, ["data.train=no/such/file.csv"], r"'data.train': 'no/such/file.csv' does not exist"),
    (GOOD, ["model.dtype=float16"], r"'model.dtype': 'float16' is not supported; allowed values: \['float32', 'bfloat16'\]"),
    (GOOD, ["arguments.lr_scheduler_type=warm"], r"config key 'arguments': lr_scheduler_type='warm' is not supported"),
    (GOOD, ["mesh.topology=v9-8"], r"'mesh.topology': unknown topology 'v9-8'; allowed values: \['gpu-1'"),
    (GOOD, ["mesh.topology=v5e-8", "mesh.data=16"], r"'mesh': data=16 x fsdp=1 needs 16 devices but only 8"),
    (GOOD, ["arguments.mesh_shape={data: 2}"], r"'arguments.mesh_shape': set the layout in the 'mesh' section"),
    ("- a\n- list\n", [], r"must hold a mapping"),
])
def test_bad_config_names_the_key(tmp_path, yaml_text, overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, yaml_text), overrides)


def test_mesh_larger_than_devices(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD), ["mesh.data=16"])
    with pytest.raises(ConfigError, match=r"config key 'mesh': data=16 x fsdp=1 needs 16 devices but only 8 are available"):
        check_devices(cfg, 8)
    cfg = load_config(_write(tmp_path, GOOD), ["mesh.fsdp=3"])
    with pytest.raises(ConfigError, match=r"'mesh.fsdp'=3 does not divide the 8 devices"):
        check_devices(cfg, 8)


def test_parse_config_from_dict_uses_defaults():
    cfg = parse_config({"data": {"train": "quickstart"}})
    assert cfg.loss.name == "CoSENTLoss" and cfg.model.name_or_path == "all-MiniLM-L6-v2"
    assert cfg.arguments.output_dir == "output"
