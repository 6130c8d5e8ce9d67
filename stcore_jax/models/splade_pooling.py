"""SpladePooling: masked-LM logits [B, T, V] -> sparse lexical embedding [B, V] (sentence-transformers'
``SpladePooling``), and the same pooling fused with the masked-LM decoder so that the float32 ``[B, T, V]``
logits and their gradient are never held at once.

SPLADE: ``e_v = pool_t f(m_t * x_tv)`` with ``f(x) = log(1 + relu(x))`` (``"relu"``) or ``log(1 + log(1 +
relu(x)))`` (``"log1p_relu"``), ``pool`` = max or sum over the tokens ``t``, ``m`` the attention mask. Padding
contributes ``f(0) = 0``, as the reference's ``logits * mask`` gives. Everything after the logits is float32
(a bfloat16 model's decoder accumulates in float32), as the issue asks for: upcast before log1p and max.
Max pooling takes the max of the raw logits and activates the ``[B, V]`` result (f is monotone: the same
values), which saves the ``[B, T, V]`` log1p work.

Memory. The MLM decoder ``x @ E^T + b`` turns ``[B, T, H]`` into ``[B, T, V]`` float32 (V = 30522: batch 32 x
256 tokens is 1 GB, and its gradient as much again). :func:`splade_pool_decoded` computes the decoder and the
pooling chunk by chunk over the tokens inside one ``jax.checkpoint``-ed function scanned over the chunks:
the forward keeps only the ``[B, V]`` running pool, the backward recomputes one chunk's logits at a time. Max
is exact under any chunking (same values; the gradient of a max goes to its arg-max, as unchunked, except
for 3+ exactly tied positive maxima, which split it differently); a chunked sum adds in another order
(float32 rounding, ~1e-7 relative). Measured with XLA's memory analysis of a compiled gradient (random BERT
MLM, hidden 64, V = 30522, batch 16 x 128 tokens; one [B, T, V] float32 array = 238 MiB): pooling the
materialised logits 754 MiB of temporaries, 16-token chunks 196 MiB, the automatic default (4 chunks) 308 MiB.
The unused ``[B, T, V]`` logits output of the MLMTransformer is dead code XLA removes.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp

from stcore_jax.models.layers import tied_logits
from stcore_jax.models.module import Module, ensure_dir, read_json, write_json

POOLING_STRATEGIES = ("max", "sum")
ACTIVATIONS = ("relu", "log1p_relu")
#: Token chunks of the fused decoder+pooling are sized so that one chunk's float32 logits take at most this
#: many bytes (``chunk_size=None``); the batch dimension counted is the traced (global) one.
AUTO_CHUNK_BYTES = 64 * 2**20
#: The features key under which :class:`stcore_jax.models.mlm_transformer.MLMTransformer` passes the decoder's
#: inputs alongside its logits, so that SpladePooling can fuse the two.
DECODER_INPUTS = "mlm_decoder_inputs"


class DecoderInputs(NamedTuple):
    """The masked-LM decoder's operands: ``logits = hidden @ table.T + bias`` (float32), kept unevaluated.

    ``logits`` is the ``token_embeddings`` array the same module output (under ``jax.jit`` it is dead code when
    only the fused pooling reads the decoder, and XLA drops it); SpladePooling fuses only while
    ``features["token_embeddings"] is logits``, i.e. when no module in between replaced the logits.
    """

    hidden_bth: jax.Array  # [B, T, H] the head's transformed hidden states, in the compute dtype
    table_vh: jax.Array  # [V, H] the word embeddings (the tied decoder weight)
    bias_v: jax.Array | None  # [V] the decoder's bias, or None
    logits: jax.Array  # [B, T, V] float32: tied_logits(hidden, table, bias)


def check_config(pooling_strategy: str, activation_function: str, chunk_size) -> None:
    """ValueError (naming the argument and its choices) for a configuration the reference rejects too."""
    if pooling_strategy not in POOLING_STRATEGIES:
        raise ValueError(f"SpladePooling: pooling_strategy must be one of {POOLING_STRATEGIES}, "
                         f"got {pooling_strategy!r}")
    if activation_function not in ACTIVATIONS:
        raise ValueError(f"SpladePooling: activation_function must be one of {ACTIVATIONS}, "
                         f"got {activation_function!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int)):
        raise ValueError(f"SpladePooling: chunk_size must be an int (tokens per chunk; <= 0: the whole sequence "
                         f"at once) or None (automatic), got {chunk_size!r}")


def splade_activation(x, activation_function: str = "relu"):
    """``log(1 + relu(x))``, or ``log(1 + log(1 + relu(x)))`` for ``"log1p_relu"`` (float32, elementwise)."""
    x = jnp.log1p(jax.nn.relu(x.astype(jnp.float32)))
    return jnp.log1p(x) if activation_function == "log1p_relu" else x


def _masked(logits, mask_bt):
    """Logits float32 with padding positions 0 (the reference's ``logits * mask``). ``where``: the same values for
    finite logits, but a non-finite logit at padding (no output depends on it) cannot become NaN, nor its grad."""
    return jnp.where(mask_bt[..., None] > 0, logits.astype(jnp.float32), 0.0)


def _token_stat(logits, mask_bt, pooling_strategy, activation_function):
    """What a token chunk contributes, ``[B, T, V]`` -> ``[B, V]``: for ``"max"`` the max of the masked *raw*
    logits (the activation is monotone non-decreasing with f(0) = 0, so ``max_t f(x_t) = f(max_t x_t)``, the
    same float, and f then runs on [B, V] only, not [B, T, V]); for ``"sum"`` the sum of the activations."""
    x = _masked(logits, mask_bt)
    if pooling_strategy == "max":
        return jnp.max(x, axis=1)
    return jnp.sum(splade_activation(x, activation_function), axis=1)


def _finish(stat_bv, pooling_strategy, activation_function):
    return splade_activation(stat_bv, activation_function) if pooling_strategy == "max" else stat_bv


def splade_pool(logits_btv, mask_bt, *, pooling_strategy: str = "max", activation_function: str = "relu"):
    """SPLADE pooling of materialised logits: ``[B, T, V]``, ``[B, T]`` -> ``[B, V]`` float32, the values of the
    reference's ``SpladePooling.forward`` (its gradient too, but for exactly tied maxima)."""
    stat = _token_stat(logits_btv, mask_bt, pooling_strategy, activation_function)
    return _finish(stat, pooling_strategy, activation_function)


def chunk_tokens(chunk_size: int | None, batch: int, tokens: int, vocab: int) -> int:
    """Tokens per chunk: ``chunk_size`` (capped at ``tokens``; <= 0: all), or for None the most whose float32
    logits fit :data:`AUTO_CHUNK_BYTES`, evened out so that the chunks differ by at most one token's padding."""
    if chunk_size is not None:
        return tokens if chunk_size <= 0 else min(chunk_size, tokens)
    per_token = max(batch * vocab * 4, 1)
    n = -(-(tokens * per_token) // AUTO_CHUNK_BYTES)  # chunks needed to stay within the budget
    return -(-tokens // max(n, 1))


def splade_pool_decoded(hidden_bth, mask_bt, table_vh, bias_v=None, *, pooling_strategy: str = "max",
                        activation_function: str = "relu", chunk_size: int | None = None):
    """SPLADE pooling of the decoder's output, computed per token chunk: ``hidden [B, T, H]``, ``mask [B, T]``,
    the tied decoder ``table [V, H]`` and ``bias [V]`` -> ``[B, V]`` float32, equal to
    ``splade_pool(tied_logits(hidden, table, bias), mask)``.

    ``chunk_size``: tokens per chunk (None: automatic, see :func:`chunk_tokens`; <= 0: one chunk). With more
    than one chunk, each chunk's logits are computed and reduced inside one ``jax.checkpoint`` scanned over the
    chunks: under ``jax.grad`` neither the ``[B, T, V]`` logits nor their gradient exist at once, only
    ``[B, chunk, V]`` (the backward recomputes each chunk's logits, one more decoder matmul). The last chunk is
    padded with masked tokens. One chunk: the plain computation (no recomputation).
    """
    b, t, h = hidden_bth.shape
    c = chunk_tokens(chunk_size, b, t, table_vh.shape[0])

    def stat(hidden_bch, mask_bc):
        return _token_stat(tied_logits(hidden_bch, table_vh, bias_v), mask_bc, pooling_strategy, activation_function)

    if c >= t:
        return _finish(stat(hidden_bth, mask_bt), pooling_strategy, activation_function)
    n = -(-t // c)
    pad = n * c - t
    hidden = jnp.pad(hidden_bth, ((0, 0), (0, pad), (0, 0))).reshape(b, n, c, h).swapaxes(0, 1)
    mask = jnp.pad(mask_bt, ((0, 0), (0, pad))).reshape(b, n, c).swapaxes(0, 1)
    stat = jax.checkpoint(stat)

    def step(acc_bv, chunk):
        s = stat(*chunk)
        return (jnp.maximum(acc_bv, s) if pooling_strategy == "max" else acc_bv + s), None

    init = jnp.full((b, table_vh.shape[0]), -jnp.inf if pooling_strategy == "max" else 0.0, jnp.float32)
    acc, _ = jax.lax.scan(step, init, (hidden, mask))
    return _finish(acc, pooling_strategy, activation_function)


class SpladePooling(Module):
    """``SpladePooling(pooling_strategy="max", activation_function="relu", embedding_dimension=None,
    chunk_size=None)``: ``token_embeddings`` (MLM logits [B, T, V]) -> ``sentence_embedding`` [B, V] float32.

    After an :class:`~stcore_jax.models.mlm_transformer.MLMTransformer` the decoder and the pooling are fused
    (:func:`splade_pool_decoded`); otherwise the given logits are pooled. ``chunk_size`` (tokens; not saved, as
    in the reference) sizes the fused path's chunks; unlike the reference, None means *automatic* (chunks of
    at most :data:`AUTO_CHUNK_BYTES` of logits) rather than one chunk, and <= 0 means one chunk. Values are
    the same either way (sums up to float32 rounding). ``word_embedding_dimension`` (the v5 name) is accepted
    for ``embedding_dimension``.
    """

    config_keys = ["pooling_strategy", "activation_function", "embedding_dimension"]
    st_type = "sentence_transformers.sparse_encoder.models.SpladePooling"  # v5 layout: read by 5.0-6.2

    def __init__(self, pooling_strategy: str = "max", activation_function: str = "relu",
                 embedding_dimension: int | None = None, chunk_size: int | None = None,
                 word_embedding_dimension: int | None = None):
        check_config(pooling_strategy, activation_function, chunk_size)
        self.pooling_strategy = pooling_strategy
        self.activation_function = activation_function
        self.embedding_dimension = embedding_dimension if embedding_dimension is not None else word_embedding_dimension
        self.chunk_size = chunk_size

    def apply(self, params, features, *, dropout_key=None):
        logits, mask = features["token_embeddings"], features["attention_mask"]
        decoder = features.get(DECODER_INPUTS)
        if decoder is not None and decoder.logits is logits:
            emb = splade_pool_decoded(decoder.hidden_bth, mask, decoder.table_vh, decoder.bias_v,
                                      pooling_strategy=self.pooling_strategy,
                                      activation_function=self.activation_function, chunk_size=self.chunk_size)
        else:
            emb = splade_pool(logits, mask, pooling_strategy=self.pooling_strategy,
                              activation_function=self.activation_function)
        return {**features, "sentence_embedding": emb}

    def get_embedding_dimension(self) -> int | None:
        return self.embedding_dimension

    def save(self, path: str) -> None:
        """``config.json`` with the v5 key ``word_embedding_dimension`` (6.x reads it as ``embedding_dimension``)."""
        ensure_dir(path)
        write_json(os.path.join(path, "config.json"), {
            "pooling_strategy": self.pooling_strategy, "activation_function": self.activation_function,
            "word_embedding_dimension": self.embedding_dimension})

    @classmethod
    def load(cls, path: str, **kwargs) -> SpladePooling:
        cfg_path = os.path.join(path, "config.json")
        cfg = read_json(cfg_path) if os.path.isfile(cfg_path) else {}
        known = {"pooling_strategy", "activation_function", "embedding_dimension", "word_embedding_dimension",
                 "chunk_size"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"{cfg_path}: unknown SpladePooling settings {unknown}; known: {sorted(known)}")
        try:
            return cls(**cfg, **kwargs)
        except ValueError as e:
            raise ValueError(f"{cfg_path}: {e}") from None
