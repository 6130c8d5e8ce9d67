"""Router: one sub-pipeline per task (sentence-transformers ``Router``, the successor of ``Asym``).

``Router({"query": [...], "document": [...]})`` sends each batch through the module list of the route
its task resolves to. The choice is static: the task travels in the features as
``features["task"] = Task("query")``, a pytree node without leaves, so it survives ``device_put``,
``jit`` arguments, ``tree_map`` and the modules' ``dict(features)`` copies, and ``jit`` traces one
program per task instead of running every route and selecting.

Parameters: ``router.params = {module_id: params}``, one entry per distinct module object, keyed by
the id it is saved under (``"{route}_{position}_{ClassName}"`` of its first appearance), so a module
shared by two routes (e.g. one Transformer under two Dense heads) is one set of weights in training
too.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import logging
import os

import jax

from stcore_jax.models.layers import fold
from stcore_jax.models.module import Module, ensure_dir, read_json, write_json

logger = logging.getLogger(__name__)

CONFIG_NAME = "router_config.json"
# The only modality stcore_jax encodes; the reference infers "text" for string inputs and routes on it.
TEXT = "text"


@dataclasses.dataclass(frozen=True)
class Task:
    """A Router task name carried in features: static pytree metadata, never an array."""

    name: str


jax.tree_util.register_static(Task)


def task_name(value) -> str | None:
    """``features["task"]`` (a :class:`Task`, a plain string outside ``jit``, or None) -> the name."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Task):
        return value.name
    raise TypeError(f"features['task'] must be a Task or a str, got {type(value).__name__}")


def with_task(features: dict, task: str | None) -> dict:
    """A copy of ``features`` that carries ``task`` (unchanged when ``task`` is None)."""
    if task is None:
        return features
    return {**features, "task": Task(str(task))}


def _mapping_key(key):
    """``(task, modality)`` with a tuple modality sorted, as the reference normalises it."""
    task, modality = key
    return task, tuple(sorted(modality)) if isinstance(modality, (tuple, list)) else modality


def _check_module_id(module_id: str, where: str) -> None:
    parts = module_id.replace("\\", "/").split("/")
    if not module_id or os.path.isabs(module_id) or ".." in parts or len(parts) > 1:
        raise ValueError(f"{where}: module id {module_id!r} is not a plain folder name inside the model directory")


class Router(Module):
    """``Router(sub_modules, default_route=None, allow_empty_key=True, route_mappings=None)``.

    Args:
      sub_modules: ``{route: [module, ...]}``; each route is applied in order. The same module object
        may appear in several routes (its parameters are shared).
      default_route: the route for inputs without a task; with ``allow_empty_key`` and no default,
        the first route.
      route_mappings: ``{(task, modality): route}`` with ``None`` as a wildcard (modality is always
        ``"text"`` here). Lookup order: ``(task, text)``, ``(task, None)``, ``(None, text)``,
        ``(None, None)``, a route named like the task, a route named ``"text"``, ``default_route``.
    """

    config_keys = ["default_route", "allow_empty_key", "route_mappings"]
    st_type = "sentence_transformers.models.Router"
    type_aliases = ("Asym",)  # the legacy name's modules.json entries load as a Router
    forward_kwargs = ["task"]

    def __init__(self, sub_modules: dict, default_route: str | None = None, allow_empty_key: bool = True,
                 route_mappings: dict | None = None):
        if not isinstance(sub_modules, dict) or not sub_modules:
            raise ValueError("Router needs a non-empty dict {route: [modules]} as sub_modules")
        if default_route is not None and default_route not in sub_modules:
            raise ValueError(f"Router: default_route {default_route!r} is not one of the routes {list(sub_modules)}")
        self.modules: dict[str, Module] = {}  # module id -> module (each distinct object once)
        self.structure: dict[str, list[str]] = {}  # route -> module ids, in order
        ids_by_object = {}
        for route, mods in sub_modules.items():
            if not isinstance(route, str) or not route:
                raise ValueError(f"Router: route names must be non-empty strings, got {route!r}")
            if isinstance(mods, Module):
                mods = [mods]
            if not mods:
                raise ValueError(f"Router: route {route!r} has no modules")
            self.structure[route] = []
            for pos, m in enumerate(mods):
                if not isinstance(m, Module):
                    raise ValueError(f"Router: route {route!r} position {pos} is a {type(m).__name__}, not a "
                                     "stcore_jax module (Transformer, StaticEmbedding, Pooling, Dense, Normalize, ...)")
                mid = ids_by_object.get(id(m))
                if mid is None:
                    mid = ids_by_object[id(m)] = f"{route}_{pos}_{type(m).__name__}"
                    self.modules[mid] = m
                self.structure[route].append(mid)
        mappings = {}
        for key, target in (route_mappings or {}).items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"Router: route_mappings keys are (task, modality) pairs, got {key!r}")
            if target not in self.structure:
                raise ValueError(f"Router: route_mappings maps {key!r} to {target!r}, which is not one of the routes "
                                 f"{list(self.structure)}")
            mappings[_mapping_key(key)] = target
        if allow_empty_key and default_route is None:
            default_route = next(iter(self.structure))
        self.default_route = default_route
        self.allow_empty_key = bool(allow_empty_key)
        self.route_mappings = mappings

    @classmethod
    def for_query_document(cls, query_modules, document_modules, default_route: str | None = "document",
                           allow_empty_key: bool = True) -> Router:
        """A Router with ``"query"`` and ``"document"`` routes (``encode_query`` / ``encode_document``)."""
        return cls({"query": list(query_modules), "document": list(document_modules)}, default_route=default_route,
                   allow_empty_key=allow_empty_key)

    @property
    def sub_modules(self) -> dict[str, list[Module]]:
        return {route: [self.modules[m] for m in ids] for route, ids in self.structure.items()}

    # -- routing -------------------------------------------------------------------------------
    def _routes_string(self) -> str:
        names = [f"task={r!r}" for r in self.structure]
        names += [f"(task={t!r}, modality={m!r})" for t, m in self.route_mappings]
        return ", ".join(names)

    def resolve_route(self, task: str | None = None, modality=TEXT) -> str:
        """The route for ``task`` (reference lookup order); raises ValueError naming the routes."""
        modality = tuple(sorted(modality)) if isinstance(modality, (tuple, list)) else modality
        for key in ((task, modality), (task, None), (None, modality), (None, None)):
            if key in self.route_mappings:
                return self.route_mappings[key]
        if task and task in self.structure:
            return task
        if isinstance(modality, str) and modality in self.structure:
            return modality
        if task is not None:
            raise ValueError(f"Router: no route for task {task!r}. Available routes: {self._routes_string()}")
        if self.default_route is None:
            raise ValueError(f"Router: no task given and no default_route. Pass task=... to encode (available: "
                             f"{self._routes_string()}), set router_mapping in the training arguments, or create the "
                             "Router with a default_route")
        return self.default_route

    def route_modules(self, task: str | None = None) -> list[Module]:
        return [self.modules[m] for m in self.structure[self.resolve_route(task)]]

    def input_module_for(self, task: str | None = None) -> Module:
        """The first module of ``task``'s route: it tokenizes that route's inputs."""
        return self.route_modules(task)[0]

    # -- forward -------------------------------------------------------------------------------
    def apply(self, params, features, *, dropout_key=None, task=None, output_hidden_states=False):
        """Run the route of ``task`` (default: ``features["task"]``); module ``j`` of the route gets the
        dropout key ``fold(dropout_key, j)``, as modules of a plain pipeline do."""
        task = task if task is not None else task_name(features.get("task"))
        for pos, mid in enumerate(self.structure[self.resolve_route(task)]):
            m = self.modules[mid]
            p = params.get(mid) if m.params is not None else None
            if pos == 0 and output_hidden_states:
                features = m.apply(p, features, dropout_key=fold(dropout_key, pos), output_hidden_states=True)
            else:
                features = m.apply(p, features, dropout_key=fold(dropout_key, pos))
        return features

    @property
    def params(self) -> dict:
        return {mid: m.params for mid, m in self.modules.items() if m.params is not None}

    @params.setter
    def params(self, value: dict):
        for mid, p in value.items():
            self.modules[mid].params = p

    # -- input-module surface (delegated to the route's first module) -----------------------------
    def _input_modules(self) -> list[Module]:
        seen, out = set(), []
        for ids in self.structure.values():
            if ids[0] not in seen:
                seen.add(ids[0])
                out.append(self.modules[ids[0]])
        return out

    def tokenize_ids(self, texts, task: str | None = None):
        return self.input_module_for(task).tokenize_ids(texts)

    def pad(self, ids, length: int, batch_size: int, task: str | None = None):
        return self.input_module_for(task).pad(ids, length, batch_size)

    def tokenize(self, texts, task: str | None = None, length: int | None = None):
        return self.input_module_for(task).tokenize(texts, length=length)

    @property
    def tokenizer(self):
        return next((m.tokenizer for m in self._input_modules() if getattr(m, "tokenizer", None) is not None), None)

    @property
    def max_seq_length(self) -> int | None:
        lengths = {m.max_seq_length for m in self._input_modules() if getattr(m, "max_seq_length", None)}
        if len(lengths) > 1 and not getattr(self, "_warned_lengths", False):
            self._warned_lengths = True  # read on every encode; say it once
            logger.warning("Router: routes have different max_seq_length %s; using the largest", sorted(lengths))
        return max(lengths) if lengths else None

    @max_seq_length.setter
    def max_seq_length(self, value):
        for m in self._input_modules():
            if hasattr(m, "max_seq_length"):
                m.max_seq_length = int(value)

    def with_compute_dtype(self, dtype) -> Router:
        """A shallow copy whose sub-modules compute in ``dtype`` (the trainer's ``bf16`` view); parameters
        and the route structure are shared, so a module shared by two routes stays one module."""
        converted = {mid: m.with_compute_dtype(dtype) if hasattr(m, "with_compute_dtype") else m
                     for mid, m in self.modules.items()}
        if all(converted[mid] is m for mid, m in self.modules.items()):
            return self
        out = copy.copy(self)
        out.modules = converted
        return out

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        for m in self.modules.values():
            if hasattr(m, "set_gradient_checkpointing"):
                m.set_gradient_checkpointing(enabled)

    def get_embedding_dimension(self):
        dims = []
        for ids in self.structure.values():
            dim = next((d for d in (self.modules[m].get_embedding_dimension() for m in reversed(ids)) if d is not None),
                       None)
            if dim is not None:
                dims.append(dim)
        if len(set(dims)) > 1:
            logger.warning("Router: routes give different embedding dimensions %s; using the first", dims)
        return dims[0] if dims else None

    # -- save / load ---------------------------------------------------------------------------
    def check_export(self) -> None:
        """Raise before anything is written if a route cannot be saved in the reference layout."""
        from stcore_jax.models.pooling import Pooling

        for route, ids in self.structure.items():
            for pos, mid in enumerate(ids):
                m = self.modules[mid]
                if not m.st_type:
                    raise ValueError(f"save_pretrained: Router route {route!r} module {pos} ({type(m).__name__}) has "
                                     "no sentence-transformers type")
                if isinstance(m, Router):
                    raise ValueError(f"save_pretrained: Router route {route!r} contains another Router")
                if isinstance(m, Pooling):
                    m.legacy_config()
                if pos > 0 and hasattr(m, "tokenize_ids"):
                    raise ValueError(f"save_pretrained: Router route {route!r} has an input module "
                                     f"({type(m).__name__}) at position {pos}; it must come first")

    def get_config_dict(self) -> dict:
        cfg = {"default_route": self.default_route, "allow_empty_key": self.allow_empty_key}
        if self.route_mappings:  # a 6.x key: releases 5.x reject it, so only written when used
            cfg["route_mappings"] = {str(k): v for k, v in self.route_mappings.items()}
        return cfg

    def save(self, path, params=None):
        ensure_dir(path)
        for mid, m in self.modules.items():
            m.save(os.path.join(path, mid))
        write_json(os.path.join(path, CONFIG_NAME), {
            "types": {mid: m.st_type for mid, m in self.modules.items()},
            "structure": {route: list(ids) for route, ids in self.structure.items()},
            "parameters": self.get_config_dict(),
        })

    @classmethod
    def load(cls, path, **kwargs):
        """Read ``router_config.json`` (or a legacy ``Asym`` ``config.json``) and each module's folder."""
        from stcore_jax.models.module import module_class

        cfg_path = os.path.join(path, CONFIG_NAME)
        if not os.path.isfile(cfg_path):
            cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"Router: no {CONFIG_NAME} (or legacy config.json) in {path!r}")
        cfg = read_json(cfg_path)
        for key in ("types", "structure"):
            if not isinstance(cfg.get(key), dict):
                raise ValueError(f"{cfg_path}: missing or malformed {key!r}; expected a Router config with 'types', "
                                 "'structure' and 'parameters'")
        classes = {}
        for mid, type_path in cfg["types"].items():  # validate everything before loading any weights
            _check_module_id(mid, cfg_path)
            classes[mid] = module_class(type_path, where=f"{cfg_path}: module {mid!r}")
        for route, ids in cfg["structure"].items():
            missing = [m for m in ids if m not in classes]
            if missing:
                raise ValueError(f"{cfg_path}: route {route!r} lists modules {missing} that are not in 'types'")
        modules = {mid: c.load(os.path.join(path, mid), **kwargs) for mid, c in classes.items()}
        params = dict(cfg.get("parameters") or {})
        mappings = {}
        for key, target in (params.pop("route_mappings", None) or {}).items():
            try:
                mappings[ast.literal_eval(key) if isinstance(key, str) else tuple(key)] = target
            except (ValueError, SyntaxError):
                logger.warning("%s: cannot parse route_mappings key %r; skipped", cfg_path, key)
        unknown = set(params) - {"default_route", "allow_empty_key"}
        if unknown:
            raise ValueError(f"{cfg_path}: unknown Router parameters {sorted(unknown)}")
        return cls({route: [modules[m] for m in ids] for route, ids in cfg["structure"].items()},
                   route_mappings=mappings or None, **params)

    def __repr__(self):
        routes = ", ".join(f"{r}: [{', '.join(type(self.modules[m]).__name__ for m in ids)}]"
                           for r, ids in self.structure.items())
        return f"Router({{{routes}}}, default_route={self.default_route!r})"


Asym = Router  # the reference keeps the legacy name as an alias
