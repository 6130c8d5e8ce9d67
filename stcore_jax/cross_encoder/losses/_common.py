"""What the CrossEncoder losses share: the base class, activations, pair layouts, ragged-list padding.

A CrossEncoder loss is, like a bi-encoder loss (stcore_jax/base/loss.py), a **pure function** plus a thin
**class**, but it works on **scores**: the model's logits of (text, text) pairs. The reference builds the
pairs and calls the model inside the loss; here the collator forms the pairs on the host (tokenized
as one static ``[P, L]`` batch), the objective runs the model and hands the logits, arranged as the loss's
declared :data:`PAIR_LAYOUTS` entry, to ``compute_loss_from_scores(scores, labels, **context)``.

Context keywords understood by ``compute_loss_from_scores`` (all optional):

``mask``
    ``[B] bool``: rows that are real data (padded partial batches); left out of every mean.
``doc_mask``
    ``[B, N] bool`` (``"listwise"`` and ``"mnrl"`` layouts): which score entries are real. Listwise lists are
    right-padded to a static ``max_docs`` (the mask is a prefix of each row); MNRL in-batch candidates drawn from
    padded rows are not real.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax.base.loss import InputKind, Loss, LossInputs, masked_mean, masked_sum
from stcore_jax.cross_encoder.activation import IDENTITY, SIGMOID, TORCH_ACTIVATIONS  # noqa: F401 (names for the losses)

Array = jax.Array

# Which pairs the collator forms from the input columns, and the scores array the loss then takes.
PAIR_LAYOUTS = {
    # (A, B): the pair (A_i, B_i) per row -> scores [B] (num_labels == 1) or [B, C] (class logits).
    "pairs": "(A, B) -> one pair per row; scores [B] or [B, num_labels]",
    # (q, c_1, ..., c_n): the pairs (q_i, c_j,i) for every column j -> scores [B, n], column j-1 for c_j.
    "anchor_columns": "(q, c_1..c_n) -> pairs (q_i, c_j) per column; scores [B, n]",
    # (anchor, positive, hard_1..hard_h): per row the pairs (a_i, p_i), (a_i, k in-batch candidates chosen by
    # mnrl.in_batch_candidates), (a_i, hard_1,i .. hard_h,i) -> scores [B, 1 + k + h] + doc_mask; target column 0.
    "mnrl": "(anchor, positive, hard_1..h) -> [own positive, k in-batch candidates, own hard negatives]; [B, 1+k+h]",
    # (query, [doc_1..doc_n_i]) with label lists of the same lengths: the pairs (q_i, doc) of every document,
    # scattered back into scores [B, max_docs] with labels [B, max_docs] and doc_mask [B, max_docs].
    "listwise": "(query, docs list) + label lists -> scores, labels, doc_mask [B, max_docs]",
}

CONTEXT_KEYS = frozenset({"mask", "doc_mask"})

# Activations by name: the model's table (cross_encoder/activation.py). Keys are what the reference's
# get_config_dict writes (util.fullname of the torch module), so a config written by either library reads the same.
ACTIVATIONS: dict[str, Callable[[Array], Array]] = TORCH_ACTIVATIONS
_SHORT = {name.rsplit(".", 1)[1].lower(): name for name in ACTIVATIONS}


def resolve_activation(fn) -> tuple[Callable[[Array], Array] | None, str]:
    """``(function, config name)`` of an ``activation_fn`` argument.

    Accepts None, a name (``"sigmoid"``, ``"Identity"``, ``"torch.nn.modules.activation.Sigmoid"``), a torch
    module instance of one of those classes (so reference code ports unchanged), or any JAX callable.
    """
    if fn is None:
        return None, "NoneType"
    if isinstance(fn, str):
        name = fn if fn in ACTIVATIONS else _SHORT.get(fn.lower())
        if name is None:
            raise ValueError(f"Unknown activation_fn {fn!r}; expected one of {sorted(_SHORT)} or a callable.")
        return ACTIVATIONS[name], name
    module = type(fn).__module__ or ""
    if module.startswith("torch."):
        name = f"torch.nn.modules.{module.split('.')[-1]}.{type(fn).__name__}"
        if name not in ACTIVATIONS:
            raise ValueError(f"Unsupported torch activation_fn {type(fn).__name__}; expected one of "
                             f"{sorted(_SHORT)} or a JAX callable.")
        return ACTIVATIONS[name], name
    if not callable(fn):
        raise TypeError(f"activation_fn must be None, a name or a callable, got {type(fn).__name__}.")
    return fn, f"{getattr(fn, '__module__', None) or ''}.{getattr(fn, '__name__', type(fn).__name__)}".lstrip(".")


def _is_text_columns(x) -> bool:
    """Whether a loss was called with raw text columns (the reference's ``loss(inputs, labels)``)."""
    return (isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], (list, tuple)) and len(x[0]) > 0
            and isinstance(x[0][0], str))


def apply_activation(fn, x: Array) -> Array:
    return x if fn is None else fn(x)


def check_context(loss_name: str, context: dict[str, Any]) -> None:
    unknown = set(context) - CONTEXT_KEYS
    if unknown:
        raise TypeError(f"{loss_name}.compute_loss_from_scores got unknown keyword(s) {sorted(unknown)}; "
                        f"known: {sorted(CONTEXT_KEYS)}.")


def pad_lists(lists: Sequence[Sequence[float]], fill: float = 0.0, max_docs: int | None = None,
              dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ragged per-query lists (scores or labels) on the host: ``([B, max_docs], doc_mask [B, max_docs])``.

    ``max_docs`` defaults to the longest list; a larger static bucket gives the same loss values.
    """
    width = max((len(x) for x in lists), default=0) if max_docs is None else max_docs
    out = np.full((len(lists), width), fill, dtype)
    mask = np.zeros((len(lists), width), bool)
    for i, row in enumerate(lists):
        if len(row) > width:
            raise ValueError(f"row {i} has {len(row)} documents, more than max_docs={width}.")
        out[i, :len(row)] = np.asarray(row, dtype)
        mask[i, :len(row)] = True
    return out, mask


def listwise_masks(scores: Array, doc_mask, mask) -> Array:
    """``[B, N] bool``: real documents of real rows."""
    m = jnp.ones(scores.shape, bool) if doc_mask is None else jnp.asarray(doc_mask, bool)
    if mask is not None:
        m = m & jnp.asarray(mask, bool).reshape(-1, 1)
    return m


class CrossEncoderLoss(Loss):
    """Base of the CrossEncoder losses: ``inputs`` declares ``kind=SCORES`` and the loss's ``pair_layout``.

    Subclasses set ``pair_layout``, ``min_inputs``/``max_inputs``, ``label``, ``any_num_labels`` (only
    CrossEntropyLoss accepts ``num_labels != 1``) and implement :meth:`compute_loss_from_scores`.
    """

    pair_layout: str = "pairs"
    label = "required"
    any_num_labels = False
    # Whether the loss takes a list-valued document column and list labels (the listwise losses), may take
    # list labels (MarginMSE stacks them), or neither.
    list_inputs = False
    list_labels_ok = False

    def __init__(self, model=None) -> None:
        super().__init__(model)
        num_labels = getattr(model, "num_labels", 1)
        if not self.any_num_labels and model is not None and num_labels != 1:
            raise ValueError(f"{self.name} expects a model with 1 output label, but got a model with {num_labels} "
                             f"output labels.")

    @property
    def inputs(self) -> LossInputs:
        return LossInputs(kind=InputKind.SCORES, pair_layout=self.pair_layout)

    def validate_column_types(self, list_columns: Sequence[bool], list_label: bool) -> None:
        """Raise ``ValueError`` if list-valued columns/labels do not fit the loss (``list_columns``: per input
        column, whether its values are lists; ``list_label``: whether the label is a list per row)."""
        list_columns = list(list_columns)
        if self.list_inputs:
            if list_columns != [False, True] or not list_label:
                raise ValueError(f"{self.name} expects (query: str, documents: list[str]) columns with a list of "
                                 f"labels per row (one per document), but got list-valued columns {list_columns} "
                                 f"and {'list' if list_label else 'scalar'} labels.")
            return
        if any(list_columns):
            raise ValueError(f"{self.name} takes plain text columns, but columns {list_columns} are list-valued; "
                             f"use a listwise loss (e.g. LambdaLoss) for (query, [documents]) data.")
        if list_label and not self.list_labels_ok:
            raise ValueError(f"{self.name} expects one label per row, but the labels are lists.")

    def compute_loss_from_scores(self, scores: Array, labels=None, **context) -> Array:
        raise NotImplementedError

    def compute_loss_from_embeddings(self, embeddings, labels=None, **context):
        raise TypeError(f"{self.name} takes scores (InputKind.SCORES): call compute_loss_from_scores.")

    def __call__(self, scores, labels=None, **context) -> Array:
        """``loss(scores, labels, mask=..., doc_mask=...)`` on logits, or as the reference calls it,
        ``loss(inputs, labels, prompt=None, task=None)`` with ``inputs`` the raw text columns (a list of columns,
        each a list of texts or, for a listwise loss's documents, of lists of texts): the pairs are formed and
        scored with ``self.model`` at its current parameters, without dropout (cross_encoder/data.py)."""
        if _is_text_columns(scores):
            from stcore_jax.cross_encoder.data import loss_on_columns  # data imports the losses' callers only

            context.pop("task", None)  # a CrossEncoder without a Router: no route to pick
            return loss_on_columns(self, scores, labels, prompt=context.pop("prompt", None), **context)
        return self.compute_loss_from_scores(scores, labels, **context)


class ListwiseLoss(CrossEncoderLoss):
    """Base of the listwise losses: (query, [documents]) with label lists; scores/labels/doc_mask [B, max_docs]."""

    pair_layout = "listwise"
    min_inputs = max_inputs = 2
    inputs_doc = "(query, [document_1, ..., document_n])"
    label_doc = "a list of relevance labels per row (one per document)"
    list_inputs = True

    def __init__(self, model=None, activation_fn=IDENTITY, mini_batch_size: int | None = None) -> None:
        super().__init__(model)
        # The reference turns activation_fn=None into Identity for the listwise losses.
        self.activation_fn, self._activation_name = resolve_activation(activation_fn or IDENTITY)
        self.mini_batch_size = mini_batch_size

    def _masks(self, context) -> dict:
        check_context(self.name, context)
        return {"doc_mask": context.get("doc_mask"), "mask": context.get("mask")}


def reduce_rows(values: Array, mask, reduction: str = "mean") -> Array:
    """``mean`` (over valid rows and trailing axes, as ``torch`` ``reduction="mean"``) or ``sum`` of ``values``."""
    if reduction == "mean":
        return masked_mean(values, mask)
    if reduction == "sum":
        return masked_sum(values, mask)
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")


def check_reduction(name: str, kwargs: dict) -> str:
    """The ``reduction`` of the torch loss a reference class forwards ``**kwargs`` to (others are unsupported)."""
    reduction = kwargs.pop("reduction", "mean")
    if kwargs:
        raise TypeError(f"{name}: unsupported keyword arguments {sorted(kwargs)} (only reduction= is supported).")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{name}: reduction must be 'mean' or 'sum', got {reduction!r}.")
    return reduction
