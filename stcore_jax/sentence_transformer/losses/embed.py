"""The trainer-facing entry point of every loss: features in, scalar out.

The trainer never embeds columns itself. It calls::

    compute_loss(loss, forward, params, features, labels, *, dropout_key=None, mask=None,
                 num_shards=None, loss_params=None, guide_features=None, guide_params=None, key=None,
                 packed=None)

``forward``
    ``forward(params, features_dict, dropout_key=...) -> features_dict`` (``SentenceTransformer.forward``).
``features``
    One feature dict per input column (``input_ids`` ``[B, T_c]``, ``attention_mask``, optionally
    ``token_type_ids``, ``prompt_length`` ``[B]``). Every column has the same ``B`` rows.
``dropout_key``
    ``None`` (no dropout) or ONE typed PRNG key (``jax.random.key``) for the whole step. Row ``i`` of
    column ``c`` runs with the key ``fold_in(fold_in(dropout_key, c), i)`` (:func:`row_keys`), ``i``
    being the GLOBAL row index, so the dropout masks of an example do not depend on how the batch
    is chunked (GradCache) or sharded.
``mask``, ``num_shards``, ``loss_params``
    Passed to ``loss.compute_loss_from_embeddings`` as ``mask``, ``num_shards``, ``params``.
``guide_features``, ``guide_params``
    GIST losses only. ``guide_features`` are the guide model's own features per column (needed when the
    guide tokenizes differently; ``None`` = reuse ``features``). ``guide_params`` default to
    ``loss.guide.params``; pass them as a jit argument to keep a large guide out of the compiled
    program's constants. The guide runs deterministically (no dropout) and without gradient.
``key``
    The key for losses that sample (``loss.needs_key``); ``None`` derives one from ``dropout_key``.
``packed``
    The ``packed_*`` arrays of a sequence-packed batch (models/packing.py), or ``None``. Only losses that
    :func:`supports_packing` take one.

Returns what ``compute_loss_from_embeddings`` returns: a float32 scalar or a dict of them.

What the call computes is the loss's declaration, ``loss.inputs`` (:class:`stcore_jax.base.loss.LossInputs`),
not a guess from its class or attributes:

* ``kind=EMBEDDINGS``: every column's ``[B, D]`` sentence embedding, in one forward pass over the stacked
  columns (:func:`embed_columns`), or with GradCache in chunks of ``mini_batch_size`` rows
  (:func:`stcore_jax.sentence_transformer.losses.gradcache.cached_embed_columns`; also for a wrapper around a
  cached loss, e.g. ``MatryoshkaLoss(model, CachedMultipleNegativesRankingLoss(model), dims)``, as the reference);
* ``kind=LAYER_EMBEDDINGS`` (``AdaptiveLayerLoss``, ``Matryoshka2dLoss``): ``[L + 1][C]`` arrays ``[B, D]``, the
  pipeline after the encoder applied to every hidden state (``forward(..., output_hidden_states=True)``'s
  ``layer_embeddings``), from the same single forward pass with the same per-row dropout keys;
* ``guide``: plus ``guide_embeddings`` of every column (GIST); ``needs_key``: plus a ``key``.

The result goes to ``compute_loss_from_embeddings``. :func:`validate_loss` checks, before anything is
tokenized or compiled, that a declaration can be met for a given model and packing setting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from stcore_jax.base.loss import InputKind, WrapperLoss
from stcore_jax.sentence_transformer.losses.adaptive_layer import check_layer_model
from stcore_jax.sentence_transformer.losses.columns import (  # noqa: F401 (batch_size, stackable: re-exported)
    batch_size,
    embed_columns,
    row_keys,
    stackable,
)
from stcore_jax.sentence_transformer.losses.gradcache import cached_embed_columns, chunked_embed_columns

Array = jax.Array

# What a SentenceTransformer computes for a loss (CrossEncoder losses take scores: InputKind.SCORES, rejected here).
KINDS = frozenset({InputKind.EMBEDDINGS, InputKind.LAYER_EMBEDDINGS})

# fold_in data for the loss's own sampling key, chosen far from any column index.
_LOSS_KEY_SALT = 0x7FFF_FFF0


# --- guide model (GIST) ----------------------------------------------------------------------------
def has_guide(loss) -> bool:
    return loss.inputs.guide is not None


def guide_needs_own_features(loss) -> bool:
    """The reference's ``must_retokenize``: the guide tokenizes differently from the trained model
    (other vocabulary, or a shorter ``max_seq_length``), so it needs its own ``guide_features``."""
    cached = getattr(loss, "_guide_needs_own_features", None)  # a memo of this function, set below
    if cached is not None:
        return cached
    model, guide = loss.model, loss.inputs.guide
    try:
        needs = (model.tokenizer.get_vocab() != guide.tokenizer.get_vocab()
                 or guide.max_seq_length < model.max_seq_length)
    except AttributeError:  # no model given, or not a SentenceTransformer: trust the caller
        needs = False
    try:
        loss._guide_needs_own_features = needs
    except AttributeError:
        pass
    return needs


def guide_inputs(loss, features, guide_features, guide_params):
    """``(guide_forward, guide_params, guide_features)`` for a loss that declares a guide, with the checks."""
    if guide_features is None:
        if guide_needs_own_features(loss):
            raise ValueError(
                f"{loss.name}: the guide model tokenizes differently from the trained model "
                f"(other vocabulary or shorter max_seq_length); pass guide_features= tokenized with the guide.")
        guide_features = features
    if len(guide_features) != len(features):
        raise ValueError(f"Got {len(features)} feature columns but {len(guide_features)} guide feature columns.")
    guide = loss.inputs.guide
    if guide_params is None:
        guide_params = guide.params
    return guide.forward, guide_params, list(guide_features)


def embed_guide(loss, features, guide_features=None, guide_params=None, *, mini_batch_size=None,
                num_shards: int = 1) -> list[Array]:
    """The guide's embeddings of every column: deterministic (no dropout), without gradient; in chunks of
    ``mini_batch_size`` rows for a GradCache loss."""
    forward, gparams, gfeats = guide_inputs(loss, features, guide_features, guide_params)
    if mini_batch_size is not None:
        return chunked_embed_columns(forward, gparams, gfeats, mini_batch_size=mini_batch_size, num_shards=num_shards)
    gparams = jax.lax.stop_gradient(gparams)
    return [jax.lax.stop_gradient(forward(gparams, f)["sentence_embedding"]) for f in gfeats]


# --- dispatch ------------------------------------------------------------------------------------
def loss_context(loss, *, mask=None, num_shards=None, loss_params=None, key=None, dropout_key=None) -> dict:
    """Keywords for ``compute_loss_from_embeddings``, leaving out the ones that are not set.

    A loss that samples (``inputs.needs_key``) gets ``key``, else one derived from ``dropout_key``; with
    neither (an evaluation step) a fixed key, so that evaluation losses are repeatable.
    """
    ctx = {}
    if mask is not None:
        ctx["mask"] = mask
    if num_shards is not None:
        ctx["num_shards"] = num_shards
    if loss_params is not None:
        ctx["params"] = loss_params
    if loss.inputs.needs_key:
        if key is None:
            key = jax.random.fold_in(jax.random.key(0) if dropout_key is None else dropout_key, _LOSS_KEY_SALT)
        ctx["key"] = key
    return ctx


def unpackable_reason(spec) -> str | None:
    """Why a loss with declaration ``spec`` cannot take a sequence-packed batch (None: it can)."""
    if spec.kind is InputKind.LAYER_EMBEDDINGS:
        return "per-layer embeddings, from every hidden state of every column"
    if spec.mini_batch_size is not None:
        return f"GradCache, in mini-batches of {spec.mini_batch_size} rows"
    if spec.guide is not None:
        return "with a guide model's embeddings of the same rows"
    if spec.kind is not InputKind.EMBEDDINGS:
        return spec.kind.value
    return None


def supports_packing(loss) -> bool:
    """Whether ``compute_loss`` can embed this loss's columns from a sequence-packed batch: only the plain
    path (one forward over all columns, last-layer embeddings), not GradCache, a guide or per-layer embeddings."""
    return unpackable_reason(loss.inputs) is None


def _wrapper_chain(loss):
    """``loss`` and, through :class:`WrapperLoss` ``.loss``, the losses it wraps, outermost first."""
    chain = [loss]
    while isinstance(chain[-1], WrapperLoss) and chain[-1].loss not in chain:
        chain.append(chain[-1].loss)
    return chain


def validate_loss(loss, model, *, packing=None, dataset: str | None = None) -> None:
    """Raise a ``ValueError`` that says what is wrong, in which loss, and what to do, if ``loss``'s declaration
    cannot be met when training ``model`` (a SentenceTransformer) with ``packing`` (the trainer's
    ``sequence_packing``: True forces it on; None packs where it can, False never). ``dataset``: the name of the
    dataset the loss trains on, for the message. Cheap and pure: the trainer calls it before it tokenizes or
    compiles anything."""
    for lo in _wrapper_chain(loss):
        if isinstance(lo, WrapperLoss):
            lo.check_wrapped()
    spec = loss.inputs
    if spec.kind not in KINDS:
        raise ValueError(f"{loss.name} takes {spec.kind.value}, which a SentenceTransformer does not compute (it "
                         f"gives {' or '.join(sorted(k.value for k in KINDS))}); train it with the model family it "
                         f"belongs to.")
    reason = unpackable_reason(spec)
    if packing is True and reason is not None:
        where = "" if dataset is None else f" of dataset {dataset!r}"
        raise ValueError(f"sequence_packing=True, but loss {loss.name}{where} embeds its columns itself ({reason}) "
                         f"and cannot take a sequence-packed batch. Train with sequence_packing=None (packs where the "
                         f"losses allow) or False.")
    if spec.kind is InputKind.LAYER_EMBEDDINGS:
        check_layer_model(loss.name, model)


def compute_loss(loss, forward: Callable, params, features: Sequence[dict], labels=None, *, dropout_key=None,
                 mask=None, num_shards=None, loss_params=None, guide_features=None, guide_params=None, key=None,
                 packed=None):
    """Loss of one batch from its features (see the module docstring for every argument), as ``loss.inputs``
    declares: last-layer or per-layer embeddings, with GradCache when ``mini_batch_size`` is set (a wrapper
    around a GradCache loss declares the wrapped loss's, as the reference chunks with it), plus the guide's
    embeddings when a guide is declared."""
    spec = loss.inputs
    features = list(features)
    reason = unpackable_reason(spec)
    if packed is not None and reason is not None:
        raise ValueError(f"{loss.name} embeds its columns itself ({reason}) and cannot take a sequence-packed "
                         f"batch; train with sequence_packing=False")
    if spec.kind not in KINDS:
        raise ValueError(f"{loss.name} takes {spec.kind.value}, which a SentenceTransformer does not compute.")
    layers = spec.kind is InputKind.LAYER_EMBEDDINGS
    shards = int(num_shards or spec.num_shards)
    ctx = loss_context(loss, mask=mask, num_shards=num_shards, loss_params=loss_params, key=key,
                       dropout_key=dropout_key)
    if spec.mini_batch_size is None:
        embeddings = embed_columns(forward, params, features, dropout_key, num_shards=shards, packed=packed,
                                   layers=layers)
    elif layers:
        raise ValueError(f"{loss.name}: per-layer embeddings with GradCache are not supported (validate_loss).")
    else:
        embeddings = cached_embed_columns(forward, params, features, dropout_key,
                                          mini_batch_size=spec.mini_batch_size, num_shards=shards)
    if spec.guide is not None:
        ctx["guide_embeddings"] = embed_guide(loss, features, guide_features, guide_params,
                                              mini_batch_size=spec.mini_batch_size, num_shards=shards)
    return loss.compute_loss_from_embeddings(embeddings, labels, **ctx)
