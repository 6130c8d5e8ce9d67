"""``stcore_jax.losses``: the SentenceTransformer losses, where sentence-transformers 2.x-5.x import them from
(``sentence_transformers.losses``). They live in :mod:`stcore_jax.sentence_transformer.losses`.
"""

from stcore_jax.sentence_transformer import losses as _family
from stcore_jax.sentence_transformer.losses import *  # noqa: F403 (the family's names, as they are)

__all__ = list(_family.__all__)

# The old submodules as attributes (``stcore_jax.losses.cached``, ``from stcore_jax.losses import matryoshka``): the
# moved modules themselves, so that patching one (a monkeypatch) patches what the losses use.
from stcore_jax.base import loss as base  # noqa: E402, F401
from stcore_jax.sentence_transformer.losses import (  # noqa: E402, F401
    adaptive_layer,
    batch_triplet,
    cached,
    contrastive,
    contrastive_tension,
    cosent,
    cosine_similarity,
    distill,
    embed,
    gist,
    gor,
    matryoshka,
    mega_batch,
    mnrl,
    ring,
    softmax,
    triplet,
)
