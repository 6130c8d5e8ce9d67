"""The architectures stcore_jax knows, collected from their files: ``config.json`` ``model_type`` -> record
(:class:`stcore_jax.models.architecture.Architecture`: config mapping, encoder, LoRA targets, positions, heads)."""

from __future__ import annotations

import jax.numpy as jnp

from stcore_jax.models import bert, deberta_v2, distilbert, electra, modernbert, mpnet, roberta
from stcore_jax.models.architecture import Architecture
from stcore_jax.models.config import EncoderConfig

ARCHITECTURES: tuple[Architecture, ...] = tuple(
    m.ARCHITECTURE for m in (bert, roberta, mpnet, distilbert, modernbert, electra, deberta_v2))
BY_MODEL_TYPE: dict[str, Architecture] = {t: a for a in ARCHITECTURES for t in a.model_types}
ENCODERS = {t: a.encoder for t, a in BY_MODEL_TYPE.items()}


def architecture(model_type: str | None, where: str = "config.json") -> Architecture:
    """The record for ``model_type``, or a clear error listing the supported ones."""
    try:
        return BY_MODEL_TYPE[model_type]
    except KeyError:
        raise ValueError(
            f"Unsupported architecture model_type={model_type!r} in {where}. "
            f"stcore_jax supports: {', '.join(sorted(BY_MODEL_TYPE))}."
        ) from None


def encoder_class(model_type: str | None, where: str = "config.json"):
    """Return the encoder class for ``model_type`` or raise a clear error listing the supported ones."""
    return architecture(model_type, where).encoder


def encoder_config(hf: dict, dtype=jnp.float32, where: str = "config.json") -> EncoderConfig:
    """A ``config.json`` dict -> :class:`EncoderConfig`, by its architecture's mapping."""
    return architecture(hf.get("model_type"), where).config(hf, dtype)
