"""Pair-score losses over sparse ``[B, V]`` embeddings: SparseCoSENTLoss, SparseAnglELoss,
SparseCosineSimilarityLoss, each to be wrapped by SpladeLoss or CSRLoss.

The functions are the bi-encoder's (cosent.py, cosine_similarity.py), unchanged. As in sentence-transformers 6.2
these losses train on cosine similarity, so constructing one sets the model's ``similarity_fn_name`` to
``"cosine"`` (the SparseEncoder's default is ``"dot"``): evaluation and the saved config then use the similarity
the model was trained for.
"""

from __future__ import annotations

from collections.abc import Callable

from stcore_jax.sentence_transformer.losses.cosent import AnglELoss, CoSENTLoss
from stcore_jax.sentence_transformer.losses.cosine_similarity import CosineSimilarityLoss
from stcore_jax.similarity import pairwise_cos_sim
from stcore_jax.sparse_encoder.losses.standalone import NeedsWrapper

# get_config_dict names of the reference's torch defaults (the model card shows them).
_TORCH_LOSS_NAMES = {"mse": "torch.nn.modules.loss.MSELoss", "l1": "torch.nn.modules.loss.L1Loss"}


def use_cosine(model) -> None:
    """What the reference constructors do first: ``model.similarity_fn_name = "cosine"`` (when a model is given)."""
    if model is not None:
        model.similarity_fn_name = "cosine"


class SparseCoSENTLoss(NeedsWrapper, CoSENTLoss):
    """Columns ``(text_A, text_B)`` with a float score label; CoSENT on ``pairwise_cos_sim`` (default) scaled by
    ``scale`` (20). Must be wrapped by SpladeLoss or CSRLoss."""

    def __init__(self, model=None, scale: float = 20.0, similarity_fct: Callable | str = pairwise_cos_sim) -> None:
        use_cosine(model)
        super().__init__(model, scale=scale, similarity_fct=similarity_fct)


class SparseAnglELoss(NeedsWrapper, AnglELoss):
    """CoSENT with the angle similarity (``pairwise_angle_sim``); pairs with a float label or
    ``(anchor, positive, negative_1..n)`` tuples. Must be wrapped by SpladeLoss or CSRLoss."""

    def __init__(self, model=None, scale: float = 20.0) -> None:
        use_cosine(model)
        super().__init__(model, scale=scale)


class SparseCosineSimilarityLoss(NeedsWrapper, CosineSimilarityLoss):
    """Columns ``(text_A, text_B)`` with a float score label: ``loss_fct(transform(cos(a, b)), y)``, MSE by
    default. Must be wrapped by SpladeLoss or CSRLoss."""

    def __init__(self, model=None, loss_fct: str | Callable = "mse",
                 cos_score_transformation: Callable | None = None) -> None:
        use_cosine(model)
        super().__init__(model, loss_fct=loss_fct, cos_score_transformation=cos_score_transformation)

    def get_config_dict(self):
        """The reference's names for its defaults (``nn.MSELoss()``, ``nn.Identity()``), the bi-encoder's otherwise."""
        config = super().get_config_dict()
        if isinstance(self.loss_fct, str):
            config["loss_fct"] = _TORCH_LOSS_NAMES[self.loss_fct]
        if self.cos_score_transformation is None:
            config["cos_score_transformation"] = "torch.nn.modules.linear.Identity"
        return config
