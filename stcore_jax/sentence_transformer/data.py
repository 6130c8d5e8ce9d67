"""Datasets -> validated, tokenized columns -> fixed-shape batches (sentence-transformers data rules).

Rules (SPEC §2): the first of ``label``/``labels``/``score``/``scores`` is the label; every other
column is an input, in column order; ``dataset_name`` and ``return_loss`` are reserved. Everything
is checked here, before anything is compiled: empty datasets, column count and label against the loss,
None/empty texts, non-numeric and NaN labels, labels outside the range the loss can use (each error names
the dataset, column and row).

Batches have static shapes: ``[global_batch, bucket_length]`` per column, the same bucket for all
columns of a batch, rows past the end of a partial batch padded and flagged in ``mask``. With sequence
packing (:func:`collate_packed`) the sentences of all columns sit end to end in ``[shards, rows,
row_length]`` arrays instead (models/packing.py).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings

import numpy as np

from stcore_jax.batching.buckets import bucket_for
from stcore_jax.batching.packing import pack_shard, shard_sequences
from stcore_jax.models.router import Task

LABEL_COLUMNS = ("label", "labels", "score", "scores")
RESERVED_COLUMNS = ("dataset_name", "return_loss")
_ORDER_HINTS = {
    "anchor": 0, "positive": 1, "negative": 2, "question": 0, "answer": 1, "query": 0, "response": 1,
    "hypothesis": 0, "entailment": 1, "contradiction": 2,
}


@dataclasses.dataclass
class PreparedDataset:
    """One dataset, validated and tokenized: what the batch builder needs."""

    name: str
    columns: list[str]  # input columns, in order
    label_column: str | None
    labels: np.ndarray | None  # [N] or [N, k]
    token_ids: list[dict]  # per column: {"input_ids": [[...]], "token_type_ids": [[...]]?}
    prompt_lengths: list[int | None]  # per column
    texts: list[list[str]]  # per column (for NO_DUPLICATES and error reports)
    hf_dataset: object
    tasks: list = dataclasses.field(default_factory=list)  # per column: Router task from router_mapping, or None
    input_modules: list = dataclasses.field(default_factory=list)  # per column: the module that tokenized it

    def __len__(self):
        return len(self.texts[0]) if self.texts else 0


def label_column(column_names) -> str | None:
    return next((c for c in LABEL_COLUMNS if c in column_names), None)


def input_columns(column_names) -> list[str]:
    lab = label_column(column_names)
    return [c for c in column_names if c != lab]


def _warn_order(name, columns):
    for i, c in enumerate(columns):
        want = _ORDER_HINTS.get(c.lower())
        if want is not None and want != i:
            warnings.warn(
                f"Dataset {name!r}: column {c!r} is input {i}, but that name usually comes at position {want}. "
                f"Columns are used in order {columns}; reorder them with dataset.select_columns([...]) if that "
                "is not intended.",
                stacklevel=3,
            )
            break
    for c in columns:
        if c == "id" or c.endswith(("_id", "_ids", "_idx")):
            warnings.warn(f"Dataset {name!r}: column {c!r} looks like an ID column, but it is being trained as text.",
                          stacklevel=3)


def resolve_prompt(prompts, dataset_name: str | None, column: str, is_dict_dataset: bool):
    """The prompt for one (dataset, column) under the four ``prompts`` forms (SPEC §2)."""
    if prompts is None:
        return None
    if isinstance(prompts, str):
        return prompts
    if not isinstance(prompts, dict):
        raise ValueError(f"prompts must be a str or a dict, got {type(prompts).__name__}")
    if any(isinstance(v, dict) for v in prompts.values()) and not is_dict_dataset:
        raise ValueError("prompts of the form {dataset: {column: prompt}} need a DatasetDict / dict of datasets")
    if is_dict_dataset and dataset_name in prompts:
        v = prompts[dataset_name]
        return v if isinstance(v, str) else v.get(column)
    v = prompts.get(column)
    return v if isinstance(v, str) else None


def resolve_task(router_mapping, dataset_name: str | None, column: str, is_dict_dataset: bool):
    """The Router task of one (dataset, column) under ``{column: task}`` or ``{dataset: {column: task}}``."""
    if not router_mapping:
        return None
    if not isinstance(router_mapping, dict):
        raise ValueError(f"router_mapping must be a dict, got {type(router_mapping).__name__}")
    if any(isinstance(v, dict) for v in router_mapping.values()):
        if not is_dict_dataset:
            raise ValueError("router_mapping of the form {dataset: {column: task}} needs a DatasetDict / dict of "
                             "datasets; with a single dataset use {column: task} "
                             f"(got keys {sorted(router_mapping)})")
        return (router_mapping.get(dataset_name) or {}).get(column)
    return router_mapping.get(column)


def _check_texts(values, dataset, column, first_row=0):
    for i, v in enumerate(values, first_row):
        if v is None:
            raise ValueError(f"Dataset {dataset!r}, column {column!r}, row {i}: the text is None; drop or fill such "
                             f"rows (e.g. dataset.filter(lambda r: r[{column!r}] is not None))")
        if not isinstance(v, str):
            raise ValueError(f"Dataset {dataset!r}, column {column!r}, row {i}: expected a string, got "
                             f"{type(v).__name__} ({v!r}); each input cell must hold one text")
        if not v.strip():
            raise ValueError(f"Dataset {dataset!r}, column {column!r}, row {i}: the text is empty; drop or fill "
                             "such rows")


def _check_labels(values, dataset, column, first_row=0) -> np.ndarray:
    for i, v in enumerate(values, first_row):
        items = v if isinstance(v, (list, tuple)) else [v]
        for x in items:
            if isinstance(x, bool) or not isinstance(x, numbers.Number):
                raise ValueError(f"Dataset {dataset!r}, label column {column!r}, row {i}: labels must be numbers "
                                 f"(or lists of numbers), got {type(x).__name__} ({x!r})")
            if isinstance(x, float) and math.isnan(x):
                raise ValueError(f"Dataset {dataset!r}, label column {column!r}, row {i}: the label is NaN")
    lengths = sorted({len(v) if isinstance(v, (list, tuple)) else None for v in values}, key=str)
    if len(lengths) > 1:  # numpy would raise its own "inhomogeneous shape" error
        raise ValueError(f"Dataset {dataset!r}, label column {column!r}: label lists must all have the same length "
                         f"(found lengths {', '.join('scalar' if n is None else str(n) for n in lengths)})")
    arr = np.asarray(values)
    return arr.astype(np.int32) if arr.dtype.kind in "iu" else arr.astype(np.float32)


def _label_rule(loss):
    """The label range ``loss`` declares (``loss.inputs.label_range``, a :class:`stcore_jax.base.loss.LabelRange`;
    a modifier such as MatryoshkaLoss declares its wrapped loss's), else None. Out of range, these labels do not
    fail in the step: a class id past SoftmaxLoss's classes gathers NaN (the step is skipped), -1 wraps to the
    last class and a float one is truncated; OnlineContrastiveLoss ignores pairs labelled neither 0 nor 1; cosine
    similarity cannot reach a score of 5. PyTorch raises for the class ids only."""
    return loss.inputs.label_range


def check_label_range(loss, labels: np.ndarray, dataset, column, first_row=0) -> None:
    """Raise, naming the dataset, column and first bad row, if ``labels`` [N] are outside what ``loss`` can use
    (:func:`_label_rule`); labels of another shape (e.g. class probabilities [N, k]) are left to the loss."""
    rule = _label_rule(loss)
    if rule is None or labels.ndim != 1:
        return
    rows = np.flatnonzero(rule.bad(labels))
    if rows.size:
        raise ValueError(f"Dataset {dataset!r}, label column {column!r}, row {first_row + int(rows[0])}: "
                         f"{rule.loss} needs {rule.need}, got {labels[rows[0]].item():g} "
                         f"({rows.size} row(s) out of range)")


def check_columns(column_names, name: str, loss) -> tuple[list[str], str | None]:
    """``(input columns, label column)`` of a dataset with ``column_names``, checked against ``loss``
    (reserved names, at least one input, the input count and label the loss expects); warns about
    well-known names out of place and ID-like columns."""
    cols = list(column_names)
    for r in RESERVED_COLUMNS:
        if r in cols:
            raise ValueError(f"Dataset {name!r} has a column named {r!r}, which is reserved; rename it")
    lab = label_column(cols)
    inputs = input_columns(cols)
    if not inputs:
        raise ValueError(f"Dataset {name!r} has no input columns (columns: {cols})")
    try:
        loss.validate_columns(len(inputs), lab is not None)
    except ValueError as e:
        raise ValueError(f"Dataset {name!r} with input columns {inputs}" + (f" and label {lab!r}" if lab else "") +
                         f": {e}") from None
    _warn_order(name, inputs)
    return inputs, lab


def prepare_dataset(dataset, name: str, loss, tokenizer_module, *, prompts=None, is_dict_dataset=False,
                    router_mapping=None) -> PreparedDataset:
    """Validate a ``datasets.Dataset`` against ``loss`` and tokenize its input columns.

    With ``router_mapping``, each column carries its task, and a Router input module tokenizes the
    column with the input module of that task's route (as the reference's collator does).
    """
    if len(dataset) == 0:  # the tokenizer would fail on it with a bare IndexError
        raise ValueError(f"Dataset {name!r} is empty (0 rows; columns {list(dataset.column_names)}); "
                         f"check the split, filter or select that produced it, or leave it out")
    inputs, lab = check_columns(dataset.column_names, name, loss)
    values = {c: list(dataset[c]) for c in inputs + ([lab] if lab else [])}
    return prepare_columns(values, name, inputs, lab, tokenizer_module, prompts=prompts,
                           is_dict_dataset=is_dict_dataset, router_mapping=router_mapping, hf_dataset=dataset,
                           loss=loss)


def prepare_columns(values: dict, name: str, inputs: list[str], lab: str | None, tokenizer_module, *, prompts=None,
                    is_dict_dataset=False, router_mapping=None, hf_dataset=None, first_row: int = 0,
                    loss=None) -> PreparedDataset:
    """Validate and tokenize rows given as ``{column: [values]}`` (columns already checked by
    :func:`check_columns`; label ranges against ``loss`` when given). Error messages number the rows
    from ``first_row`` (a stream's batches)."""
    texts = []
    for c in inputs:
        _check_texts(values[c], name, c, first_row)
        texts.append(values[c])
    labels = _check_labels(values[lab], name, lab, first_row) if lab else None
    if labels is not None and loss is not None:
        check_label_range(loss, labels, name, lab, first_row)
    token_ids, prompt_lengths, tasks, modules = [], [], [], []
    for c, vals in zip(inputs, texts):
        task = resolve_task(router_mapping, name, c, is_dict_dataset)
        route_input = getattr(tokenizer_module, "input_module_for", None)
        module = route_input(task) if route_input is not None else tokenizer_module
        prompt = resolve_prompt(prompts, name, c, is_dict_dataset)
        if prompt:
            vals = [prompt + v for v in vals]
        token_ids.append(module.tokenize_ids(vals))
        prompt_lengths.append(_prompt_length(module, prompt) if prompt else None)
        tasks.append(task)
        modules.append(module)
    return PreparedDataset(name, inputs, lab, labels, token_ids, prompt_lengths, texts, hf_dataset, tasks, modules)


def _prompt_length(module, prompt):
    ids = module.tokenize_ids([prompt])["input_ids"][0]
    special = set(getattr(module.tokenizer, "all_special_ids", ()))  # a StaticEmbedding adds no special tokens
    return len(ids) - (1 if ids and ids[-1] in special else 0)


def batch_longest(ds: PreparedDataset, rows) -> int:
    """Token length of the longest of ``rows`` over all input columns (a batch pads all columns to one length)."""
    return max(len(ids["input_ids"][i]) for ids in ds.token_ids for i in rows)


def batch_bucket(ds: PreparedDataset, rows, buckets) -> int:
    return bucket_for(batch_longest(ds, rows), buckets)


def collate(ds: PreparedDataset, rows, batch_size: int, length: int, pad) -> dict:
    """Rows -> ``{"columns": [features per column], "label": [B,...], "mask": [B]}`` (numpy)."""
    if len(rows) > batch_size:
        raise ValueError(f"collate got {len(rows)} rows for a batch of {batch_size}")
    columns = []
    for c, (ids, pl) in enumerate(zip(ds.token_ids, ds.prompt_lengths)):
        sub = {k: [v[i] for i in rows] for k, v in ids.items()}
        feats = (ds.input_modules[c].pad if ds.input_modules else pad)(sub, length, batch_size)
        if pl is not None:
            feats["prompt_length"] = np.full((batch_size,), pl, np.int32)
        if ds.tasks and ds.tasks[c] is not None:
            feats["task"] = Task(ds.tasks[c])  # static: the step compiles once per column-task layout
        columns.append(feats)
    mask = np.zeros((batch_size,), bool)
    mask[: len(rows)] = True
    batch = {"columns": columns, "mask": mask}
    if ds.labels is not None:
        lab = np.zeros((batch_size,) + ds.labels.shape[1:], ds.labels.dtype)
        lab[: len(rows)] = ds.labels[np.asarray(rows, dtype=np.int64)]
        batch["label"] = lab
    return batch


def collate_packed(ds: PreparedDataset, rows, batch_size: int, num_shards: int, shards, row_length: int,
                   rows_per_shard: int, pad_id: int, plan=None) -> dict:
    """Rows of a global batch -> the packed batch of ``shards`` (this process's data shards, ascending).

    Each shard packs its own ``C * batch_size / num_shards`` sentences (``pack_shard``), so the packed
    arrays shard over the data axes like the rows do. ``plan``: the batch's :func:`pack_plan`, if at hand.
    Returns ``{"columns": [per column {"attention_mask" [b, L], "pack_start" [b], "prompt_length" [b]?}],
    "packed": {"packed_*" [len(shards), rows_per_shard, L]}, "mask" [b], "label" [b, ...]?}`` with
    ``b = len(shards) * batch_size / num_shards``.
    """
    if len(rows) > batch_size:
        raise ValueError(f"collate_packed got {len(rows)} rows for a batch of {batch_size}")
    per, ncol = batch_size // num_shards, len(ds.token_ids)
    types = any("token_type_ids" in ids for ids in ds.token_ids)
    if plan is None:
        plan = {s: (shard_sequences(ds, rows, s, per), None) for s in shards}
    parts = [pack_shard(plan[s][0], row_length, rows_per_shard, pad_id, types, plan[s][1]) for s in shards]
    packed = {k: np.stack([p[k] for p in parts]) for k in parts[0] if k.startswith("packed_")}
    prompts = any(pl is not None for pl in ds.prompt_lengths)
    columns = []
    for c in range(ncol):
        col = {k: np.concatenate([p[k][c * per:(c + 1) * per] for p in parts])
               for k in ("attention_mask", "pack_start")}
        if prompts:  # every column gets one, so that the columns stack into one forward (0 = no prompt)
            col["prompt_length"] = np.full((len(shards) * per,), ds.prompt_lengths[c] or 0, np.int32)
        columns.append(col)
    slots = np.concatenate([np.arange(s * per, (s + 1) * per) for s in shards])
    mask = slots < len(rows)
    batch = {"columns": columns, "packed": packed, "mask": mask}
    if ds.labels is not None:
        lab = np.zeros((len(slots),) + ds.labels.shape[1:], ds.labels.dtype)
        lab[mask] = ds.labels[np.asarray([rows[i] for i in slots[mask]], dtype=np.int64)]
        batch["label"] = lab
    return batch
