"""GradCache losses: CachedMultipleNegativesRankingLoss, CachedMultipleNegativesSymmetricRankingLoss,
CachedGISTEmbedLoss (Gao et al. 2021, https://arxiv.org/abs/2101.06983).

Each is its uncached loss plus a declaration (``inputs.mini_batch_size``): the dispatcher
(:func:`stcore_jax.sentence_transformer.losses.embed.compute_loss`) then embeds the columns with
:func:`stcore_jax.sentence_transformer.losses.gradcache.cached_embed_columns`, whose docstring tells how the
chunks, dropout masks and sharding work.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import jax

from stcore_jax.sentence_transformer.losses.embed import compute_loss
from stcore_jax.sentence_transformer.losses.gist import GISTEmbedLoss
from stcore_jax.sentence_transformer.losses.gradcache import (  # noqa: F401 (the chunking helpers' old home)
    cached_embed_columns,
    chunk_layout,
    chunked_embed_columns,
    from_chunks,
    to_chunks,
)
from stcore_jax.sentence_transformer.losses.mnrl import MultipleNegativesRankingLoss
from stcore_jax.similarity import cos_sim

logger = logging.getLogger(__name__)

Array = jax.Array


# --- classes ---------------------------------------------------------------------------------------
class GradCacheMixin:
    """Adds ``mini_batch_size`` and the GradCache :meth:`compute_loss` to an in-batch-negatives loss."""

    mini_batch_size: int = 32
    mini_batch_num_tokens: int | None = None
    show_progress_bar: bool = False

    def _init_cache(self, mini_batch_size, mini_batch_num_tokens, show_progress_bar) -> None:
        if int(mini_batch_size) < 1:
            raise ValueError(f"mini_batch_size must be a positive integer, got {mini_batch_size}.")
        if mini_batch_num_tokens is not None:
            if mini_batch_num_tokens <= 0:
                raise ValueError("mini_batch_num_tokens must be a positive integer or None.")
            logger.warning("%s: mini_batch_num_tokens=%s is not supported (chunks need static shapes); "
                           "chunking by mini_batch_size=%s.", type(self).__name__, mini_batch_num_tokens,
                           mini_batch_size)
        self.mini_batch_size = int(mini_batch_size)
        self.mini_batch_num_tokens = mini_batch_num_tokens
        self.show_progress_bar = show_progress_bar

    @property
    def inputs(self):
        """The uncached loss's declaration plus GradCache chunking (``mini_batch_size``, laid out for this loss's
        ``num_shards`` when the caller gives none)."""
        return dataclasses.replace(super().inputs, mini_batch_size=self.mini_batch_size, num_shards=self.num_shards)

    def compute_loss(self, forward: Callable, params, features: Sequence[dict], labels=None, **kwargs):
        """Loss from features with GradCache gradients:
        :func:`stcore_jax.sentence_transformer.losses.embed.compute_loss`, which reads the declaration above."""
        return compute_loss(self, forward, params, features, labels, **kwargs)


class CachedMultipleNegativesRankingLoss(GradCacheMixin, MultipleNegativesRankingLoss):
    """MultipleNegativesRankingLoss with GradCache (sentence-transformers 6.2 constructor order).

    Columns ``(anchor, positive, negative_1, ..., negative_n)``, no label. ``mini_batch_size`` rows are
    embedded at a time; the loss value and gradient equal the uncached loss's on the same batch.
    """

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable | str = cos_sim,
                 mini_batch_size: int = 32, mini_batch_num_tokens: int | None = None,
                 gather_across_devices: bool = False, directions: Sequence[str] = ("query_to_doc",),
                 partition_mode: str = "joint", show_progress_bar: bool = False, hardness_mode: str | None = None,
                 hardness_strength: float = 0.0, *, num_shards: int = 1) -> None:
        MultipleNegativesRankingLoss.__init__(
            self, model, scale=scale, similarity_fct=similarity_fct, gather_across_devices=gather_across_devices,
            directions=directions, partition_mode=partition_mode, hardness_mode=hardness_mode,
            hardness_strength=hardness_strength, num_shards=num_shards)
        self._init_cache(mini_batch_size, mini_batch_num_tokens, show_progress_bar)

    def get_config_dict(self):
        config = MultipleNegativesRankingLoss.get_config_dict(self)
        return {"scale": config.pop("scale"), "similarity_fct": config.pop("similarity_fct"),
                "mini_batch_size": self.mini_batch_size, "mini_batch_num_tokens": self.mini_batch_num_tokens,
                **config}


class CachedMultipleNegativesSymmetricRankingLoss(CachedMultipleNegativesRankingLoss):
    """MultipleNegativesSymmetricRankingLoss with GradCache: ``directions=("query_to_doc", "doc_to_query")``,
    ``partition_mode="per_direction"``, as in the reference (which also subclasses the cached MNRL)."""

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable | str = cos_sim,
                 mini_batch_size: int = 32, mini_batch_num_tokens: int | None = None,
                 gather_across_devices: bool = False, show_progress_bar: bool = False, *,
                 num_shards: int = 1) -> None:
        super().__init__(model, scale=scale, similarity_fct=similarity_fct, mini_batch_size=mini_batch_size,
                         mini_batch_num_tokens=mini_batch_num_tokens, gather_across_devices=gather_across_devices,
                         directions=("query_to_doc", "doc_to_query"), partition_mode="per_direction",
                         show_progress_bar=show_progress_bar, num_shards=num_shards)


class CachedGISTEmbedLoss(GradCacheMixin, GISTEmbedLoss):
    """GISTEmbedLoss with GradCache. Columns ``(anchor, positive, negative_1, ..., negative_n)`` (any
    number of negatives, as in the reference's cached variant), no label. The guide is embedded in
    the same chunks, without dropout or gradient; give ``guide_features`` when it tokenizes
    differently from the trained model."""

    max_inputs = None
    inputs_doc = "(anchor, positive, negative_1, ..., negative_n)"

    def __init__(self, model=None, guide=None, temperature: float = 0.01, mini_batch_size: int = 32,
                 mini_batch_num_tokens: int | None = None, show_progress_bar: bool = False,
                 margin_strategy: str = "absolute", margin: float = 0.0, contrast_anchors: bool = True,
                 contrast_positives: bool = True, gather_across_devices: bool = False, *,
                 num_shards: int = 1) -> None:
        GISTEmbedLoss.__init__(
            self, model, guide, temperature=temperature, margin_strategy=margin_strategy, margin=margin,
            contrast_anchors=contrast_anchors, contrast_positives=contrast_positives,
            gather_across_devices=gather_across_devices, num_shards=num_shards)
        self._init_cache(mini_batch_size, mini_batch_num_tokens, show_progress_bar)

    def get_config_dict(self):
        config = GISTEmbedLoss.get_config_dict(self)
        return {"guide": config.pop("guide"), "temperature": config.pop("temperature"),
                "mini_batch_size": self.mini_batch_size, "mini_batch_num_tokens": self.mini_batch_num_tokens,
                **config}
