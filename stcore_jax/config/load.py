"""YAML (plus ``--set key=value`` overrides) -> :class:`RunConfig`, with errors that name the key.

Checks, in order, before anything is loaded or compiled: unknown keys, value types, the
training arguments' own validation (the model family's class), the model section, data sources
(local paths must exist), loss / evaluator names and keyword arguments (of the model family),
hard-negative mining arguments and the mesh against its topology.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any

import yaml

from stcore_jax.config import catalogue
from stcore_jax.config.errors import ConfigError
from stcore_jax.config.schema import RunConfig
from stcore_jax.config.topology import TOPOLOGIES, get_topology, mesh_shape

DATA_FORMATS = ("auto", "stsb", "csv", "tsv", "json", "parquet", "hub", "quickstart")
DTYPES = ("float32", "bfloat16")
_SCALARS = {int: "int", float: "float", str: "str", bool: "bool", dict: "mapping", list: "list", tuple: "list"}


def _type_ok(value, tp) -> bool:
    """Whether ``value`` (parsed YAML) fits the annotation ``tp``."""
    if tp is Any or tp is typing.Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is not None:
        tp = origin
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp in (list, tuple):
        return isinstance(value, (list, tuple))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _describe(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    return _SCALARS.get(typing.get_origin(tp) or tp, getattr(tp, "__name__", str(tp)))


def from_dict(cls, data, key: str):
    """Build dataclass ``cls`` from a mapping, checking keys and types; nested dataclasses recurse."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key {key!r} must be a mapping of {cls.__name__} fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f"under {key!r}" if key else "at the top level"
        raise ConfigError(f"config key {_join(key, unknown[0])!r} is unknown; allowed keys {where}: {sorted(fields)}")
    values = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = from_dict(tp, value, _join(key, name))
            continue
        if isinstance(value, str) and not _type_ok(value, tp) and _type_ok(1.5, tp):
            value = _yaml11_float(value)  # YAML 1.1 reads "3e-5" (no dot) as a string
        if not _type_ok(value, tp):
            raise ConfigError(f"config key {_join(key, name)!r} must be {_describe(tp)}, got "
                              f"{type(value).__name__} {value!r}")
        values[name] = value
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"config key {key!r}: {e}") from None


def _yaml11_float(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _join(key, name):
    return f"{key}.{name}" if key else str(name)


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
    cfg = from_dict(RunConfig, raw, "")
    family = cfg.model.family
    arguments_class = catalogue.family_class(catalogue.ARGUMENTS, family)  # checks the family first
    cfg = dataclasses.replace(cfg, arguments=from_dict(arguments_class, args, "arguments"))
    if "mesh_shape" in args:
        raise ConfigError("config key 'arguments.mesh_shape': "
                          "set the layout in the 'mesh' section (data, fsdp, topology)")
    cfg = dataclasses.replace(cfg, model=_check_model(cfg.model))
    cfg = dataclasses.replace(cfg, data=_check_data(cfg.data, base_dir))
    catalogue.check_loss(cfg.loss.name, cfg.loss.kwargs, family=family, num_labels=cfg.model.num_labels)
    catalogue.check_evaluator(cfg.evaluator.name, cfg.evaluator.kwargs, family=family)
    _check_hard_negatives(cfg.data.hard_negatives, "data.hard_negatives")
    _check_evaluator_mining(cfg.evaluator)
    reads_rows = cfg.evaluator.name is not None and catalogue.evaluator_columns(family)[cfg.evaluator.name]
    if reads_rows and cfg.evaluator.data is None and cfg.data.eval is None:
        raise ConfigError("config key 'evaluator.data': the evaluator needs rows; set evaluator.data or data.eval")
    if cfg.evaluator.data is not None:
        cfg = dataclasses.replace(cfg, evaluator=dataclasses.replace(
            cfg.evaluator, data=_check_source(cfg.evaluator.data, cfg.data.format, "evaluator.data", base_dir)))
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


def _check_hard_negatives(hn, key: str) -> None:
    if hn.model is None:
        if hn.min_label is not None or hn.kwargs:
            raise ConfigError(f"config key '{key}.model': set the bi-encoder that mines the negatives (e.g. "
                              f"all-MiniLM-L6-v2), or remove {key}")
        return
    catalogue.check_mining(hn.kwargs, f"{key}.kwargs")


def _check_evaluator_mining(e, key: str = "evaluator.hard_negatives") -> None:
    """Mined evaluator rows become CrossEncoderRerankingEvaluator samples (n-tuples: query, positive, documents)."""
    _check_hard_negatives(e.hard_negatives, key)
    if e.hard_negatives.model is None:
        return
    if e.name != "CrossEncoderRerankingEvaluator":
        raise ConfigError(f"config key {key!r}: mined documents feed CrossEncoderRerankingEvaluator only, "
                          f"the evaluator is {e.name!r}; remove {key}")
    fmt = e.hard_negatives.kwargs.get("output_format", "n-tuple")
    if fmt != "n-tuple":
        raise ConfigError(f"config key '{key}.kwargs.output_format': the reranking samples are built from "
                          f"'n-tuple' rows, got {fmt!r}; remove it")


def _check_data(d, base_dir):
    if d.format not in DATA_FORMATS:
        raise ConfigError(f"config key 'data.format': {d.format!r} is not supported; "
                          f"allowed values: {list(DATA_FORMATS)}")
    for k in ("max_train_rows", "max_eval_rows"):
        v = getattr(d, k)
        if v is not None and v < 1:
            raise ConfigError(f"config key 'data.{k}' must be >= 1, got {v}")
    return dataclasses.replace(d, train=_check_source(d.train, d.format, "data.train", base_dir),
                               eval=_check_source(d.eval, d.format, "data.eval", base_dir))


def _check_source(src, fmt, key, base_dir):
    """A local source resolved against the config's directory; hub ids pass through."""
    if src is None or src == "quickstart" or fmt in ("hub", "quickstart"):
        return src
    path = os.path.expanduser(src)
    if not os.path.isabs(path) and base_dir and not os.path.exists(path):
        path = os.path.join(base_dir, path)
    if os.path.exists(path):
        return os.path.abspath(path)
    looks_like_hub_id = fmt == "auto" and src.count("/") == 1 and not src.startswith((".", "/", "~"))
    if looks_like_hub_id and not os.path.splitext(src)[1]:
        return src
    raise ConfigError(f"config key {key!r}: {src!r} does not exist; give a file (.csv/.tsv/.jsonl/.json/.parquet), "
                      "an STS-B directory, 'quickstart', or a hub dataset id with data.format: hub")


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
