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
