"""Building blocks shared by the encoders: activations, keyed dropout, masked attention.

Dropout here is a pure function of an explicit PRNG key (``None`` = deterministic), so that a
forward pass can be replayed bit-for-bit (GradCache re-runs each chunk with the same keys).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx


def gelu_erf(x):
    """Exact GELU as PyTorch computes it, ``x / 2 * (1 + erf(x / sqrt(2)))``, in float32.

    ``jax.nn.gelu(approximate=False)`` evaluates ``erfc`` instead, which on CPU costs about 2.5x
    ``erf``: the feed-forward activation alone was ~10% of MiniLM's encode time (bench/RESULTS.md).
    The two forms differ by float32 rounding (< 3e-7 on MiniLM's STS-B embeddings).
    """
    x32 = x.astype(jnp.float32)
    return (x32 * 0.5 * (1.0 + jax.lax.erf(x32 * (1.0 / math.sqrt(2.0))))).astype(x.dtype)


ACTIVATIONS = {
    "gelu": gelu_erf,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str):
    """Look up a Hugging Face ``hidden_act`` name."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"Unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}") from None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Packing:
    """Several sequences per row (sequence packing): how the encoders tell them apart.

    ``segment_ids`` [B, T] int32: 0 = padding; the tokens of one sequence share one positive id and
    sit contiguously. ``position_ids`` [B, T] int32: each token's 0-based position in its own
    sequence (what it would be alone in a row). Attention stays inside a segment, so every sequence
    gets the hidden states it would get alone in a padded row (to float rounding).
    """

    segment_ids: jax.Array
    position_ids: jax.Array

    def attention_mask(self):
        """[B, T, T] bool: query ``q`` may attend to key ``k`` (same segment, not padding)."""
        seg = self.segment_ids
        return (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenKeys:
    """Dropout keys of packed rows: one key per *sequence*, looked up per token, so that a sequence
    draws the masks it would draw alone in a row of the same length (:func:`dropout`), however it
    was packed or sharded.

    ``keys`` [N] typed keys, sequences in the order ``[S, N / S]`` (``S`` shards). ``sequence``
    [S, R * T] int32: per token of shard ``s``'s ``R`` rows, the index of its sequence among that
    shard's ``N / S`` (any valid index for padding). ``positions`` [S * R, T] int32: each token's
    position in its sequence.
    """

    keys: jax.Array
    sequence: jax.Array
    positions: jax.Array

    def token_seeds(self):
        """[S * R, T] uint32: each token's sequence seed (``_key_seed`` of its key)."""
        shards = self.sequence.shape[0]
        seeds = _key_seed(self.keys).reshape(shards, -1)
        return jnp.take_along_axis(seeds, self.sequence, axis=1).reshape(self.positions.shape)


def _key_batched(key) -> bool:
    """True for a batch of keys (one per row): typed keys with ndim 1, or raw uint32 keys [B, 2]."""
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    return key.ndim == (1 if typed else 2)


def _mix32(x):
    """A 32-bit integer finaliser ("lowbias32", full avalanche): uint32 -> uint32, elementwise."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _key_seed(key):
    """One uint32 seed per key (``[]`` or ``[B]``), mixed from every word of the key's data."""
    data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    data = data.astype(jnp.uint32)
    seed = jnp.zeros(data.shape[:-1], jnp.uint32)
    for i in range(data.shape[-1]):
        seed = _mix32(seed ^ data[..., i] ^ jnp.uint32(0x9E3779B9 * (i + 1) & 0xFFFFFFFF))
    return seed


def _element_counter(shape):
    """``[*shape]`` uint32 row-major element index."""
    count = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        count = count + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride & 0xFFFFFFFF)
        stride *= shape[axis]
    return count


def dropout(x, rate: float, key):
    """Inverted dropout with an explicit key; identity when ``key`` is None or ``rate`` is 0.

    ``key`` may be one key or one key per row of ``x`` (shape [B]). Per-row keys make each
    example's mask independent of how the batch is chunked or sharded, so GradCache's chunked
    replay and a sharded step draw exactly the masks of the plain full-batch step.

    The mask is a counter-based hash of (key, element index) rather than ``jax.random.bernoulli``:
    each element costs a handful of integer ops that XLA fuses into the consumer, whereas threefry
    per row was ~20% of a bert-base training step on GPU (bench/RESULTS.md). Keep probability is
    ``1 - rate`` to within 2**-32; the masks are not those of any PyTorch generator (neither were
    threefry's).
    """
    if key is None or rate == 0.0:
        return x
    if isinstance(key, TokenKeys):
        seed, counter = _packed_seed_counter(x, key)
    elif _key_batched(key):
        seed = _key_seed(key).reshape((-1,) + (1,) * (x.ndim - 1))
        counter = _element_counter((1,) + x.shape[1:])
    else:
        seed = _key_seed(key)
        counter = _element_counter(x.shape)
    bits = _mix32(_mix32(counter ^ seed) + seed)
    keep = bits >= jnp.uint32(min(int(round(rate * 2.0**32)), 2**32 - 1))
    return jnp.where(keep, x * jnp.asarray(1.0 / (1.0 - rate), x.dtype), jnp.zeros_like(x))


def _packed_seed_counter(x, key: TokenKeys):
    """Seeds and element counters for dropout on packed hidden states ``[B, T, D]``: those of the sequence
    alone in a row with its own key (element ``(t, d)`` counts ``t * D + d``, ``t`` its position in the
    sequence)."""
    if x.ndim != 3:
        raise ValueError(f"dropout with TokenKeys expects hidden states [B, T, D], got shape {x.shape}; "
                         f"attention probabilities go through attention_dropout")
    d = x.shape[2]
    pos = key.positions.astype(jnp.uint32)
    return key.token_seeds()[:, :, None], pos[:, :, None] * jnp.uint32(d) + jnp.arange(d, dtype=jnp.uint32)


def attention_dropout(probs_bhqk, rate: float, key):
    """Dropout on attention probabilities ``[B, H, T, T]`` whose mask depends only on the sequence's key,
    the head, and the query's and key's positions in the sequence: not on the row length ``T``, nor on
    how sequences were packed into rows (``key`` a :class:`TokenKeys`) or padded (per-row keys). So a
    sentence draws the same masks in any length bucket, packed or not, on any number of shards.

    Each (row, head, query) gets its own seed, ``mix(row seed ^ (query + head * 2**16))``, and its keys
    count from 0. ``key``: ``None``, one key, per-row keys ``[B]``, or :class:`TokenKeys`.
    """
    if key is None or rate == 0.0:
        return probs_bhqk
    b, h, t, _ = probs_bhqk.shape
    q = jnp.arange(t, dtype=jnp.uint32)
    if isinstance(key, TokenKeys):
        row_seed = key.token_seeds()[:, None, :, None]  # the query token's sequence
        qpos = key.positions.astype(jnp.uint32)[:, None, :, None]
        kpos = q[None, None, None, :] - q[None, None, :, None] + qpos  # k - start of q's sequence
    else:
        row_seed = _key_seed(key) if _key_batched(key) else _mix32(_key_seed(key) ^ jnp.arange(b, dtype=jnp.uint32))
        row_seed = jnp.broadcast_to(row_seed, (b,)).reshape(b, 1, 1, 1)
        qpos, kpos = q[None, None, :, None], q[None, None, None, :]
    heads = jnp.arange(h, dtype=jnp.uint32)[None, :, None, None] << 16
    seed = _mix32(row_seed ^ (qpos + heads))
    bits = _mix32(_mix32(kpos ^ seed) + seed)
    keep = bits >= jnp.uint32(min(int(round(rate * 2.0**32)), 2**32 - 1))
    return jnp.where(keep, probs_bhqk * jnp.asarray(1.0 / (1.0 - rate), probs_bhqk.dtype), jnp.zeros_like(probs_bhqk))


def fold(key, *ids: int):
    """Derive a sub-key for one dropout site (``None`` stays ``None``; per-row keys stay per-row)."""
    if key is None:
        return None
    if isinstance(key, TokenKeys):
        return dataclasses.replace(key, keys=fold(key.keys, *ids))
    for i in ids:
        key = jax.vmap(lambda k: jax.random.fold_in(k, i))(key) if _key_batched(key) else jax.random.fold_in(key, i)
    return key


def call_layer(layer, remat: bool, *args):
    """Call ``layer(*args)``; with ``remat`` its activations are recomputed in the backward pass
    (``jax.checkpoint`` per layer: gradient checkpointing)."""
    if not remat:
        return layer(*args)
    graphdef, state = nnx.split(layer)
    return jax.checkpoint(lambda st, *a: nnx.merge(graphdef, st)(*a))(state, *args)


def run_layers(layers, remat: bool, x, *args, dropout_key=None, collect: bool = False):
    """``x`` through ``layers`` in order, layer ``i`` called as ``layer(x, *args, fold(dropout_key, i + 1))``.

    Returns ``(last, outputs)``: the last layer's output and, with ``collect``, the list of every layer's
    output (``None`` otherwise).

    With ``remat`` (gradient checkpointing) and layers of one structure (BERT, RoBERTa, DistilBERT, MPNet,
    ELECTRA: one graphdef), the layers run as a ``lax.scan`` over their stacked parameters with a checkpointed
    body, so the backward pass keeps only each layer's input and recomputes one layer at a time. Unrolled
    ``jax.checkpoint`` per layer leaves the order of the recomputation to XLA's scheduler, and XLA's CPU
    scheduler runs it early: a 12-layer bert-base SPLADE step kept 18.9 of its 20.2 GB of temporaries
    (bench/RESULTS.md). Layers of different structures (ModernBERT's global/local attention, DeBERTa) fall back
    to :func:`call_layer` per layer. The dropout keys, and so the outputs, are those of the unrolled loop.
    """
    layers = list(layers)
    if remat and len(layers) > 1:
        splits = [nnx.split(layer) for layer in layers]
        graphdef = splits[0][0]
        if all(g == graphdef for g, _ in splits[1:]):
            stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *(st for _, st in splits))

            @jax.checkpoint
            def body(h, xs):
                state, i = xs
                h = nnx.merge(graphdef, state)(h, *args, fold(dropout_key, i + 1))
                return h, (h if collect else None)

            last, ys = jax.lax.scan(body, x, (stacked, jnp.arange(len(layers), dtype=jnp.int32)))
            return last, ([ys[i] for i in range(len(layers))] if collect else None)
    outputs = []
    for i, layer in enumerate(layers):
        x = call_layer(layer, remat, x, *args, fold(dropout_key, i + 1))
        outputs.append(x)
    return x, (outputs if collect else None)


def split_heads(x_btd, num_heads: int):
    """[B, T, H*Dh] -> [B, H, T, Dh]."""
    b, t, d = x_btd.shape
    return x_btd.reshape(b, t, num_heads, d // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x_bhtd):
    """[B, H, T, Dh] -> [B, T, H*Dh]."""
    b, h, t, dh = x_bhtd.shape
    return x_bhtd.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


def attention(q_bhtd, k_bhtd, v_bhtd, mask_bt, *, bias_bhtt=None, dropout_rate=0.0, key=None):
    """Scaled dot-product attention over keys where ``mask_bt`` is set (``[B, T]`` per key, or
    ``[B, T, T]`` per query and key, as :meth:`Packing.attention_mask` gives).

    Softmax runs in float32 whatever the compute dtype. Masked keys get the dtype's most negative
    value rather than -inf so that an all-padding row (rows added to fill a static batch) yields a
    uniform distribution instead of NaN.
    """
    scale = 1.0 / math.sqrt(q_bhtd.shape[-1])
    scores = jnp.einsum("bhqd,bhkd->bhqk", q_bhtd, k_bhtd, preferred_element_type=jnp.float32) * scale
    if bias_bhtt is not None:
        scores = scores + bias_bhtt.astype(jnp.float32)
    mask = mask_bt[:, None, :, :] if mask_bt.ndim == 3 else mask_bt[:, None, None, :]  # [B, T, T] or [B, T]
    scores = jnp.where(mask.astype(bool), scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = attention_dropout(probs, dropout_rate, key).astype(v_bhtd.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", probs, v_bhtd)


def linear(din: int, dout: int, *, dtype, rngs: nnx.Rngs, std: float = 0.02, use_bias: bool = True, kernel_init=None):
    """A Linear with float32 params, ``dtype`` compute, and BERT-style N(0, std) init (or ``kernel_init``)."""
    return nnx.Linear(
        din,
        dout,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kernel_init or nnx.initializers.normal(std),
        bias_init=nnx.initializers.zeros,
        rngs=rngs,
    )


def layer_norm(dim: int, eps: float, *, dtype, rngs: nnx.Rngs, use_bias: bool = True):
    return nnx.LayerNorm(dim, epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def tied_logits(x_btd, table_vd, bias_v=None):
    """Masked-LM logits with the decoder tied to the word embeddings: ``x @ table.T (+ bias)``, float32
    ``[..., V]``. The product runs in ``x``'s compute dtype and accumulates in float32."""
    logits = jnp.einsum("...d,vd->...v", x_btd, table_vd.astype(x_btd.dtype), preferred_element_type=jnp.float32)
    return logits if bias_v is None else logits + bias_v.astype(jnp.float32)


class TiedDecoder(nnx.Module):
    """A vocabulary projection whose weight is the word-embedding table: only its bias ``[V]`` is its own
    (HF ``vocab_projector.bias``, ``decoder.bias``; zeros as HF initialises it). No bias: no parameter."""

    def __init__(self, vocab_size: int, use_bias: bool = True):
        self.bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32)) if use_bias else None

    def __call__(self, x_btd, table_vd):
        return tied_logits(x_btd, table_vd, None if self.bias is None else self.bias[...])


# Tables up to this many rows get their gradient from a one-hot matmul (positions, token types);
# larger ones (vocabularies) from a sort and a segmented scan.
ONE_HOT_GRAD_MAX_ROWS = 4096


def _segment_sums_sorted(ids_n, g_nd):
    """Per-run sums of ``g_nd`` over runs of equal sorted ``ids_n``; the total sits on each run's
    last row. A segmented inclusive scan: exact float32 sums, no atomics, deterministic."""
    start = jnp.concatenate([jnp.ones((1,), bool), ids_n[1:] != ids_n[:-1]])

    def op(a, b):
        (fa, va), (fb, vb) = a, b
        return fa | fb, jnp.where(fb[:, None], vb, va + vb)

    _, sums = jax.lax.associative_scan(op, (start, g_nd))
    last = jnp.concatenate([start[1:], jnp.ones((1,), bool)])
    return sums, last


def embedding_grad(ids, g, num_rows: int, method: str | None = None):
    """``d table`` of ``take(table, ids, axis=0)``: ``g`` ``[..., D]`` summed into ``[num_rows, D]`` (float32).

    XLA's scatter-add serialises on repeated ids through atomics on GPU, and text repeats ids a lot
    (every row's [CLS] and [SEP], every row's position 0, one token type for all): the token-type
    gradient alone funnelled B*T atomic adds into one row. On accelerators small tables use a one-hot
    matmul (exact products, float32 accumulation) and vocabularies a sort plus segmented scan; on CPU
    the plain scatter-add (a serial loop there) is fastest. ``method`` ("scatter", "onehot", "sorted")
    overrides the choice.
    """
    ids = ids.reshape(-1)
    g = g.reshape(ids.shape[0], -1)
    dim = g.shape[1]
    if method is None:
        method = ("scatter" if jax.default_backend() == "cpu" else
                  "onehot" if num_rows <= ONE_HOT_GRAD_MAX_ROWS else "sorted")
    if method == "scatter":
        return jnp.zeros((num_rows, dim), jnp.float32).at[ids].add(g.astype(jnp.float32))
    if method == "onehot":
        onehot = jax.nn.one_hot(ids, num_rows, dtype=g.dtype)
        return jnp.einsum("nv,nd->vd", onehot, g, preferred_element_type=jnp.float32,
                          precision=jax.lax.Precision.HIGHEST)
    if method != "sorted":
        raise ValueError(f"embedding_grad method must be 'scatter', 'onehot' or 'sorted', got {method!r}")
    order = jnp.argsort(ids)
    ids_sorted = ids[order]
    sums, last = _segment_sums_sorted(ids_sorted, g[order].astype(jnp.float32))
    target = jnp.where(last, ids_sorted, num_rows)  # only each run's total lands; the rest is dropped
    return jnp.zeros((num_rows, dim), jnp.float32).at[target].add(sums, mode="drop")


@jax.custom_vjp
def take_rows(table_vd, ids):
    """``table_vd[ids]`` (``[..., D]``) with the contention-free gradient of :func:`embedding_grad`."""
    return jnp.take(table_vd, ids, axis=0)


def _take_rows_fwd(table_vd, ids):
    return jnp.take(table_vd, ids, axis=0), (ids, jax.ShapeDtypeStruct(table_vd.shape, table_vd.dtype))


def _take_rows_bwd(res, g):
    ids, table = res
    return embedding_grad(ids, g, table.shape[0]).astype(table.dtype), None


take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


class Embed(nnx.Embed):
    """``nnx.Embed`` that looks up the float32 table and casts the rows to ``dtype`` (as torch
    autocast leaves embeddings in float32), with :func:`take_rows`' gradient."""

    def __call__(self, inputs, out_sharding=None):
        if not jnp.issubdtype(inputs.dtype, jnp.integer):
            raise ValueError("Embedding inputs must be integer ids.")
        rows = take_rows(self.embedding[...], inputs)
        return rows if self.dtype is None else rows.astype(self.dtype)


def embed(num: int, dim: int, *, dtype, rngs: nnx.Rngs, std: float = 0.02):
    return Embed(num, dim, dtype=dtype, param_dtype=jnp.float32, embedding_init=nnx.initializers.normal(std), rngs=rngs)
