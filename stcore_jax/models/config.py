"""Frozen encoder configuration read from a Hugging Face ``config.json``."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """The fields our encoders use, normalised across architectures.

    ``hf`` keeps the original ``config.json`` dict so the exporter can write it back unchanged. Each
    architecture maps ``config.json`` to these fields in its own file (its ``ARCHITECTURE.config``);
    ``registry.encoder_config`` picks the mapping by ``model_type``.
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

    @property
    def initializer_range(self) -> float:
        """Std of transformers' ``_init_weights`` normal init (freshly initialised heads use it)."""
        return float(self.hf.get("initializer_range") or 0.02)
