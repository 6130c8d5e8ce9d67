"""Loss and evaluator names a config may use, with their keyword arguments checked by signature.

Everything here runs before a model is loaded: a config naming an unknown loss, or giving a loss a
keyword its constructor does not take, fails with the key and the allowed values.
"""

from __future__ import annotations

import inspect

from stcore_jax.config.errors import ConfigError

import stcore_jax.evaluation as evaluation
import stcore_jax.losses as losses

# Evaluators a config can feed from rows: name -> the constructor's positional column arguments.
EVALUATOR_COLUMNS = {
    "EmbeddingSimilarityEvaluator": ("sentences1", "sentences2", "scores"),
    "BinaryClassificationEvaluator": ("sentences1", "sentences2", "labels"),
    "TripletEvaluator": ("anchors", "positives", "negatives"),
}
# Constructor arguments a config never sets (the model, or what the trainer decides).
_INTERNAL = {"self", "model", "num_shards", "args", "kwargs"}


def loss_classes() -> dict:
    return {n: getattr(losses, n) for n in losses.__all__
            if inspect.isclass(getattr(losses, n)) and issubclass(getattr(losses, n), losses.Loss)}


def _params(cls) -> dict:
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n not in _INTERNAL and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def check_loss(name, kwargs: dict, key: str = "loss") -> None:
    """Raise ValueError naming ``key`` if ``name``/``kwargs`` do not describe a known loss."""
    classes = loss_classes()
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
                check_loss(v["name"], inner.get("kwargs", inner), f"{key}.kwargs.loss")
            else:
                raise ConfigError(f"config key '{key}.kwargs.{k}': a model argument cannot come from a config; "
                                 "use the Python API for losses that need a second model")
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"config key '{key}.kwargs': {name} needs {missing}")


def build_loss(model, name: str, kwargs: dict):
    """The loss object for a checked config (nested ``loss`` built first)."""
    kwargs = dict(kwargs)
    if "loss" in kwargs:
        inner = {a: b for a, b in kwargs["loss"].items() if a != "name"}
        kwargs["loss"] = build_loss(model, kwargs["loss"]["name"], inner.get("kwargs", inner))
    return loss_classes()[name](model, **kwargs)


def check_evaluator(name, kwargs: dict, key: str = "evaluator") -> None:
    if name is None:
        return
    if name not in EVALUATOR_COLUMNS:
        raise ConfigError(f"config key '{key}.name': unknown evaluator {name!r}; allowed values: "
                         f"{sorted(EVALUATOR_COLUMNS)} (or null for none)")
    cls = getattr(evaluation, name)
    params = {n for n in _params(cls) if n not in EVALUATOR_COLUMNS[name]}
    for k in kwargs:
        if k not in params:
            raise ConfigError(f"config key '{key}.kwargs.{k}': {name} has no argument {k!r}; allowed: {sorted(params)}")


def build_evaluator(name: str, columns: list, kwargs: dict):
    """``columns``: the row lists in the order of ``EVALUATOR_COLUMNS[name]``."""
    return getattr(evaluation, name)(*columns, **kwargs)
