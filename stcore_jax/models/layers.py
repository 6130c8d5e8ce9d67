"""Building blocks shared by the encoders: activations, keyed dropout, masked attention.

Dropout here is a pure function of an explicit PRNG key (``None`` = deterministic), so that a
forward pass can be replayed bit-for-bit (GradCache re-runs each chunk with the same keys).
"""

from __future__ import annotations

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


def _key_batched(key) -> bool:
    """True for a batch of keys (one per row): typed keys with ndim 1, or raw uint32 keys [B, 2]."""
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    return key.ndim == (1 if typed else 2)


def dropout(x, rate: float, key):
    """Inverted dropout with an explicit key; identity when ``key`` is None or ``rate`` is 0.

    ``key`` may be one key or one key per row of ``x`` (shape [B]). Per-row keys make each
    example's mask independent of how the batch is chunked or sharded, so GradCache's chunked
    replay and a sharded step draw exactly the masks of the plain full-batch step.
    """
    if key is None or rate == 0.0:
        return x
    if _key_batched(key):
        keep = jax.vmap(lambda k, row: jax.random.bernoulli(k, 1.0 - rate, row.shape))(key, x)
    else:
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def fold(key, *ids: int):
    """Derive a sub-key for one dropout site (``None`` stays ``None``; per-row keys stay per-row)."""
    if key is None:
        return None
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


def split_heads(x_btd, num_heads: int):
    """[B, T, H*Dh] -> [B, H, T, Dh]."""
    b, t, d = x_btd.shape
    return x_btd.reshape(b, t, num_heads, d // num_heads).transpose(0, 2, 1, 3)


def merge_heads(x_bhtd):
    """[B, H, T, Dh] -> [B, T, H*Dh]."""
    b, h, t, dh = x_bhtd.shape
    return x_bhtd.transpose(0, 2, 1, 3).reshape(b, t, h * dh)


def attention(q_bhtd, k_bhtd, v_bhtd, mask_bt, *, bias_bhtt=None, dropout_rate=0.0, key=None):
    """Scaled dot-product attention over keys where ``mask_bt`` is set.

    Softmax runs in float32 whatever the compute dtype. Masked keys get the dtype's most negative
    value rather than -inf so that an all-padding row (rows added to fill a static batch) yields a
    uniform distribution instead of NaN.
    """
    scale = 1.0 / math.sqrt(q_bhtd.shape[-1])
    scores = jnp.einsum("bhqd,bhkd->bhqk", q_bhtd, k_bhtd).astype(jnp.float32) * scale
    if bias_bhtt is not None:
        scores = scores + bias_bhtt.astype(jnp.float32)
    scores = jnp.where(mask_bt[:, None, None, :].astype(bool), scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = dropout(probs, dropout_rate, key).astype(v_bhtd.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", probs, v_bhtd)


def linear(din: int, dout: int, *, dtype, rngs: nnx.Rngs, std: float = 0.02, use_bias: bool = True):
    """A Linear with float32 params, ``dtype`` compute, and BERT-style N(0, std) init."""
    return nnx.Linear(
        din,
        dout,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=nnx.initializers.normal(std),
        bias_init=nnx.initializers.zeros,
        rngs=rngs,
    )


def layer_norm(dim: int, eps: float, *, dtype, rngs: nnx.Rngs, use_bias: bool = True):
    return nnx.LayerNorm(dim, epsilon=eps, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def embed(num: int, dim: int, *, dtype, rngs: nnx.Rngs, std: float = 0.02):
    return nnx.Embed(num, dim, dtype=dtype, param_dtype=jnp.float32, embedding_init=nnx.initializers.normal(std), rngs=rngs)
