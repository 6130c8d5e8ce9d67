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

from stcore_jax.models.architecture import Architecture
from stcore_jax.models.config import EncoderConfig
from stcore_jax.models.layers import (
    TiedDecoder,
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


def _rope_theta(hf: dict, layer_type: str, legacy_key: str, default: float) -> float:
    """Rope base for one attention kind: transformers 5 ``rope_parameters`` or the 4.x ``*_rope_theta``."""
    rp = (hf.get("rope_parameters") or {}).get(layer_type) or {}
    kind = rp.get("rope_type", "default")
    if kind != "default":
        raise ValueError(f"config.json: ModernBERT rope_type={kind!r} for {layer_type} is not supported "
                         "(only the default rotary embedding is)")
    return float(rp.get("rope_theta", hf.get(legacy_key, default)))


def modernbert_config(hf: dict, dtype=jnp.float32) -> EncoderConfig:
    """ModernBERT's ``config.json`` (transformers 5 ``layer_types`` / ``rope_parameters`` or the 4.x
    ``global_attn_every_n_layers`` / ``*_rope_theta``) -> :class:`EncoderConfig`."""
    n = hf.get("num_hidden_layers", 22)
    every = hf.get("global_attn_every_n_layers", 3)
    layer_types = tuple(hf.get("layer_types") or
                        ["sliding_attention" if i % every else "full_attention" for i in range(n)])
    if len(layer_types) != n or set(layer_types) - {"full_attention", "sliding_attention"}:
        raise ValueError(f"config.json: ModernBERT layer_types must list 'full_attention'/'sliding_attention' for "
                         f"each of the {n} layers, got {list(layer_types)}")
    return EncoderConfig(
        model_type="modernbert",
        vocab_size=hf.get("vocab_size", 50368),
        hidden_size=hf.get("hidden_size", 768),
        num_hidden_layers=n,
        num_attention_heads=hf.get("num_attention_heads", 12),
        intermediate_size=hf.get("intermediate_size", 1152),
        hidden_act=hf.get("hidden_activation", "gelu"),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=float(hf.get("attention_dropout", 0.0)),
        max_position_embeddings=hf.get("max_position_embeddings", 8192),
        type_vocab_size=0,
        layer_norm_eps=hf.get("norm_eps", 1e-5),
        pad_token_id=hf.get("pad_token_id") or 0,
        layer_types=layer_types,
        local_attention=int(hf.get("local_attention", 128)),
        global_rope_theta=_rope_theta(hf, "full_attention", "global_rope_theta", 160_000.0),
        local_rope_theta=_rope_theta(hf, "sliding_attention", "local_rope_theta", 10_000.0),
        norm_bias=bool(hf.get("norm_bias", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        embedding_dropout=float(hf.get("embedding_dropout", 0.0)),
        mlp_dropout=float(hf.get("mlp_dropout", 0.0)),
        dtype=dtype,
        hf=dict(hf),
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


# -- heads (transformers' ModernBertForSequenceClassification / ModernBertForMaskedLM) ------------------
def _trunc_normal(cfg: EncoderConfig, std: float):
    """transformers' ModernBERT init: normal(0, std) truncated at +-``initializer_cutoff_factor`` std."""
    cutoff = cfg.hf.get("initializer_cutoff_factor")
    cutoff = 3.0 if cutoff is None else float(cutoff)
    return nnx.initializers.truncated_normal(std, lower=-cutoff, upper=cutoff)


class ModernBertPredictionHead(nnx.Module):
    """``dense`` (bias: ``classifier_bias``) -> ``classifier_activation`` -> ``norm``; shared by both heads."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        std = cfg.initializer_range / math.sqrt(2.0 * cfg.num_hidden_layers)  # HF's "out" std
        self.dense = linear(d, d, dtype=cfg.dtype, rngs=rngs, use_bias=bool(cfg.hf.get("classifier_bias", False)),
                            kernel_init=_trunc_normal(cfg, std))
        self.act = activation(cfg.hf.get("classifier_activation", "gelu"))
        self.norm = layer_norm(d, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs, use_bias=cfg.norm_bias)

    def __call__(self, x):
        return self.norm(self.act(self.dense(x)))


class ModernBertForSequenceClassification(nnx.Module):
    """``model`` -> ``classifier_pooling`` ("cls": the first token; "mean": over ``attention_mask``) -> ``head``
    -> dropout (``classifier_dropout``) -> ``classifier``: same call as the other architectures' heads.
    A row without tokens mean-pools to 0 (transformers divides by 0 there: NaN)."""

    def __init__(self, cfg: EncoderConfig, num_labels: int, rngs: nnx.Rngs):
        self.pooling = cfg.hf.get("classifier_pooling", "cls")
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"config.json: ModernBERT classifier_pooling must be 'cls' or 'mean', "
                             f"got {self.pooling!r}")
        self.model = ModernBertModel(cfg, rngs)
        self.head = ModernBertPredictionHead(cfg, rngs)
        self.classifier = linear(cfg.hidden_size, num_labels, dtype=cfg.dtype, rngs=rngs,
                                 kernel_init=_trunc_normal(cfg, cfg.hidden_size ** -0.5))
        self.rate = float(cfg.hf.get("classifier_dropout", 0.0))
        self.head_site = cfg.num_hidden_layers + 1

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.model(input_ids, attention_mask, dropout_key=dropout_key)["last_hidden_state"]
        if self.pooling == "cls":
            x = h[:, 0]
        else:
            m = attention_mask.astype(h.dtype)[..., None]
            x = (h * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1)
        x = dropout(self.head(x), self.rate, fold(dropout_key, self.head_site))
        return self.classifier(x).astype(jnp.float32)


class ModernBertForMaskedLM(nnx.Module):
    """``model`` -> ``head`` -> ``decoder`` (weight tied to ``model.embeddings.tok_embeddings``; bias when
    ``decoder_bias``): [B, T, V] float32."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.model = ModernBertModel(cfg, rngs)
        self.head = ModernBertPredictionHead(cfg, rngs)
        self.decoder = TiedDecoder(cfg.vocab_size, use_bias=bool(cfg.hf.get("decoder_bias", True)))

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.model(input_ids, attention_mask, dropout_key=dropout_key)["last_hidden_state"]
        return self.decoder(self.head(h), self.model.embeddings.tok_embeddings.embedding[...])


ARCHITECTURE = Architecture(
    model_types={"modernbert": "ModernBert"},
    encoder=ModernBertModel,
    config=modernbert_config,
    lora_targets=("Wqkv",),  # q, k and v are one fused Linear
    positions="rotary",
    prefix="model",
    sequence_classification=ModernBertForSequenceClassification,
    masked_lm=ModernBertForMaskedLM,
    tied={"decoder.weight": "model.embeddings.tok_embeddings.weight"},
)
