"""A YAML mapping -> a config dataclass, checking keys and value types; every error names the key's dotted path."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from stcore_jax.config.errors import ConfigError

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
