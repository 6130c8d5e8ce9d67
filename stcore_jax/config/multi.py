"""Several datasets and losses in one config: the three forms of ``data.train`` / ``data.eval`` (a source, one
dataset spec, named datasets), ``loss`` (one for every dataset, or one per training dataset) and
``arguments.prompts`` keyed by dataset, told apart and checked before anything loads.

How a mapping is read (documented for users in :class:`~stcore_jax.config.schema.DataConfig`):

- ``data.train: {path: ..., split: ...}``: any :data:`~stcore_jax.config.schema.DATASET_KEYS` key makes the
  mapping one dataset; other keys beside them are refused (they would be dataset names, which cannot be
  spec keys);
- ``data.train: {nli: ..., stsb: ...}``: otherwise the keys are dataset names, each mapped to a source or a
  spec;
- ``loss: {name: ..., kwargs: ...}`` is one loss for every dataset; ``loss: {nli: {name: ...}, ...}`` (no
  ``name``/``kwargs`` key, every value a mapping) is one loss per training dataset, which must name exactly
  ``data.train``'s datasets.
"""

from __future__ import annotations

import dataclasses
import os

from stcore_jax.config import catalogue
from stcore_jax.config.errors import ConfigError
from stcore_jax.config.fields import from_dict
from stcore_jax.config.schema import DATASET_KEYS, DataConfig, DatasetConfig, HardNegativesConfig, LossConfig

DATA_FORMATS = ("auto", "stsb", "csv", "tsv", "json", "parquet", "hub", "quickstart")
LOSS_KEYS = tuple(f.name for f in dataclasses.fields(LossConfig))
_FORMS = ("a source (a file, an STS-B directory, 'quickstart' or a hub id), one dataset {path: ..., split: ...} "
          "or named datasets {NAME: source or {path: ...}, ...}")


def check_source(src, fmt, key, base_dir):
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


def check_hard_negatives(hn, key: str) -> None:
    if hn.model is None:
        if hn.min_label is not None or hn.kwargs:
            raise ConfigError(f"config key '{key}.model': set the bi-encoder that mines the negatives (e.g. "
                              f"all-MiniLM-L6-v2), or remove {key}")
        return
    catalogue.check_mining(hn.kwargs, f"{key}.kwargs")


# -- data.train / data.eval ---------------------------------------------------------------------------
def parse_datasets(value, which: str, data: DataConfig, base_dir):
    """``data.<which>`` checked: a source (resolved path), a :class:`DatasetConfig` or ``{name: DatasetConfig}``,
    every spec complete (the section's values filled in)."""
    key = f"data.{which}"
    if value is None:
        return None
    if isinstance(value, str):
        return check_source(value, data.format, key, base_dir)
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"config key {key!r} must be {_FORMS}, got {type(value).__name__} {value!r}")
    spec_keys = [k for k in value if k in DATASET_KEYS]
    if not spec_keys:
        return {_dataset_name(n, key): _entry(v, which, data, f"{key}.{n}", base_dir) for n, v in value.items()}
    others = [k for k in value if k not in DATASET_KEYS]
    if others:
        raise ConfigError(f"config key {key!r} mixes one dataset's keys {spec_keys} with other keys {others}: give "
                          f"one dataset (allowed keys under {key!r}: {sorted(DATASET_KEYS)}) or named datasets "
                          f"{{NAME: source or {{path: ...}}}}, whose names cannot be those keys")
    named = [k for k in spec_keys if k != "hard_negatives" and isinstance(value[k], dict)]
    if named:
        raise ConfigError(f"config key '{key}.{named[0]}': a dataset cannot be named {named[0]!r}, a dataset spec key "
                          f"({sorted(DATASET_KEYS)}); rename it")
    return _entry(value, which, data, key, base_dir)


def _dataset_name(name, key: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"config key {key!r}: dataset names must be non-empty strings, got {name!r}")
    return name


def _entry(raw, which: str, data: DataConfig, key: str, base_dir) -> DatasetConfig:
    """One dataset: a source string or a spec mapping, its unset keys from the ``data`` section."""
    path_key = key if isinstance(raw, str) else f"{key}.path"
    if isinstance(raw, str):
        raw = {"path": raw}
    if not isinstance(raw, dict):
        raise ConfigError(f"config key {key!r} must be a source (str) or a mapping of dataset keys "
                          f"{sorted(DATASET_KEYS)}, got {type(raw).__name__} {raw!r}")
    raw = dict(raw)
    hn = raw.pop("hard_negatives", None)  # null: the section's; {}: none
    entry = from_dict(DatasetConfig, raw, key)
    if hn is not None:
        if which != "train":
            raise ConfigError(f"config key '{key}.hard_negatives': negatives are mined for training datasets; mine "
                              f"evaluation rows with evaluator.hard_negatives")
        entry = dataclasses.replace(entry, hard_negatives=from_dict(HardNegativesConfig, hn, f"{key}.hard_negatives"))
        check_hard_negatives(entry.hard_negatives, f"{key}.hard_negatives")
    if not entry.path:
        raise ConfigError(f"config key '{key}.path' is required: a file, an STS-B directory, 'quickstart' or a hub "
                          f"dataset id")
    entry = data.spec(which, entry)
    if entry.format not in DATA_FORMATS:
        raise ConfigError(f"config key '{key}.format': {entry.format!r} is not supported; "
                          f"allowed values: {list(DATA_FORMATS)}")
    if entry.max_rows is not None and entry.max_rows < 1:
        raise ConfigError(f"config key '{key}.max_rows' must be >= 1, got {entry.max_rows}")
    return dataclasses.replace(entry, path=check_source(entry.path, entry.format, path_key, base_dir))


# -- loss ---------------------------------------------------------------------------------------------
def is_per_dataset_loss(raw) -> bool:
    """``{dataset: {name: ...}, ...}``: a non-empty mapping without LossConfig keys whose values are mappings."""
    return (isinstance(raw, dict) and bool(raw) and not set(raw) & set(LOSS_KEYS)
            and all(isinstance(v, dict) for v in raw.values()))


def parse_loss(raw, train: dict, train_is_dict: bool):
    """``loss`` checked for its form: a :class:`LossConfig` (every dataset), or ``{name: LossConfig}`` naming
    exactly the training datasets (``train``: their specs)."""
    if not is_per_dataset_loss(raw):
        if isinstance(raw, dict) and set(raw) & set(LOSS_KEYS) and set(raw) & set(train):
            raise ConfigError(f"config key 'loss' mixes one loss's keys {sorted(set(raw) & set(LOSS_KEYS))} with "
                              f"dataset names {sorted(set(raw) & set(train))}: give one loss {{name: ..., kwargs: "
                              f"...}} for every dataset, or one per dataset {{NAME: {{name: ...}}, ...}}")
        return from_dict(LossConfig, raw, "loss")
    if not train_is_dict:
        raise ConfigError(f"config key 'loss' is keyed by dataset names {list(raw)}, but data.train is not several "
                          f"named datasets; name them (data.train: {{NAME: source, ...}}), or give one loss (allowed "
                          f"keys under 'loss': {sorted(LOSS_KEYS)})")
    missing = [n for n in train if n not in raw]
    extra = [n for n in raw if n not in train]
    if missing or extra:
        parts = ([f"datasets {missing} have no loss"] if missing else []) + (
            [f"{extra} are not datasets of data.train"] if extra else [])
        raise ConfigError(f"config key 'loss': one loss per training dataset, but {' and '.join(parts)} (data.train "
                          f"has {list(train)}); give each exactly one loss, or one loss {{name: ...}} for all")
    return {n: from_dict(LossConfig, v, f"loss.{n}") for n, v in raw.items()}


def check_eval_losses(loss, eval_specs: dict, eval_is_dict: bool, evaluates: bool) -> None:
    """The trainer computes each eval dataset's loss with the loss of the same name: with per-dataset losses,
    evaluated datasets must carry training datasets' names (``evaluates``: eval_strategy is not 'no')."""
    if not isinstance(loss, dict) or not evaluates or not eval_specs:
        return
    if not eval_is_dict:
        raise ConfigError(f"config key 'data.eval': the losses are per dataset (loss: {list(loss)}), so the eval loss "
                          f"needs named eval datasets with those names (data.eval: {{NAME: source}}); or set "
                          f"arguments.eval_strategy: 'no' and evaluate with the evaluator")
    unknown = [n for n in eval_specs if n not in loss]
    if unknown:
        raise ConfigError(f"config key 'data.eval': eval datasets {unknown} have no loss (the losses are per "
                          f"dataset: {list(loss)}); name each eval dataset after the training dataset whose loss it "
                          f"is scored with")


# -- arguments.prompts ----------------------------------------------------------------------------------
def check_prompts(prompts, named: dict, unnamed: list, key: str = "arguments.prompts") -> None:
    """Every key of a ``prompts`` mapping must be used: ``{dataset: prompt or {column: prompt}}`` names one of
    the ``named`` datasets (name -> its columns), ``{column: prompt}`` a column of any dataset (``unnamed``: the
    columns of the datasets not given names). Columns None: not known yet (checked again once rows load)."""
    if not isinstance(prompts, dict):
        return
    every = [*named.values(), *unnamed]
    known = list(dict.fromkeys(c for cols in every if cols is not None for c in cols))
    for k, v in prompts.items():
        if isinstance(v, dict):
            if k not in named:
                where = f"the named datasets are {list(named)}" if named else "data.train is not named datasets"
                raise ConfigError(f"config key '{key}.{k}': a mapping is one dataset's {{column: prompt}}, but {k!r} "
                                  f"is not a dataset name ({where})")
            for c, p in v.items():
                cols = named[k]
                if cols is not None and c not in cols:
                    raise ConfigError(f"config key '{key}.{k}.{c}' is unknown; allowed keys under '{key}.{k}' (the "
                                      f"columns of dataset {k!r}): {list(cols)}")
                if not isinstance(p, str):
                    raise ConfigError(f"config key '{key}.{k}.{c}' must be str, got {type(p).__name__} {p!r}")
        elif not isinstance(v, str):
            raise ConfigError(f"config key '{key}.{k}' must be str (a prompt) or a mapping {{column: prompt}}, got "
                              f"{type(v).__name__} {v!r}")
        elif k not in named and k not in known and all(cols is not None for cols in every):
            raise ConfigError(f"config key '{key}.{k}' is unknown (not a dataset name or a column); allowed keys under "
                              f"{key!r}: {[*named, *known]}")
