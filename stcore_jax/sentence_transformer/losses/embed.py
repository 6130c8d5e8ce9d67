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

If the loss defines its own ``compute_loss`` (the GradCache losses in :mod:`stcore_jax.sentence_transformer.losses.cached`),
the call goes there with the same keywords. Otherwise every column is embedded in one forward pass
(:func:`embed_columns`; with GradCache when the loss wraps a cached loss, e.g.
``MatryoshkaLoss(model, CachedMultipleNegativesRankingLoss(model), dims)``) and the result goes to
``compute_loss_from_embeddings``. Losses that need per-layer embeddings (``AdaptiveLayerLoss``,
``Matryoshka2dLoss``) are not handled here: they need the forward's hidden states.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_PER_LAYER_LOSSES = frozenset({"AdaptiveLayerLoss", "Matryoshka2dLoss"})

# fold_in data for the loss's own sampling key, chosen far from any column index.
_LOSS_KEY_SALT = 0x7FFF_FFF0


def batch_size(features: dict) -> int:
    """The row count of one column's features (the leading axis of ``input_ids``)."""
    ids = features.get("input_ids")
    if ids is None:
        ids = next(v for v in features.values() if getattr(v, "ndim", 0) >= 1)
    return int(ids.shape[0])


def row_keys(dropout_key, column: int, rows):
    """Per-row dropout keys of one column: ``fold_in(fold_in(dropout_key, column), rows[j])``.

    Args:
      dropout_key: one PRNG key, or ``None`` (returns ``None``: no dropout).
      column: the input column's index.
      rows: ``[n]`` int global row indices.

    Returns:
      ``[n]`` keys (typed keys for a typed ``dropout_key``), or ``None``.
    """
    if dropout_key is None:
        return None
    base = jax.random.fold_in(dropout_key, column)
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.asarray(rows, jnp.uint32))


def _same_entry(a, b) -> bool:
    """Whether two columns agree on one feature entry so that they can share a forward pass."""
    if a is b:
        return True
    if getattr(a, "ndim", 0) >= 1 or getattr(b, "ndim", 0) >= 1:
        return getattr(a, "shape", None) == getattr(b, "shape", None) and a.dtype == b.dtype
    try:  # scalars (a prompt length, a Router task): equal concrete values only; a tracer is not comparable
        return bool(np.all(np.asarray(a) == np.asarray(b))) if type(a) is type(b) else False
    except Exception:  # noqa: BLE001
        return False


def stackable(features: Sequence[dict], num_shards: int = 1) -> bool:
    """Columns with the same feature keys, array shapes and dtypes and equal non-batched entries
    (all columns of a trainer batch share one length bucket), whose batch splits into ``num_shards``."""
    first = features[0]
    if len(features) < 2 or batch_size(first) % num_shards:
        return False
    return all(f.keys() == first.keys() and all(_same_entry(first[k], f[k]) for k in f) for f in features[1:])


def _interleave(xs, num_shards: int):
    """``C`` arrays ``[B, ...]`` -> ``[C * B, ...]`` laid out shard-major (``[S, C, B / S, ...]``), so a
    batch-sharded input stays on its devices: each shard holds its own rows of every column."""
    b = xs[0].shape[0] // num_shards
    stacked = jnp.stack([x.reshape((num_shards, b) + x.shape[1:]) for x in xs], axis=1)
    return stacked.reshape((len(xs) * num_shards * b,) + xs[0].shape[1:])


def _deinterleave(y, num_columns: int, num_shards: int):
    """Inverse of :func:`_interleave`: ``[C * B, ...]`` -> ``C`` arrays ``[B, ...]``."""
    b = y.shape[0] // (num_columns * num_shards)
    y = y.reshape((num_shards, num_columns, b) + y.shape[1:])
    return [y[:, c].reshape((num_shards * b,) + y.shape[3:]) for c in range(num_columns)]


def embed_columns(forward: Callable, params, features: Sequence[dict], dropout_key=None, *,
                  num_shards: int = 1, packed: dict | None = None) -> list[Array]:
    """Embed every column (the uncached path): a list of ``[B, D]`` arrays, differentiable w.r.t.
    ``params``, with the per-row dropout keys of :func:`row_keys`.

    Columns of one shape run as a single forward over ``C * B`` rows (measured on an H100, bert-base
    bf16, 2 x 256 rows of 128 tokens: two separate forward+backward passes in one program took 413 ms,
    while one pass over 512 rows took 173 ms; bench/RESULTS.md). Rows are independent and keep their own
    dropout keys, so the embeddings are those of the per-column passes.

    ``packed``: the ``packed_*`` arrays of a sequence-packed batch (sentence_transformer/data.py ``collate_packed``), which
    hold the tokens of every column; the columns then carry ``attention_mask`` and ``pack_start`` (and the
    same keys each), and always run as one forward.
    """
    features = list(features)
    keys = [row_keys(dropout_key, c, jnp.arange(batch_size(f))) for c, f in enumerate(features)]
    if packed is not None and len(features) > 1 and not stackable(features, num_shards):
        raise ValueError("a sequence-packed batch needs columns with the same feature keys and shapes "
                         "(sentence_transformer/data.py collate_packed makes them so)")
    if packed is not None or stackable(features, num_shards):
        merged = {k: _interleave([f[k] for f in features], num_shards) if getattr(v, "ndim", 0) >= 1 else v
                  for k, v in features[0].items()}
        merged.update(packed or {})
        merged_keys = None if dropout_key is None else _interleave(keys, num_shards)
        emb = forward(params, merged, dropout_key=merged_keys)["sentence_embedding"]
        return _deinterleave(emb, len(features), num_shards)
    return [forward(params, f, dropout_key=k)["sentence_embedding"] for f, k in zip(features, keys)]


# --- guide model (GIST) ----------------------------------------------------------------------------
def has_guide(loss) -> bool:
    return getattr(loss, "guide", None) is not None


def guide_needs_own_features(loss) -> bool:
    """The reference's ``must_retokenize``: the guide tokenizes differently from the trained model
    (other vocabulary, or a shorter ``max_seq_length``), so it needs its own ``guide_features``."""
    cached = getattr(loss, "_guide_needs_own_features", None)
    if cached is not None:
        return cached
    model, guide = getattr(loss, "model", None), loss.guide
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
    """``(guide_forward, guide_params, guide_features)`` for a GIST loss, with the checks."""
    if guide_features is None:
        if guide_needs_own_features(loss):
            raise ValueError(
                f"{type(loss).__name__}: the guide model tokenizes differently from the trained model "
                f"(other vocabulary or shorter max_seq_length); pass guide_features= tokenized with the guide.")
        guide_features = features
    if len(guide_features) != len(features):
        raise ValueError(f"Got {len(features)} feature columns but {len(guide_features)} guide feature columns.")
    if guide_params is None:
        guide_params = loss.guide.params
    return loss.guide.forward, guide_params, list(guide_features)


def embed_guide(loss, features, guide_features=None, guide_params=None) -> list[Array]:
    """The guide's embeddings of every column: deterministic (no dropout), without gradient."""
    forward, gparams, gfeats = guide_inputs(loss, features, guide_features, guide_params)
    gparams = jax.lax.stop_gradient(gparams)
    return [jax.lax.stop_gradient(forward(gparams, f)["sentence_embedding"]) for f in gfeats]


# --- dispatch ------------------------------------------------------------------------------------
def loss_context(loss, *, mask=None, num_shards=None, loss_params=None, key=None, dropout_key=None) -> dict:
    """Keywords for ``compute_loss_from_embeddings``, leaving out the ones that are not set."""
    ctx = {}
    if mask is not None:
        ctx["mask"] = mask
    if num_shards is not None:
        ctx["num_shards"] = num_shards
    if loss_params is not None:
        ctx["params"] = loss_params
    if getattr(loss, "needs_key", False):
        if key is None:
            if dropout_key is None:
                raise ValueError(f"{type(loss).__name__} samples at random: pass key= (or a dropout_key).")
            key = jax.random.fold_in(dropout_key, _LOSS_KEY_SALT)
        ctx["key"] = key
    return ctx


def loss_chain(loss):
    """``loss`` and the losses it wraps (``MatryoshkaLoss(...).loss``, ...), outermost first."""
    chain = []
    while loss is not None and loss not in chain:
        chain.append(loss)
        loss = getattr(loss, "loss", None)
    return chain


def supports_packing(loss) -> bool:
    """Whether ``compute_loss`` can embed this loss's columns from a sequence-packed batch: only the plain
    path (one forward over all columns), not GradCache, guide models or per-layer embeddings."""
    chain = loss_chain(loss)
    return not any(callable(getattr(lo, "compute_loss", None)) or has_guide(lo) or
                   getattr(lo, "needs_layer_embeddings", False) or type(lo).__name__ in _PER_LAYER_LOSSES
                   for lo in chain)


def compute_loss(loss, forward: Callable, params, features: Sequence[dict], labels=None, *, dropout_key=None,
                 mask=None, num_shards=None, loss_params=None, guide_features=None, guide_params=None, key=None,
                 packed=None):
    """Loss of one batch from its features (see the module docstring for every argument).

    A wrapper (``MatryoshkaLoss``) around a GradCache loss embeds with GradCache, using the wrapped
    loss's ``mini_batch_size`` (as the reference does); a wrapper around a GIST loss gets the guide
    embeddings of the wrapped loss's guide.
    """
    features = list(features)
    own = getattr(loss, "compute_loss", None)
    if packed is not None and not supports_packing(loss):
        raise ValueError(f"{type(loss).__name__} embeds its columns itself (GradCache, a guide model or per-layer "
                         f"embeddings) and cannot take a sequence-packed batch; train with sequence_packing=False")
    if own is not None:
        return own(forward, params, features, labels, dropout_key=dropout_key, mask=mask, num_shards=num_shards,
                   loss_params=loss_params, guide_features=guide_features, guide_params=guide_params, key=key)
    if getattr(loss, "needs_layer_embeddings", False) or type(loss).__name__ in _PER_LAYER_LOSSES:
        raise NotImplementedError(f"{type(loss).__name__} needs per-layer embeddings (the forward's hidden states), "
                                  f"which compute_loss does not produce.")
    chain = loss_chain(loss)
    cached = next((inner for inner in chain[1:] if callable(getattr(inner, "compute_loss", None))
                   and getattr(inner, "mini_batch_size", None)), None)
    ctx = loss_context(loss, mask=mask, num_shards=num_shards, loss_params=loss_params, key=key,
                       dropout_key=dropout_key)
    guided = next((inner for inner in chain if has_guide(inner)), None)
    if cached is None:
        embeddings = embed_columns(forward, params, features, dropout_key, num_shards=int(num_shards or 1),
                                   packed=packed)
        if guided is not None:
            ctx["guide_embeddings"] = embed_guide(guided, features, guide_features, guide_params)
    else:
        from stcore_jax.sentence_transformer.losses.cached import cached_embed_columns, chunked_embed_columns

        size, shards = cached.mini_batch_size, int(num_shards or getattr(cached, "num_shards", 1))
        embeddings = cached_embed_columns(forward, params, features, dropout_key, mini_batch_size=size,
                                          num_shards=shards)
        if guided is not None:
            g_forward, g_params, g_features = guide_inputs(guided, features, guide_features, guide_params)
            ctx["guide_embeddings"] = chunked_embed_columns(g_forward, g_params, g_features, mini_batch_size=size,
                                                            num_shards=shards)
    return loss.compute_loss_from_embeddings(embeddings, labels, **ctx)
