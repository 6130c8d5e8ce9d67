"""ModernBERT encoder; names mirror Hugging Face's ``ModernBertModel`` (``layers.{i}.attn.Wqkv.…``).

What sets it apart from BERT (transformers ``models/modernbert/modeling_modernbert.py``):
  * no position table: rotary embeddings on queries and keys, with one rope base for global layers
    (``global_rope_theta``) and another for local ones (``local_rope_theta``);
  * layers alternate global attention and local attention over a window of ``local_attention``
    tokens (each token sees ``local_attention // 2`` on either side); every
    ``global_attn_every_n_layers``-th layer (from layer 0) is global, or ``layer_types`` says which;
  * pre-norm residual blocks (layer 0 has no attention norm: the embedding norm precedes it), a
    final norm, a fused ``Wqkv`` projection and a GeGLU MLP (``Wi`` -> halves ``input, gate`` ->
    ``act(input) * gate`` -> ``Wo``);
  * no biases by default (``norm_bias`` / ``attention_bias`` / ``mlp_bias``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from stcore_jax.models.config import EncoderConfig
from stcore_jax.models.layers import (
    activation,
    attention_dropout,
    call_layer,
    dropout,
    embed,
    fold,
    layer_norm,
    linear,
    merge_heads,
)


def rope_tables(seq_len: int, head_dim: int, theta: float):
    """Rotary ``(cos, sin)``, each [T, Dh] float32, for positions ``0..T-1`` (HF's default rope)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x_bhtd, cos_td, sin_td):
    """Rotate query or key heads [B, H, T, Dh] by position; computed in float32 like HF."""
    x = x_bhtd.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos_td + rotated * sin_td).astype(x_bhtd.dtype)


def _attention(q_bhtd, k_bhtd, v_bhtd, mask_btt, rate, key):
    """Softmax attention where ``mask_btt[b, q, k]`` (float32 softmax; the dtype's most negative value
    rather than -inf, so a row with nothing to attend to is uniform instead of NaN, as in HF eager)."""
    scale = 1.0 / math.sqrt(q_bhtd.shape[-1])
    scores = jnp.einsum("bhqd,bhkd->bhqk", q_bhtd, k_bhtd).astype(jnp.float32) * scale
    scores = jnp.where(mask_btt[:, None], scores, jnp.finfo(jnp.float32).min)
    probs = attention_dropout(jax.nn.softmax(scores, axis=-1), rate, key).astype(v_bhtd.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", probs, v_bhtd)


class ModernBertEmbeddings(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.tok_embeddings = embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
        self.norm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs, use_bias=cfg.norm_bias)
        self.rate = cfg.embedding_dropout

    def __call__(self, input_ids_bt, key):
        return dropout(self.norm(self.tok_embeddings(input_ids_bt)), self.rate, key)


class ModernBertAttention(nnx.Module):
    def __init__(self, cfg: EncoderConfig, sliding: bool, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.Wqkv = linear(d, 3 * d, dtype=cfg.dtype, rngs=rngs, use_bias=cfg.attention_bias)
        self.Wo = linear(d, d, dtype=cfg.dtype, rngs=rngs, use_bias=cfg.attention_bias)
        self.num_heads = cfg.num_attention_heads
        # HF: sliding_window = local_attention // 2, and |q - k| <= sliding_window may attend.
        self.half_window = cfg.local_attention // 2 if sliding else None
        self.rate = cfg.attention_probs_dropout_prob

    def __call__(self, x_btd, mask_bt, rope, key):
        b, t, d = x_btd.shape
        h = self.num_heads
        # Wqkv's output is laid out [3, H, Dh]: queries, then keys, then values.
        qkv = self.Wqkv(x_btd).reshape(b, t, 3, h, d // h).transpose(2, 0, 3, 1, 4)  # [3, B, H, T, Dh]
        cos, sin = rope
        q, k, v = apply_rope(qkv[0], cos, sin), apply_rope(qkv[1], cos, sin), qkv[2]
        if mask_bt.ndim == 3:  # packed rows: Packing.attention_mask, [B, T, T]
            mask_btt = mask_bt.astype(bool)
        else:
            mask_btt = jnp.broadcast_to(mask_bt[:, None, :].astype(bool), (b, t, t))
        if self.half_window is not None:  # index distance = distance in the sequence, packed or not
            pos = jnp.arange(t)
            mask_btt = mask_btt & (jnp.abs(pos[:, None] - pos[None, :]) <= self.half_window)[None]
        out = self.Wo(merge_heads(_attention(q, k, v, mask_btt, self.rate, fold(key, 0))))
        return dropout(out, self.rate, fold(key, 1))


class ModernBertMLP(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.Wi = linear(cfg.hidden_size, 2 * cfg.intermediate_size, dtype=cfg.dtype, rngs=rngs, use_bias=cfg.mlp_bias)
        self.Wo = linear(cfg.intermediate_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs, use_bias=cfg.mlp_bias)
        self.act = activation(cfg.hidden_act)
        self.rate = cfg.mlp_dropout

    def __call__(self, x, key):
        inp, gate = jnp.split(self.Wi(x), 2, axis=-1)
        return self.Wo(dropout(self.act(inp) * gate, self.rate, key))


class ModernBertEncoderLayer(nnx.Module):
    def __init__(self, cfg: EncoderConfig, index: int, rngs: nnx.Rngs):
        norm = lambda: layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs,  # noqa: E731
                                  use_bias=cfg.norm_bias)
        self.sliding = cfg.layer_types[index] == "sliding_attention"
        self.attn_norm = None if index == 0 else norm()  # HF: Identity in layer 0 (no weights)
        self.attn = ModernBertAttention(cfg, self.sliding, rngs)
        self.mlp_norm = norm()
        self.mlp = ModernBertMLP(cfg, rngs)

    def __call__(self, x_btd, mask_bt, rope, key):
        a = x_btd if self.attn_norm is None else self.attn_norm(x_btd)
        x_btd = x_btd + self.attn(a, mask_bt, rope, fold(key, 0))
        return x_btd + self.mlp(self.mlp_norm(x_btd), fold(key, 1))


class ModernBertModel(nnx.Module):
    """ModernBERT encoder; same call signature and outputs as :class:`stcore_jax.models.bert.BertModel`
    (``token_type_ids`` is accepted and ignored). ``last_hidden_state`` is after the final norm, and so
    is the last of ``hidden_states`` (the embeddings, then each layer's output), as in transformers.
    """

    supports_packing = True

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        if cfg.hidden_size % cfg.num_attention_heads:
            raise ValueError(f"ModernBERT: hidden_size={cfg.hidden_size} is not a multiple of "
                             f"num_attention_heads={cfg.num_attention_heads}")
        self.gradient_checkpointing = False  # static: set via Transformer.set_gradient_checkpointing
        self.embeddings = ModernBertEmbeddings(cfg, rngs)
        self.layers = nnx.List([ModernBertEncoderLayer(cfg, i, rngs) for i in range(cfg.num_hidden_layers)])
        self.final_norm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs,
                                     use_bias=cfg.norm_bias)
        self.head_dim = cfg.hidden_size // cfg.num_attention_heads
        self.thetas = (cfg.global_rope_theta, cfg.local_rope_theta)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None, output_hidden_states=False,
                 packing=None):
        t = input_ids.shape[1]
        global_rope, local_rope = (rope_tables(t, self.head_dim, theta) for theta in self.thetas)
        if packing is not None:  # each token rotates by its position in its own sequence: [B, 1, T, Dh] tables
            global_rope, local_rope = (tuple(tab[packing.position_ids][:, None] for tab in rope)
                                       for rope in (global_rope, local_rope))
        x = self.embeddings(input_ids, fold(dropout_key, 0))
        hidden = [x]
        for i, layer in enumerate(self.layers):
            rope = local_rope if layer.sliding else global_rope
            x = call_layer(layer, self.gradient_checkpointing, x, attention_mask, rope, fold(dropout_key, i + 1))
            hidden.append(x)
        x = self.final_norm(x)
        out = {"last_hidden_state": x}
        if output_hidden_states:
            # transformers reports the final-normed output as the last hidden state (tie_last_hidden_states).
            out["hidden_states"] = tuple(hidden[:-1]) + (x,)
        return out
