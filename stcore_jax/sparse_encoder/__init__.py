"""The SparseEncoder family (sentence-transformers' ``SparseEncoder``): SPLADE models over the shared pipeline.

So far the model and inference (``model.py``) and the losses (``losses/``); the trainer and evaluators come next.
"""

from stcore_jax.sparse_encoder.model import SparseEncoder

__all__ = ["SparseEncoder"]
