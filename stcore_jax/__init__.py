"""stcore_jax: Sentence Transformers training in JAX/Flax."""

__version__ = "0.1.0"
