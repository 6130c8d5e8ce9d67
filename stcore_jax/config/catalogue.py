"""Loss and evaluator names a config may use, keyed by model family and name, with their keyword arguments
checked by signature.

Everything here runs before a model is loaded: a config naming an unknown loss, or giving a loss a
keyword its constructor does not take, fails with the key and the allowed values. Families share names
(the CrossEncoder's ``MultipleNegativesRankingLoss`` is not the bi-encoder's), so every lookup is
``(family, name)``; ``model.family`` in the config picks the family (default ``sentence_transformer``).
"""

from __future__ import annotations

import importlib
import inspect

from stcore_jax.config.errors import ConfigError

# family -> its package: ``<package>.losses`` and ``<package>.evaluation`` are imported when first needed.
FAMILIES = {"sentence_transformer": "stcore_jax.sentence_transformer"}
DEFAULT_FAMILY = "sentence_transformer"

# Evaluators a config can feed from rows: name -> the constructor's positional column arguments.
EVALUATOR_COLUMNS = {
    "EmbeddingSimilarityEvaluator": ("sentences1", "sentences2", "scores"),
    "BinaryClassificationEvaluator": ("sentences1", "sentences2", "labels"),
    "TripletEvaluator": ("anchors", "positives", "negatives"),
}
# Constructor arguments a config never sets (the model, or what the trainer decides).
_INTERNAL = {"self", "model", "num_shards", "args", "kwargs"}


def family_module(family: str, what: str):
    """``<family package>.<what>`` (``losses`` or ``evaluation``), or a ConfigError naming the families."""
    if family not in FAMILIES:
        raise ConfigError(f"config key 'model.family': unknown model family {family!r}; "
                          f"allowed values: {sorted(FAMILIES)}")
    return importlib.import_module(f"{FAMILIES[family]}.{what}")


def loss_classes(family: str = DEFAULT_FAMILY) -> dict:
    """``{name: class}`` of the losses a config of ``family`` may name."""
    from stcore_jax.base.loss import Loss

    losses = family_module(family, "losses")
    return {n: getattr(losses, n) for n in losses.__all__
            if inspect.isclass(getattr(losses, n)) and issubclass(getattr(losses, n), Loss)}


def evaluator_columns(family: str = DEFAULT_FAMILY) -> dict:
    """Evaluators a config of ``family`` can feed from rows: name -> positional column arguments."""
    family_module(family, "evaluation")  # the family check
    return EVALUATOR_COLUMNS if family == "sentence_transformer" else {}


def _params(cls) -> dict:
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n not in _INTERNAL and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_loss(name, kwargs: dict, key: str = "loss", family: str = DEFAULT_FAMILY) -> None:
    """Raise ValueError naming ``key`` if ``name``/``kwargs`` do not describe a known loss of ``family``."""
    classes = loss_classes(family)
    if not isinstance(name, str) or name not in classes:
        raise ConfigError(f"config key '{key}.name': unknown loss {name!r}; allowed values: {sorted(classes)}")
    params = _params(classes[name])
    for k, v in kwargs.items():
        if k not in params:
            raise ConfigError(f"config key '{key}.kwargs.{k}': {name} has no argument {k!r}; "
                             f"allowed: {sorted(params)}")
        if k in ("loss", "guide", "teacher"):
            if k == "loss":
                if not isinstance(v, dict) or "name" not in v:
                    raise ConfigError(f"config key '{key}.kwargs.loss' must be a mapping with a 'name' "
                                     f"(the inner loss), e.g. {{name: MultipleNegativesRankingLoss}}")
                inner = {a: b for a, b in v.items() if a != "name"}
                check_loss(v["name"], inner.get("kwargs", inner), f"{key}.kwargs.loss", family)
            else:
                raise ConfigError(f"config key '{key}.kwargs.{k}': a model argument cannot come from a config; "
                                 "use the Python API for losses that need a second model")
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"config key '{key}.kwargs': {name} needs {missing}")


def build_loss(model, name: str, kwargs: dict, family: str = DEFAULT_FAMILY):
    """The loss object for a checked config (nested ``loss`` built first)."""
    kwargs = dict(kwargs)
    if "loss" in kwargs:
        inner = {a: b for a, b in kwargs["loss"].items() if a != "name"}
        kwargs["loss"] = build_loss(model, kwargs["loss"]["name"], inner.get("kwargs", inner), family)
    return loss_classes(family)[name](model, **kwargs)


def check_evaluator(name, kwargs: dict, key: str = "evaluator", family: str = DEFAULT_FAMILY) -> None:
    if name is None:
        return
    columns = evaluator_columns(family)
    if name not in columns:
        raise ConfigError(f"config key '{key}.name': unknown evaluator {name!r}; allowed values: "
                         f"{sorted(columns)} (or null for none)")
    cls = getattr(family_module(family, "evaluation"), name)
    params = {n for n in _params(cls) if n not in columns[name]}
    for k in kwargs:
        if k not in params:
            raise ConfigError(f"config key '{key}.kwargs.{k}': {name} has no argument {k!r}; allowed: {sorted(params)}")


def build_evaluator(name: str, columns: list, kwargs: dict, family: str = DEFAULT_FAMILY):
    """``columns``: the row lists in the order of ``evaluator_columns(family)[name]``."""
    return getattr(family_module(family, "evaluation"), name)(*columns, **kwargs)
