"""Utilities: STS file reading, quantization, semantic search."""

from stcore_jax.util.stsb import read_sts

__all__ = ["read_sts"]
