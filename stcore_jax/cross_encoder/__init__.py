"""CrossEncoder (reranker) family: model, losses, evaluators."""

from stcore_jax.cross_encoder.model import CrossEncoder  # noqa: E402

__all__ = ["CrossEncoder"]
