"""What every loss shares: the base class, similarity lookup by name, masked reductions.

A loss in this package is two things:

* a **pure function** over per-column embeddings (``[B, D]`` arrays) and labels that returns a
  float32 scalar (or a dict of named float32 scalars). It never calls a model and contains no
  collectives: under ``jax.jit`` on batch-sharded inputs the compiler inserts whatever communication
  the math needs.
* a thin **class** with the sentence-transformers name and constructor. It holds the
  hyperparameters (and the ``model`` argument, which it stores but never calls), says which input
  columns and labels it accepts (:meth:`Loss.validate_columns`), and maps
  ``compute_loss_from_embeddings(embeddings, labels, **context)`` onto the pure function.

Context keywords understood by ``compute_loss_from_embeddings`` (all optional):

``mask``
    ``[B] bool``: rows that are real data. The trainer pads partial batches to a static batch
    size; padded rows are left out of every loss (as anchors *and* as in-batch candidates) and of
    every mean. ``None`` means all rows are real.
``params``
    The loss's own trainable parameters (:meth:`Loss.init_params`), e.g. SoftmaxLoss's classifier.
``key``
    A ``jax.random`` key, needed only by modifiers that sample (``MatryoshkaLoss(n_dims_per_step>0)``,
    ``AdaptiveLayerLoss``).
``num_shards``
    The data-parallel degree of the batch axis (static). In-batch-negative losses with
    ``gather_across_devices=False`` score each shard's anchors only against that shard's candidates.
``guide_embeddings``
    ``GISTEmbedLoss`` only: the guide model's embeddings, one ``[B, D_guide]`` array per column.

What a loss needs from the trainer is **declared**, not guessed: :attr:`Loss.inputs` is a
:class:`LossInputs` (what to embed, GradCache chunking, a guide model, a random key, the label range the
data must respect, own parameters). The one dispatcher
(:func:`stcore_jax.sentence_transformer.losses.embed.compute_loss`) switches on it, and a
:class:`WrapperLoss` (MatryoshkaLoss, AdaptiveLayerLoss) derives its declaration and its column/label
contract from the loss it wraps.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, PartitionSpec as P

from stcore_jax import similarity as sim

# A finite stand-in for -inf in masked logits. exp() of it underflows to exactly 0, so values match
# the reference's -inf masking, but a row that is masked entirely stays finite: no NaN gradients
# leak through ``jnp.where`` for padded rows.
NEG = -1e30

CONTEXT_KEYS = frozenset({"mask", "params", "key", "num_shards", "guide_embeddings"})

Array = jax.Array

_MATRIX_NAMES: dict[str, Callable] = {
    "cos_sim": sim.cos_sim,
    "pytorch_cos_sim": sim.cos_sim,
    "cosine": sim.cos_sim,
    "dot_score": sim.dot_score,
    "dot": sim.dot_score,
    "euclidean_sim": sim.euclidean_sim,
    "euclidean": sim.euclidean_sim,
    "manhattan_sim": sim.manhattan_sim,
    "manhattan": sim.manhattan_sim,
}
_PAIRWISE_NAMES: dict[str, Callable] = {
    "pairwise_cos_sim": sim.pairwise_cos_sim,
    "cosine": sim.pairwise_cos_sim,
    "pairwise_dot_score": sim.pairwise_dot_score,
    "dot": sim.pairwise_dot_score,
    "pairwise_euclidean_sim": sim.pairwise_euclidean_sim,
    "euclidean": sim.pairwise_euclidean_sim,
    "pairwise_manhattan_sim": sim.pairwise_manhattan_sim,
    "manhattan": sim.pairwise_manhattan_sim,
    "pairwise_angle_sim": sim.pairwise_angle_sim,
}


def resolve_similarity(fn: Callable | str, *, pairwise: bool = False) -> Callable:
    """Return a similarity function given as a callable, a function name (``"cos_sim"``,
    ``"pairwise_dot_score"``) or a :class:`~stcore_jax.similarity.SimilarityFunction` value."""
    if callable(fn) and not isinstance(fn, str):
        return fn
    name = fn.value if isinstance(fn, sim.SimilarityFunction) else str(fn)
    table = _PAIRWISE_NAMES if pairwise else _MATRIX_NAMES
    if name not in table:
        kind = "pairwise similarity" if pairwise else "similarity"
        raise ValueError(f"Unknown {kind} function {fn!r}; expected a callable or one of {sorted(table)}.")
    return table[name]


def similarity_fct_name(fn: Callable | str) -> str:
    return fn if isinstance(fn, str) else getattr(fn, "__name__", type(fn).__name__)


def f32(x) -> Array:
    return jnp.asarray(x, jnp.float32)


def row_mask(mask, batch_size: int) -> Array:
    """``[B] bool`` validity mask (all True when ``mask`` is None)."""
    if mask is None:
        return jnp.ones((batch_size,), bool)
    mask = jnp.asarray(mask, bool).reshape(-1)
    if mask.shape[0] != batch_size:
        raise ValueError(f"mask has {mask.shape[0]} rows but the batch has {batch_size}.")
    return mask


def masked_mean(values: Array, mask=None) -> Array:
    """Mean of ``values`` over its leading (row) axis and any trailing axes, counting only valid rows.

    With ``mask=None`` this is exactly ``values.mean()``.
    """
    values = f32(values)
    if mask is None:
        return jnp.mean(values)
    m = jnp.asarray(mask, jnp.float32).reshape((-1,) + (1,) * (values.ndim - 1))
    per_row = values[0].size if values.ndim > 1 else 1
    return jnp.sum(values * m) / (jnp.maximum(jnp.sum(m), 1.0) * per_row)


def masked_sum(values: Array, mask=None) -> Array:
    values = f32(values)
    if mask is None:
        return jnp.sum(values)
    m = jnp.asarray(mask, jnp.float32).reshape((-1,) + (1,) * (values.ndim - 1))
    return jnp.sum(values * m)


def _explicit_axes(leaves):
    """The abstract mesh and explicit axis names that any of ``leaves`` is sharded over, if any."""
    for leaf in leaves:
        sharding = getattr(jax.typeof(leaf), "sharding", None)
        mesh = getattr(sharding, "mesh", None)
        if mesh is None or not mesh.axis_names:
            continue
        axes = tuple(a for a, t in zip(mesh.axis_names, mesh.axis_types) if t == AxisType.Explicit)
        if axes:
            return mesh, axes
    return None, ()


def sharding_agnostic(fn):
    """Make a loss body indifferent to explicit sharding ("sharding in types").

    Under an ``Explicit`` mesh (``jax.make_mesh``'s default), reshapes, sorts and matmuls over a
    sharded batch axis need their output sharding spelled out. A loss body is written for global
    arrays, so this runs it with the inputs' explicit axes switched to auto
    (``jax.sharding.auto_axes``): the compiler places the intermediate work (block-diagonal
    in-batch scores stay on their shard; gathered ones all-gather) and the scalar result is
    replicated. With auto-sharded or unsharded inputs this is a plain call.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        leaves, treedef = jax.tree.flatten((args, kwargs))
        is_array = [isinstance(x, jax.Array) for x in leaves]
        mesh, axes = _explicit_axes([x for x, a in zip(leaves, is_array) if a])
        if not axes:
            return fn(*args, **kwargs)

        def body(arrays):
            it = iter(arrays)
            full = [next(it) if a else x for x, a in zip(leaves, is_array)]
            a, k = jax.tree.unflatten(treedef, full)
            return fn(*a, **k)

        with jax.sharding.use_abstract_mesh(mesh):
            return jax.sharding.auto_axes(body, axes=axes, out_sharding=P())(
                [x for x, a in zip(leaves, is_array) if a])

    return wrapper


def check_context(loss_name: str, context: dict[str, Any]) -> None:
    unknown = set(context) - CONTEXT_KEYS
    if unknown:
        raise TypeError(f"{loss_name}.compute_loss_from_embeddings got unknown keyword(s) {sorted(unknown)}; "
                        f"known: {sorted(CONTEXT_KEYS)}.")


class InputKind(enum.Enum):
    """What the dispatcher computes from a batch's features and hands to ``compute_loss_from_embeddings``.

    Open: SPLADE will add sparse vectors.
    """

    EMBEDDINGS = "embeddings"  # per column: the [B, D] sentence embedding (the last layer's)
    LAYER_EMBEDDINGS = "layer_embeddings"  # per hidden state l = 0..L (embeddings output first), per column: [B, D]
    # CrossEncoder losses: the model's logits of (text, text) pairs, laid out as LossInputs.pair_layout says
    # (stcore_jax/cross_encoder/losses/_common.py PAIR_LAYOUTS); handed to ``compute_loss_from_scores``.
    SCORES = "scores"


@dataclasses.dataclass(frozen=True)
class LabelRange:
    """The label values a loss can use, checked on the data before training (1-D labels only): out of
    range, such labels do not fail in the step but train silently wrong (sentence_transformer/data.py
    ``check_label_range``)."""

    loss: str  # the loss whose rule this is, for the message
    need: str  # what it needs, e.g. "labels 0 or 1"
    bad: Callable  # labels [N] (numpy) -> [N] bool: the rows out of range


@dataclasses.dataclass(frozen=True)
class LossInputs:
    """What a loss needs from the trainer: its declaration (:attr:`Loss.inputs`).

    ``kind``: what is embedded (:class:`InputKind`). ``mini_batch_size``: GradCache, embed in chunks of this many
    rows (None: in one pass); ``num_shards``: the data-parallel degree the chunks are laid out for when the
    caller gives none. ``guide``: a guide model whose embeddings of every column the loss also takes (GIST).
    ``needs_key``: the loss samples at random and takes a ``key=``. ``label_range``: the label values it can
    use (:class:`LabelRange`), or None. ``owns_params``: it has trainable parameters (:meth:`Loss.init_params`).
    ``pair_layout``: ``kind=SCORES`` only, which (text, text) pairs the collator forms from the columns and how
    their logits are arranged: ``"pairs"``, ``"anchor_columns"``, ``"mnrl"`` or ``"listwise"``
    (cross_encoder/losses/_common.py ``PAIR_LAYOUTS``); None for embedding losses.
    """

    kind: InputKind = InputKind.EMBEDDINGS
    mini_batch_size: int | None = None
    num_shards: int = 1
    guide: Any = None
    needs_key: bool = False
    label_range: LabelRange | None = None
    owns_params: bool = False
    pair_layout: str | None = None


class Loss:
    """Base class: hyperparameter holder + column/label contract + call into a pure function.

    Subclasses set ``min_inputs``/``max_inputs`` (``None`` = unbounded), ``label`` (``"required"``,
    ``"none"`` or ``"optional"``), ``inputs_doc``/``label_doc`` (human descriptions used in error
    messages), ``inputs`` (a :class:`LossInputs`; a property where it depends on the constructor's
    arguments) and implement :meth:`compute_loss_from_embeddings`.
    """

    min_inputs: int = 1
    max_inputs: int | None = None
    label: str = "none"
    inputs_doc: str = ""
    label_doc: str = "a label column"
    inputs: LossInputs = LossInputs()

    def __init__(self, model=None) -> None:
        # Stored for API compatibility (the trainer reads e.g. the embedding dimension from it);
        # the pure loss functions never call it.
        self.model = model

    @property
    def name(self) -> str:
        return type(self).__name__

    # --- contract -----------------------------------------------------------------------------
    def label_rule(self, num_inputs: int) -> str:
        """``"required"``, ``"none"`` or ``"optional"`` for a batch with ``num_inputs`` columns."""
        return self.label

    def validate_columns(self, num_inputs: int, has_label: bool) -> None:
        """Raise ``ValueError`` (naming this loss and what it expects) if the dataset does not fit."""
        lo, hi = self.min_inputs, self.max_inputs
        if num_inputs < lo or (hi is not None and num_inputs > hi):
            if hi is None:
                count = f"at least {lo} input column{'s' if lo != 1 else ''}"
            elif lo == hi:
                count = f"exactly {lo} input column{'s' if lo != 1 else ''}"
            else:
                count = f"between {lo} and {hi} input columns"
            raise ValueError(f"{self.name} expects {count} {self.inputs_doc}, but the dataset has {num_inputs}.")
        rule = self.label_rule(num_inputs)
        if rule == "required" and not has_label:
            raise ValueError(f"{self.name} needs {self.label_doc} (a column named label/labels/score/scores), "
                             f"but the dataset has none.")
        if rule == "none" and has_label:
            raise ValueError(f"{self.name} takes no label, but the dataset has a label column "
                             f"(label/labels/score/scores); remove it or pick a loss that uses labels.")

    # --- parameters and randomness ---------------------------------------------------------------
    def init_params(self, rng) -> dict:
        """The loss's trainable parameters (a pytree; empty for most losses)."""
        return {}

    @property
    def needs_key(self) -> bool:
        """Whether ``compute_loss_from_embeddings`` needs a ``key=`` (random sub-sampling)."""
        return self.inputs.needs_key

    # --- computation ---------------------------------------------------------------------------
    def compute_loss_from_embeddings(self, embeddings: Sequence[Array], labels=None, **context):
        raise NotImplementedError

    def __call__(self, embeddings: Sequence[Array], labels=None, **context):
        return self.compute_loss_from_embeddings(embeddings, labels, **context)

    def get_config_dict(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{self.name}({self.get_config_dict()})"


class WrapperLoss(Loss):
    """A loss modifier around another loss, ``self.loss`` (MatryoshkaLoss, AdaptiveLayerLoss; later SpladeLoss).

    It takes the wrapped loss's columns and labels, owns its parameters, and declares what the wrapped loss
    declares as changed by :meth:`derive_inputs`. ``wraps``: the input kinds the wrapped loss may need
    (checked at construction and by ``validate_loss``: :meth:`check_wrapped`).
    """

    wraps: frozenset = frozenset({InputKind.EMBEDDINGS})

    def __init__(self, model, loss: Loss) -> None:
        super().__init__(model)
        if not isinstance(loss, Loss):
            raise TypeError(f"{self.name} wraps a stcore_jax loss, got {type(loss).__name__}.")
        self.loss = loss
        self.check_wrapped()

    def derive_inputs(self, inner: LossInputs) -> LossInputs:
        """This wrapper's declaration from the wrapped loss's (override to change what it needs)."""
        return inner

    @property
    def inputs(self) -> LossInputs:
        return self.derive_inputs(self.loss.inputs)

    def check_wrapped(self) -> None:
        """Raise ``ValueError`` if the wrapped loss needs an input this wrapper cannot give it."""
        kind = self.loss.inputs.kind
        if kind not in self.wraps:
            raise ValueError(f"{self.name} cannot wrap {self.loss.name}: {self.loss.name} takes {kind.value}, but "
                             f"{self.name} gives its wrapped loss {' or '.join(k.value for k in self.wraps)}. "
                             f"Nest them the other way round (e.g. AdaptiveLayerLoss(model, MatryoshkaLoss(...)), "
                             f"which Matryoshka2dLoss builds).")

    # The column/label contract and parameters: the wrapped loss's.
    min_inputs = property(lambda self: self.loss.min_inputs)
    max_inputs = property(lambda self: self.loss.max_inputs)
    inputs_doc = property(lambda self: self.loss.inputs_doc)
    label_doc = property(lambda self: self.loss.label_doc)

    def label_rule(self, num_inputs: int) -> str:
        return self.loss.label_rule(num_inputs)

    def validate_columns(self, num_inputs: int, has_label: bool) -> None:
        try:
            self.loss.validate_columns(num_inputs, has_label)
        except ValueError as err:
            raise ValueError(f"{self.name} wrapping {err}") from None

    def init_params(self, rng) -> dict:
        return self.loss.init_params(rng)
