"""Frozen encoder configuration read from a Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The fields our encoders use, normalised across architectures.

    ``hf`` keeps the original ``config.json`` dict so the exporter can write it back unchanged.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    relative_attention_num_buckets: int = 32
    # ModernBERT: per-layer attention kind, local window (total width, tokens), rope bases, bias flags.
    layer_types: tuple = ()  # "full_attention" | "sliding_attention" per layer
    local_attention: int = 0
    global_rope_theta: float = 160_000.0
    local_rope_theta: float = 10_000.0
    norm_bias: bool = True
    attention_bias: bool = True
    mlp_bias: bool = True
    embedding_dropout: float = 0.0
    mlp_dropout: float = 0.0
    dtype: Any = jnp.float32  # compute dtype; parameters are always float32
    hf: dict = dataclasses.field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_hf(cls, hf: dict, dtype=jnp.float32) -> "EncoderConfig":
        mt = hf.get("model_type")
        if mt == "distilbert":
            return cls(
                model_type=mt,
                vocab_size=hf["vocab_size"],
                hidden_size=hf["dim"],
                num_hidden_layers=hf["n_layers"],
                num_attention_heads=hf["n_heads"],
                intermediate_size=hf["hidden_dim"],
                hidden_act=hf.get("activation", "gelu"),
                hidden_dropout_prob=hf.get("dropout", 0.1),
                attention_probs_dropout_prob=hf.get("attention_dropout", 0.1),
                max_position_embeddings=hf.get("max_position_embeddings", 512),
                type_vocab_size=0,
                layer_norm_eps=1e-12,
                pad_token_id=hf.get("pad_token_id", 0) or 0,
                dtype=dtype,
                hf=dict(hf),
            )
        if mt == "modernbert":
            return _modernbert(cls, hf, dtype)
        return cls(
            model_type=mt,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            num_hidden_layers=hf["num_hidden_layers"],
            num_attention_heads=hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"],
            hidden_act=hf.get("hidden_act", "gelu"),
            hidden_dropout_prob=hf.get("hidden_dropout_prob", 0.1),
            attention_probs_dropout_prob=hf.get("attention_probs_dropout_prob", 0.1),
            max_position_embeddings=hf.get("max_position_embeddings", 512),
            type_vocab_size=hf.get("type_vocab_size", 0 if mt == "mpnet" else 2),
            layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
            pad_token_id=1 if mt == "mpnet" else (hf.get("pad_token_id") or 0),
            relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
            dtype=dtype,
            hf=dict(hf),
        )


def _rope_theta(hf: dict, layer_type: str, legacy_key: str, default: float) -> float:
    """Rope base for one attention kind: transformers 5 ``rope_parameters`` or the 4.x ``*_rope_theta``."""
    rp = (hf.get("rope_parameters") or {}).get(layer_type) or {}
    kind = rp.get("rope_type", "default")
    if kind != "default":
        raise ValueError(f"config.json: ModernBERT rope_type={kind!r} for {layer_type} is not supported "
                         "(only the default rotary embedding is)")
    return float(rp.get("rope_theta", hf.get(legacy_key, default)))


def _modernbert(cls, hf: dict, dtype) -> EncoderConfig:
    n = hf.get("num_hidden_layers", 22)
    every = hf.get("global_attn_every_n_layers", 3)
    layer_types = tuple(hf.get("layer_types") or
                        ["sliding_attention" if i % every else "full_attention" for i in range(n)])
    if len(layer_types) != n or set(layer_types) - {"full_attention", "sliding_attention"}:
        raise ValueError(f"config.json: ModernBERT layer_types must list 'full_attention'/'sliding_attention' for "
                         f"each of the {n} layers, got {list(layer_types)}")
    return cls(
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
