"""YAML (plus ``--set key=value`` overrides) -> :class:`RunConfig`, with errors that name the key.

Checks, in order, before anything is loaded or compiled: unknown keys, value types, the
training arguments' own validation (the model family's class), the model section, data sources
(local paths must exist; one dataset or several named ones, multi.py), the losses (one, or one per
training dataset) and evaluator by name and keyword arguments (of the model family), per-dataset
prompts, hard-negative mining arguments and the mesh against its topology.
"""

from __future__ import annotations

import dataclasses
import os

import yaml

from stcore_jax.config import catalogue, multi
from stcore_jax.config.errors import ConfigError
from stcore_jax.config.fields import from_dict
from stcore_jax.config.multi import DATA_FORMATS
from stcore_jax.config.schema import DataConfig, LossConfig, RunConfig
from stcore_jax.config.topology import TOPOLOGIES, get_topology, mesh_shape

DTYPES = ("float32", "bfloat16")


def apply_overrides(raw: dict, overrides) -> dict:
    """``["arguments.learning_rate=3e-5", ...]``: values parse as YAML (numbers, booleans, lists)."""
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set arguments.max_steps=100")
        dotted, text = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = raw
        for i, p in enumerate(parts[:-1]):
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {dotted}: config key {'.'.join(parts[: i + 1])!r} is not a mapping")
            node = nxt
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
    return raw


def read_yaml(path) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path!r} is not valid YAML: {e}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        keys = sorted(f.name for f in dataclasses.fields(RunConfig))
        raise ConfigError(f"config file {path!r} must hold a mapping with keys {keys}")
    return raw


def parse_config(raw: dict, base_dir: str | None = None) -> RunConfig:
    """Check ``raw`` (parsed YAML) completely and return the :class:`RunConfig`."""
    raw = dict(raw)
    args = raw.pop("arguments", None) or {}
    if not isinstance(args, dict):
        raise ConfigError("config key 'arguments' must be a mapping of training arguments (the fields of "
                          "SentenceTransformerTrainingArguments, CrossEncoderTrainingArguments or "
                          "SparseEncoderTrainingArguments)")
    args.setdefault("output_dir", "output")
    data_raw, loss_raw = raw.pop("data", None), raw.pop("loss", None)  # their forms are read below (multi.py)
    cfg = from_dict(RunConfig, raw, "")
    family = cfg.model.family
    arguments_class = catalogue.family_class(catalogue.ARGUMENTS, family)  # checks the family first
    cfg = dataclasses.replace(cfg, arguments=from_dict(arguments_class, args, "arguments"))
    if "mesh_shape" in args:
        raise ConfigError("config key 'arguments.mesh_shape': "
                          "set the layout in the 'mesh' section (data, fsdp, topology)")
    cfg = dataclasses.replace(cfg, model=_check_model(cfg.model))
    data = _check_data(data_raw, base_dir)
    (train, train_named), (evals, eval_named) = data.datasets("train"), data.datasets("eval")
    cfg = dataclasses.replace(cfg, data=data, loss=multi.parse_loss(loss_raw, train, train_named))
    for key, lo in loss_items(cfg.loss):
        catalogue.check_loss(lo.name, lo.kwargs, key, family=family, num_labels=cfg.model.num_labels)
    multi.check_eval_losses(cfg.loss, evals, eval_named, cfg.arguments.eval_strategy != "no")
    multi.check_prompts(cfg.arguments.prompts, *prompt_columns(data, {n: s.columns for n, s in train.items()},
                                                                  {n: s.columns for n, s in evals.items()}))
    catalogue.check_evaluator(cfg.evaluator.name, cfg.evaluator.kwargs, family=family)
    multi.check_hard_negatives(cfg.data.hard_negatives, "data.hard_negatives")
    _check_evaluator_mining(cfg.evaluator)
    reads_rows = cfg.evaluator.name is not None and catalogue.evaluator_columns(family)[cfg.evaluator.name]
    if reads_rows and cfg.evaluator.data is None and cfg.data.eval is None:
        raise ConfigError("config key 'evaluator.data': the evaluator needs rows; set evaluator.data or data.eval")
    if reads_rows and cfg.evaluator.data is None and eval_named:
        raise ConfigError(f"config key 'evaluator.data': data.eval holds several datasets {list(evals)}; set "
                          f"evaluator.data to the name of the one the evaluator reads, or to a source")
    if cfg.evaluator.data is not None and not (eval_named and cfg.evaluator.data in evals):
        cfg = dataclasses.replace(cfg, evaluator=dataclasses.replace(
            cfg.evaluator, data=multi.check_source(cfg.evaluator.data, cfg.data.format, "evaluator.data", base_dir)))
    if cfg.mesh.topology is not None:
        topo = get_topology(cfg.mesh.topology)
        mesh_shape(cfg.mesh, topo.devices)  # the mesh must fit the topology it names
    return cfg


def _check_model(m):
    """The checked model section; a CrossEncoder's ``activation_fn`` name becomes its torch dotted path."""
    if m.dtype not in DTYPES:
        raise ConfigError(f"config key 'model.dtype': {m.dtype!r} is not supported; allowed values: {list(DTYPES)}")
    if m.max_seq_length is not None and m.max_seq_length < 1:
        raise ConfigError(f"config key 'model.max_seq_length' must be >= 1, got {m.max_seq_length}")
    if m.family != "cross_encoder":
        for k in ("num_labels", "activation_fn"):
            if getattr(m, k) is not None:
                raise ConfigError(f"config key 'model.{k}' applies to CrossEncoders only; set model.family: "
                                  f"cross_encoder, or remove model.{k}")
        return m
    if m.num_labels is not None and m.num_labels < 1:
        raise ConfigError(f"config key 'model.num_labels' must be >= 1, got {m.num_labels}")
    if m.activation_fn is not None:
        m = dataclasses.replace(m, activation_fn=catalogue.activation_path(m.activation_fn, "model.activation_fn"))
    return m


def _check_evaluator_mining(e, key: str = "evaluator.hard_negatives") -> None:
    """Mined evaluator rows become CrossEncoderRerankingEvaluator samples (n-tuples: query, positive, documents)."""
    multi.check_hard_negatives(e.hard_negatives, key)
    if e.hard_negatives.model is None:
        return
    if e.name != "CrossEncoderRerankingEvaluator":
        raise ConfigError(f"config key {key!r}: mined documents feed CrossEncoderRerankingEvaluator only, "
                          f"the evaluator is {e.name!r}; remove {key}")
    fmt = e.hard_negatives.kwargs.get("output_format", "n-tuple")
    if fmt != "n-tuple":
        raise ConfigError(f"config key '{key}.kwargs.output_format': the reranking samples are built from "
                          f"'n-tuple' rows, got {fmt!r}; remove it")


def _check_data(raw, base_dir) -> DataConfig:
    """The ``data`` section: its own keys, then ``train``/``eval`` in any of their forms (multi.py), each
    spec completed from the section."""
    if isinstance(raw, dict):
        raw = dict(raw)
        train, ev = raw.pop("train", None), raw.pop("eval", None)
    else:
        train = ev = None
    d = from_dict(DataConfig, raw, "data")
    if d.format not in DATA_FORMATS:
        raise ConfigError(f"config key 'data.format': {d.format!r} is not supported; "
                          f"allowed values: {list(DATA_FORMATS)}")
    for k in ("max_train_rows", "max_eval_rows"):
        v = getattr(d, k)
        if v is not None and v < 1:
            raise ConfigError(f"config key 'data.{k}' must be >= 1, got {v}")
    return dataclasses.replace(d, train=multi.parse_datasets(train, "train", d, base_dir),
                               eval=multi.parse_datasets(ev, "eval", d, base_dir))


def loss_items(loss) -> list[tuple[str, LossConfig]]:
    """``[(config key, LossConfig)]``: ``[("loss", one)]``, or one ``("loss.NAME", ...)`` per dataset."""
    return [(f"loss.{n}", lo) for n, lo in loss.items()] if isinstance(loss, dict) else [("loss", loss)]


def prompt_columns(data: DataConfig, train: dict, evals: dict) -> tuple[dict, list]:
    """``(named, unnamed)`` for :func:`multi.check_prompts`: named datasets' ``{name: columns}`` (train and eval
    datasets of one name pool their columns) and the unnamed datasets' columns (None: not known yet)."""
    named, unnamed = {}, []
    for value, cols in ((data.train, train), (data.eval, evals)):
        if not isinstance(value, dict):
            unnamed += list(cols.values())
            continue
        for n, c in cols.items():
            both = named.get(n, ())
            named[n] = None if c is None or both is None else list(dict.fromkeys([*both, *c]))
    return named, unnamed


def load_config(path, overrides=()) -> RunConfig:
    """Read ``path`` (YAML), apply ``--set`` overrides, and check everything (see module docstring)."""
    raw = apply_overrides(read_yaml(path), overrides)
    return parse_config(raw, base_dir=os.path.dirname(os.path.abspath(os.fspath(path))))


def check_devices(cfg: RunConfig, device_count: int) -> dict:
    """The trainer's ``mesh_shape`` for this run; raises naming 'mesh' if it does not fit the devices."""
    try:
        return mesh_shape(cfg.mesh, device_count)
    except ValueError as e:
        raise ConfigError(str(e)) from None


__all__ = ["ConfigError", "TOPOLOGIES", "apply_overrides", "check_devices", "from_dict", "load_config", "parse_config"]
