"""CosineSimilarityLoss: regress the cosine similarity of a pair onto a gold score."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from stcore_jax.base.loss import LabelRange, Loss, LossInputs, check_context, f32, masked_mean, sharding_agnostic
from stcore_jax.similarity import pairwise_cos_sim

# Built-in regression losses by name; a mask only works with these.
_REGRESSION = {
    "mse": lambda pred, target: (pred - target) ** 2,
    "l1": lambda pred, target: jnp.abs(pred - target),
}


@sharding_agnostic
def cosine_similarity_loss(embeddings_a, embeddings_b, labels, *, loss_fct: str | Callable = "mse",
                           cos_score_transformation: Callable | None = None, mask=None):
    """CosineSimilarityLoss (sentence-transformers 6.2).

    Args:
      embeddings_a, embeddings_b: ``[B, D]``.
      labels: ``[B]`` gold scores (typically in [0, 1] or [-1, 1]).
      loss_fct: ``"mse"`` (default, the reference's ``nn.MSELoss()``), ``"l1"``, or a callable
        ``(predictions [B], targets [B]) -> scalar`` (then ``mask`` is not supported).
      cos_score_transformation: optional elementwise function applied to the cosine (identity).
      mask: optional ``[B] bool`` of real rows.

    Returns:
      float32 scalar: mean (over rows) of the regression loss between transformed cosine and label.
    """
    a, b = f32(embeddings_a), f32(embeddings_b)
    labels = f32(labels)
    if labels.size != a.shape[0]:
        raise ValueError(f"CosineSimilarityLoss expects {a.shape[0]} labels (one per example), but got "
                         f"{labels.size} labels with shape {tuple(labels.shape)}.")
    scores = pairwise_cos_sim(a, b)
    if cos_score_transformation is not None:
        scores = cos_score_transformation(scores)
    labels = labels.reshape(-1)
    if callable(loss_fct):
        if mask is not None:
            raise NotImplementedError("A custom loss_fct cannot honour mask=; drop the padded rows instead.")
        return f32(loss_fct(scores, labels))
    if loss_fct not in _REGRESSION:
        raise ValueError(f"loss_fct must be one of {sorted(_REGRESSION)} or a callable, got {loss_fct!r}.")
    return masked_mean(_REGRESSION[loss_fct](scores, labels), mask)


class CosineSimilarityLoss(Loss):
    """Columns ``(text_A, text_B)`` with a float score label. See :func:`cosine_similarity_loss`."""

    min_inputs, max_inputs, label = 2, 2, "required"
    inputs_doc = "(text_A, text_B)"
    label_doc = "a float similarity score label"

    def __init__(self, model=None, loss_fct: str | Callable = "mse",
                 cos_score_transformation: Callable | None = None) -> None:
        super().__init__(model)
        if not callable(loss_fct) and loss_fct not in _REGRESSION:  # fail at construction, not at the first trace
            raise ValueError(f"CosineSimilarityLoss: loss_fct must be one of {sorted(_REGRESSION)} or a callable, "
                             f"got {loss_fct!r}.")
        self.loss_fct = loss_fct
        self.cos_score_transformation = cos_score_transformation

    @property
    def inputs(self):
        """Without a ``cos_score_transformation``, scores past [-1, 1] are out of cosine's reach (a score of 5 is
        chased forever). Finite ones only: an infinite score is left to ``nonfinite_policy``."""
        if self.cos_score_transformation is not None:
            return LossInputs()
        return LossInputs(label_range=LabelRange(
            self.name, "scores in [-1, 1], the range of cosine similarity (scale them, e.g. STS-B's 0-5 scores "
            "divided by 5)", lambda y: np.isfinite(y) & (np.abs(y) > 1)))

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, **context):
        check_context(self.name, context)
        if labels is None:
            raise ValueError(f"{self.name} needs labels.")
        return cosine_similarity_loss(embeddings[0], embeddings[1], labels, loss_fct=self.loss_fct,
                                      cos_score_transformation=self.cos_score_transformation, mask=mask)

    def get_config_dict(self):
        fct = self.loss_fct if isinstance(self.loss_fct, str) else getattr(self.loss_fct, "__name__", "custom")
        transform = getattr(self.cos_score_transformation, "__name__", "identity")
        return {"loss_fct": fct, "cos_score_transformation": transform}
