"""The module protocol shared by every pipeline stage (Transformer, Pooling, Dense, Normalize, …).

A module is a plain Python object holding configuration and, if it has any, its parameters as a
nested dict of arrays (``module.params``). The forward pass is the pure method
``apply(params, features, *, dropout_key=None) -> features`` over a dict of arrays with the
sentence-transformers feature keys (``input_ids``, ``attention_mask``, ``token_type_ids``,
``token_embeddings``, ``sentence_embedding``, ``prompt_length``), so the whole pipeline can be
jitted, differentiated and sharded as one function of its parameters.
"""

from __future__ import annotations

import json
import os
from typing import Any

# Class name (the last component of a ``modules.json`` type path, legacy or 6.x) -> module class. Every
# subclass of :class:`Module` registers itself under its name and its ``type_aliases``; importing any
# ``stcore_jax.models`` submodule runs the package ``__init__``, which imports every module class.
MODULE_TYPES: dict[str, type] = {}


def module_class(type_path: str, where: str):
    """Our class for a ``modules.json`` / ``router_config.json`` type path; a clear error if unsupported."""
    name = str(type_path or "").rsplit(".", 1)[-1]
    if name not in MODULE_TYPES:
        raise ValueError(f"{where} has type {type_path!r}, which stcore_jax does not support; "
                         f"supported: {sorted(MODULE_TYPES)}")
    return MODULE_TYPES[name]


class Module:
    """Base class: subclasses set ``config_keys`` and implement ``apply``, ``save`` and ``load``."""

    config_keys: list[str] = []
    #: ``sentence_transformers.models.<name>`` type string used in ``modules.json``.
    st_type: str = ""
    #: other class names that load as this module (``Asym`` loads as a ``Router``).
    type_aliases: tuple[str, ...] = ()
    params: dict | None = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in (cls.__name__, *cls.type_aliases):
            MODULE_TYPES[name] = cls

    def apply(self, params, features: dict, *, dropout_key=None) -> dict:
        raise NotImplementedError

    def __call__(self, features: dict, *, dropout_key=None) -> dict:
        return self.apply(self.params, features, dropout_key=dropout_key)

    def get_config_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.config_keys}

    def get_embedding_dimension(self) -> int | None:
        return None

    def save(self, path: str) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, path: str, **kwargs) -> Module:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.get_config_dict()})"


def write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def ensure_dir(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path
