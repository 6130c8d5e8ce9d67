"""CrossEncoder datasets -> validated text columns -> fixed-shape batches of tokenized pairs.

The reference's collator hands raw text columns to the loss, which forms the pairs and tokenizes them
(``cross_encoder/data_collator.py`` and each loss's ``forward``). Here the host does both each step, and the
batch has static shapes: every row forms ``P`` pairs, tokenized together as ``pairs`` features
``[B, P, L]`` (``L`` a length bucket), with ``doc_mask [B, P]`` saying which pairs are real. What a row's
pairs are is the loss's declared pair layout (``cross_encoder/losses/_common.py`` ``PAIR_LAYOUTS``):

- ``"pairs"``: (A, B) -> ``P = 1``: (a_i, b_i).
- ``"anchor_columns"``: (q, c_1..c_n) -> ``P = n``: (q_i, c_j,i).
- ``"mnrl"``: (anchor, positive, hard_1..h) -> ``P = 1 + k + h``: (a_i, p_i), then ``k`` in-batch candidates
  from the **global** batch (every process forms the same choice: a pure function of the seed and the
  batch's rows), then (a_i, hard_j,i). Candidates from padded rows are not real.
- ``"listwise"``: (query, [doc_1..doc_n_i]) with label lists of the same lengths -> ``P = max_docs`` (the
  dataset's longest list, one static shape), labels ``[B, max_docs]``.

Data rules (SPEC-CE-SPARSE §1.5): the first of ``label/labels/score/scores`` is the label; every other column
is an input, in order; list-valued columns only where the loss takes them; a prompt is one string or
``{dataset_name: str}`` (it goes before the first text of each pair), never per column. Every error names the
dataset, column and row and is raised before anything compiles.

Lengths: each text is tokenized once without special tokens; a pair's length is
``min(max_length, specials + len(a) + len(b))`` (``longest_first`` truncation), so the loop can pick a step's
length bucket without tokenizing the pairs, and :func:`collate` checks the tokenizer agrees.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import numpy as np

from stcore_jax.sentence_transformer.data import LABEL_COLUMNS, RESERVED_COLUMNS, label_column

# The row seeds of in-batch candidate sampling are mixed with this, so they differ from other seeded choices.
_CANDIDATE_SALT = 0x43_45_4D_4E  # "CEMN"


@dataclasses.dataclass
class PreparedPairs:
    """One dataset, validated, with per-text token counts: what :func:`collate` needs."""

    name: str
    columns: list[str]  # input columns, in order
    label_column: str | None
    labels: object  # np.ndarray [N] / [N, k], or (listwise) a list of [n_i] arrays, or None
    texts: list[list]  # per column, per row: a str, or a list of str (a list-valued column)
    lengths: list[list]  # per column, per row: token count (int), or an int array per document
    prompt: str | None
    layout: str
    max_docs: int  # listwise: the longest document list (the static P); else 0
    hf_dataset: object = None
    loss: object = None  # the loss the rows are collated for (its pair layout, MNRL's num_negatives)

    def __len__(self):
        return len(self.texts[0]) if self.texts else 0


# --- validation -----------------------------------------------------------------------------------
def resolve_prompt(prompts, dataset_name: str, is_dict_dataset: bool, columns=()) -> str | None:
    """The one prompt of a CrossEncoder dataset: ``prompts`` is a str or ``{dataset_name: str}``. Per-column
    prompts raise (the columns are merged into pairs), as the reference's collator does."""
    if not prompts:
        return None
    if isinstance(prompts, str):
        return prompts
    if not isinstance(prompts, dict):
        raise ValueError(f"prompts must be a str or a dict {{dataset_name: str}}, got {type(prompts).__name__}")
    check_scalar_mapping(prompts, "prompts", "prompts='Search: ' or prompts={'dataset_a': 'Search: '}")
    per_column = sorted(set(prompts) & set(columns) - ({dataset_name} if is_dict_dataset else set()))
    if per_column:
        raise ValueError(f"CrossEncoder prompts cannot be per-column, but prompts has keys {per_column}, which are "
                         f"input columns of dataset {dataset_name!r}. Inputs from multiple columns are combined into "
                         f"pairs: give one prompt string, or a {{dataset_name: prompt}} mapping for a dict of "
                         f"datasets.")
    return prompts.get(dataset_name) if is_dict_dataset else None  # as the reference: no dataset name, no prompt


def check_scalar_mapping(mapping, field: str, example: str) -> None:
    """``prompts``/``router_mapping`` of a CrossEncoder: a str or a flat ``{dataset_name: str}``."""
    if isinstance(mapping, dict):
        nested = sorted(k for k, v in mapping.items() if isinstance(v, dict))
        if nested:
            raise ValueError(f"CrossEncoder {field} cannot be per-column (entries {nested} are dicts). Inputs from "
                             f"multiple columns are combined into pairs, so only a single string or a per-dataset "
                             f"mapping of strings is supported, e.g. {example}.")


def check_columns(column_names, name: str, loss) -> tuple[list[str], str | None]:
    """``(input columns, label column)``, checked against the loss's input count and label rule."""
    cols = list(column_names)
    for r in RESERVED_COLUMNS:
        if r in cols:
            raise ValueError(f"Dataset {name!r} has a column named {r!r}, which is reserved; rename it")
    lab = label_column(cols)
    inputs = [c for c in cols if c != lab]
    if not inputs:
        raise ValueError(f"Dataset {name!r} has no input columns (columns: {cols})")
    try:
        loss.validate_columns(len(inputs), lab is not None)
    except ValueError as e:
        raise ValueError(f"Dataset {name!r} with input columns {inputs}" + (f" and label {lab!r}" if lab else "") +
                         f": {e}") from None
    return inputs, lab


def _check_text(v, dataset, column, row, item=None):
    where = f"Dataset {dataset!r}, column {column!r}, row {row}" + ("" if item is None else f", document {item}")
    if v is None:
        raise ValueError(f"{where}: the text is None; drop or fill such rows")
    if not isinstance(v, str):
        raise ValueError(f"{where}: expected a string, got {type(v).__name__} ({v!r})")
    if not v.strip():
        raise ValueError(f"{where}: the text is empty; drop or fill such rows")


def _is_list(v) -> bool:
    return isinstance(v, (list, tuple))


def check_texts(values, dataset, column) -> bool:
    """Validate one column; returns whether it is list-valued (every row a list of texts)."""
    kinds = {_is_list(v) for v in values}
    if len(kinds) > 1:
        row = next(i for i, v in enumerate(values) if _is_list(v) != _is_list(values[0]))
        raise ValueError(f"Dataset {dataset!r}, column {column!r}, row {row}: mixes list and plain text values; "
                         f"a column holds one text per row, or one list of texts per row")
    is_list = kinds == {True}
    for i, v in enumerate(values):
        if is_list:
            if not v:
                raise ValueError(f"Dataset {dataset!r}, column {column!r}, row {i}: the document list is empty")
            for j, t in enumerate(v):
                _check_text(t, dataset, column, i, j)
        else:
            _check_text(v, dataset, column, i)
    return is_list


def _check_number(x, dataset, column, row):
    if isinstance(x, bool) or not isinstance(x, numbers.Number):
        raise ValueError(f"Dataset {dataset!r}, label column {column!r}, row {row}: labels must be numbers "
                         f"(or lists of numbers), got {type(x).__name__} ({x!r})")
    if isinstance(x, float) and math.isnan(x):
        raise ValueError(f"Dataset {dataset!r}, label column {column!r}, row {row}: the label is NaN")


def check_labels(values, dataset, column, loss, doc_lists=None):
    """Labels as the loss takes them: ``[N]`` (int for class ids) or ``[N, k]`` arrays, or (``doc_lists``:
    listwise) one float array per row, whose length must equal that row's document count."""
    is_list = [_is_list(v) for v in values]
    if any(is_list) and not all(is_list):
        row = is_list.index(not is_list[0])
        raise ValueError(f"Dataset {dataset!r}, label column {column!r}, row {row}: mixes list and scalar labels")
    for i, v in enumerate(values):
        for x in (v if is_list[i] else [v]):
            _check_number(x, dataset, column, i)
    if doc_lists is not None:
        out = []
        for i, (v, docs) in enumerate(zip(values, doc_lists)):
            if len(v) != len(docs):
                raise ValueError(f"Dataset {dataset!r}, row {i}: {len(docs)} documents but {len(v)} labels in "
                                 f"{column!r}; a listwise loss needs one label per document")
            out.append(np.asarray(v, np.float32))
        return out
    lengths = sorted({len(v) for v in values}) if all(is_list) and values else []
    if len(lengths) > 1:
        first = next(i for i, v in enumerate(values) if len(v) != len(values[0]))
        raise ValueError(f"Dataset {dataset!r}, label column {column!r}, row {first}: label lists must all have the "
                         f"same length for {loss.name} (row 0 has {len(values[0])}, row {first} has "
                         f"{len(values[first])})")
    arr = np.asarray(values)
    return arr.astype(np.int32) if arr.dtype.kind in "iu" else arr.astype(np.float32)


def _check_label_range(loss, labels, dataset, column):
    """Class ids of CrossEntropyLoss in ``[0, num_labels)``; BCE labels in [0, 1] (torch raises for neither
    in the step: an id past the classes is a CUDA assert, BCE trains towards an unreachable target)."""
    if isinstance(labels, list) or labels is None:
        return
    num = getattr(getattr(loss, "model", None), "num_labels", None)
    if type(loss).__name__ == "CrossEntropyLoss" and labels.ndim == 1:
        bad = np.flatnonzero((labels < 0) | (labels >= (num or np.inf)) | (labels != np.round(labels)))
        need = f"integer class ids in [0, {num})"
    elif type(loss).__name__ == "BinaryCrossEntropyLoss":
        bad = np.flatnonzero((labels < 0) | (labels > 1))
        need = "labels in [0, 1]"
    else:
        return
    if bad.size:
        raise ValueError(f"Dataset {dataset!r}, label column {column!r}, row {int(bad[0])}: {loss.name} needs {need}, "
                         f"got {labels.reshape(len(labels), -1)[bad[0]].tolist()} ({bad.size} row(s) out of range)")


def prepare_pairs(dataset, name: str, loss, model, *, prompts=None, is_dict_dataset=False) -> PreparedPairs:
    """Validate a ``datasets.Dataset`` against ``loss`` and count the tokens of every text."""
    if len(dataset) == 0:
        raise ValueError(f"Dataset {name!r} is empty (0 rows; columns {list(dataset.column_names)}); check the "
                         f"split, filter or select that produced it, or leave it out")
    inputs, lab = check_columns(dataset.column_names, name, loss)
    texts = [list(dataset[c]) for c in inputs]
    list_columns = [check_texts(t, name, c) for t, c in zip(texts, inputs)]
    raw_labels = list(dataset[lab]) if lab else None
    list_label = bool(raw_labels) and _is_list(raw_labels[0])
    try:
        loss.validate_column_types(list_columns, list_label)
    except ValueError as e:
        raise ValueError(f"Dataset {name!r} with input columns {inputs}" + (f" and label {lab!r}" if lab else "") +
                         f": {e}") from None
    layout = loss.inputs.pair_layout
    labels = None
    if lab:
        labels = check_labels(raw_labels, name, lab, loss, doc_lists=texts[1] if layout == "listwise" else None)
        _check_label_range(loss, labels, name, lab)
    prompt = resolve_prompt(prompts, name, is_dict_dataset, inputs)
    lengths = [_token_counts(model, t, prompt if j == 0 else None) for j, t in enumerate(texts)]
    max_docs = max(len(d) for d in texts[1]) if layout == "listwise" else 0
    return PreparedPairs(name, inputs, lab, labels, texts, lengths, prompt, layout, max_docs, dataset)


def _token_counts(model, values, prompt):
    """Tokens per text (no special tokens; a prompt prepended), per row; an int array per row for lists."""
    tok = model.input_module.tokenizer
    flat, sizes = [], []
    for v in values:
        items = v if _is_list(v) else [v]
        flat += [(prompt or "") + t for t in items]
        sizes.append(len(items) if _is_list(v) else None)
    counts = np.asarray([len(x) for x in tok(flat, add_special_tokens=False)["input_ids"]], np.int64)
    out, at = [], 0
    for s in sizes:
        out.append(int(counts[at]) if s is None else counts[at:at + s])
        at += 1 if s is None else s
    return out


# --- pairs ------------------------------------------------------------------------------------------
def pairs_per_row(ds: PreparedPairs, loss, batch_size: int) -> int:
    """``P``: the pairs each row forms (static for a dataset, loss and batch size)."""
    if ds.layout == "pairs":
        return 1
    if ds.layout == "anchor_columns":
        return len(ds.columns) - 1
    if ds.layout == "listwise":
        return ds.max_docs
    c = len(ds.columns) - 1  # candidate columns: the positive and the hard negatives
    return 1 + num_candidates(loss.num_negatives, batch_size, c) + (c - 1)


def num_candidates(num_negatives, batch_size: int, num_columns: int) -> int:
    total = batch_size * num_columns - num_columns  # every candidate column of every other row
    return total if num_negatives is None else min(num_negatives, total)


def candidate_rows(rows, batch_size: int, num_columns: int, num_negatives, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """In-batch candidates of every slot of a (padded) global batch: ``(idx [B, k], valid [B, k])``.

    Candidate ``c * B + j`` is column ``c + 1`` of slot ``j`` (the reference's flattening). With all of them
    taken (``num_negatives`` None or at least ``B*C - C``) the order is the reference's; otherwise ``k`` are
    drawn without replacement among the real ones, with a generator seeded by ``seed`` and the batch's rows
    (the same on every process and on resume; the reference's ``torch.multinomial`` draw is not reproducible
    across libraries, only its distribution). Numpy twin of ``losses.mnrl.in_batch_candidates``.
    """
    total = batch_size * num_columns
    cand_slot = np.arange(total) % batch_size
    other = cand_slot[None, :] != np.arange(batch_size)[:, None]
    eligible = other & (cand_slot < len(rows))[None, :]
    k = num_candidates(num_negatives, batch_size, num_columns)
    if k == total - num_columns:
        idx = np.nonzero(other)[1].reshape(batch_size, k)
    else:
        rng = np.random.default_rng([_CANDIDATE_SALT, int(seed) & 0xFFFFFFFF, *map(int, rows)])
        noise = np.where(eligible, rng.gumbel(size=(batch_size, total)), -np.inf)
        idx = np.argsort(-noise, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(eligible, idx, axis=1)


def row_pairs(ds: PreparedPairs, rows, batch_size: int, loss, seed: int, slots=None):
    """The pairs of ``slots`` (default: all) of a padded batch of ``rows``: ``(texts [n, P] of (a, b) or None for
    padding, token lengths [n, P], doc_mask [n, P])``."""
    slots = range(batch_size) if slots is None else slots
    P, n = pairs_per_row(ds, loss, batch_size), len(rows)
    texts = [[None] * P for _ in slots]
    lengths = np.zeros((len(slots), P), np.int64)
    real = np.zeros((len(slots), P), bool)
    cols, lens = ds.texts, ds.lengths
    if ds.layout == "mnrl":
        c = len(ds.columns) - 1
        idx, valid = candidate_rows(rows, batch_size, c, loss.num_negatives, seed)
    for out, s in enumerate(slots):
        if s >= n:
            continue
        r = rows[s]
        if ds.layout == "listwise":
            docs = [(cols[1][r][j], int(lens[1][r][j])) for j in range(len(cols[1][r]))]
        elif ds.layout == "mnrl":
            docs = [(cols[1][r], lens[1][r])]
            for t, ok in zip(idx[s], valid[s]):
                if ok:
                    col, slot = 1 + t // batch_size, t % batch_size
                    docs.append((cols[col][rows[slot]], lens[col][rows[slot]]))
                else:
                    docs.append(None)
            docs += [(cols[j][r], lens[j][r]) for j in range(2, len(cols))]
        else:
            docs = [(cols[j][r], lens[j][r]) for j in range(1, len(cols))]
        for p, d in enumerate(docs):
            if d is not None:
                texts[out][p] = (cols[0][r], d[0])
                lengths[out, p] = lens[0][r] + d[1]
                real[out, p] = True
    return texts, lengths, real


def longest(ds: PreparedPairs, rows, max_length: int, specials: int, loss=None, batch_size=None) -> int:
    """Token length of the longest pair ``rows`` form (with special tokens, truncated to ``max_length``);
    for ``"mnrl"`` an upper bound (the longest anchor with the longest candidate)."""
    rows = list(rows)
    a = max(ds.lengths[0][r] for r in rows)
    if ds.layout == "mnrl":
        b = max(ds.lengths[j][r] for j in range(1, len(ds.columns)) for r in rows)
        return int(min(max_length, specials + a + b))
    if ds.layout == "listwise":
        return int(min(max_length, specials + max(ds.lengths[0][r] + int(ds.lengths[1][r].max()) for r in rows)))
    return int(min(max_length, specials + max(ds.lengths[0][r] + ds.lengths[j][r]
                                              for j in range(1, len(ds.columns)) for r in rows)))


# --- batches --------------------------------------------------------------------------------------
def collate(ds: PreparedPairs, rows, batch_size: int, length: int, model, loss, seed: int, slots=None) -> dict:
    """Rows -> ``{"pairs": {input_ids, attention_mask[, token_type_ids]: [n, P, L]}, "doc_mask": [n, P],
    "mask": [n], "label": ...}`` (numpy) for ``slots`` of the padded batch (default all ``batch_size``; a
    process collates only its own, with the global batch's in-batch candidates).

    Labels: ``[n]`` / ``[n, k]`` as prepared; listwise ``[n, P]`` (0 where no document)."""
    if len(rows) > batch_size:
        raise ValueError(f"collate got {len(rows)} rows for a batch of {batch_size}")
    slots = np.arange(batch_size) if slots is None else np.asarray(slots)
    texts, _, real = row_pairs(ds, rows, batch_size, loss, seed, slots)
    n, P = real.shape
    flat = [t if t is not None else ("", "") for row in texts for t in row]  # padding pairs: specials only
    module = model.input_module
    prompt = ds.prompt
    if prompt:
        flat = [(prompt + a, b) if t is not None else (a, b) for (a, b), t in zip(flat, (t for r in texts for t in r))]
    ids = module.tokenize_ids(flat)
    got = max(len(x) for x in ids["input_ids"])
    if got > length:
        raise RuntimeError(f"Dataset {ds.name!r}: a pair tokenized to {got} tokens, longer than its length bucket "
                           f"{length} (the per-text token counts disagree with the pair tokenization)")
    feats = module.pad(ids, length, len(flat))
    pairs = {k: np.asarray(v).reshape(n, P, length) for k, v in feats.items()}
    mask = slots < len(rows)
    batch = {"pairs": pairs, "doc_mask": real, "mask": mask}
    if ds.labels is not None:
        take = [rows[s] for s in slots[mask]]
        if isinstance(ds.labels, list):  # listwise: [n, P], padded with 0 (the doc mask leaves them out)
            lab = np.zeros((n, P), np.float32)
            for out, r in enumerate(take):
                lab[out, :len(ds.labels[r])] = ds.labels[r]
        else:
            lab = np.zeros((n,) + ds.labels.shape[1:], ds.labels.dtype)
            lab[mask] = ds.labels[np.asarray(take, np.int64)]
        batch["label"] = lab
    return batch


def _plain_labels(labels):
    """torch / numpy / jax labels, or a list of per-row tensors, as plain Python lists (for a Dataset)."""
    if hasattr(labels, "tolist"):
        return labels.tolist()
    return [x.tolist() if hasattr(x, "tolist") else x for x in labels]


def loss_on_columns(loss, columns, labels=None, *, prompt=None, seed: int = 0):
    """``loss(inputs, labels)`` as the reference calls a loss: raw text ``columns`` -> the loss's pairs, scored
    by ``loss.model`` at its current parameters without dropout -> the loss value (checked as a dataset is)."""
    from datasets import Dataset

    from stcore_jax.cross_encoder.objective import compute_loss

    model = loss.model
    if model is None:
        raise ValueError(f"{loss.name} was built without a model; pass the CrossEncoder to call it on text columns")
    values = {f"column_{i}": list(c) for i, c in enumerate(columns)}
    if labels is not None:
        values["label"] = _plain_labels(labels)
    prep = prepare_pairs(Dataset.from_dict(values), "inputs", loss, model, prompts=prompt)
    prep.loss = loss
    rows = list(range(len(prep)))
    specials = model.input_module.tokenizer.num_special_tokens_to_add(pair=True)
    batch = collate(prep, rows, len(rows), longest(prep, rows, model.max_seq_length, specials), model, loss, seed)
    out = compute_loss(loss, model.forward, model.params, batch)
    return sum(out.values()) if isinstance(out, dict) else out


__all__ = ["LABEL_COLUMNS", "PreparedPairs", "candidate_rows", "collate", "longest", "prepare_pairs", "row_pairs"]
