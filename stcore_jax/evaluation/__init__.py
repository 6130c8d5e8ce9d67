"""``stcore_jax.evaluation``: the SentenceTransformer evaluators, where sentence-transformers 2.x-5.x import them
from (``sentence_transformers.evaluation``). They live in :mod:`stcore_jax.sentence_transformer.evaluation`.
"""

from stcore_jax.sentence_transformer import evaluation as _family
from stcore_jax.sentence_transformer.evaluation import *  # noqa: F403 (the family's names, as they are)

__all__ = list(_family.__all__)
