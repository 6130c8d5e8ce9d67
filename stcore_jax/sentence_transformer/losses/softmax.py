"""SoftmaxLoss: a linear classifier over ``(u, v, |u - v|, u * v)`` features of a pair (SBERT NLI)."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax.base.loss import LabelRange, Loss, LossInputs, check_context, f32, masked_mean, sharding_agnostic


def softmax_features(rep_a, rep_b, *, concatenation_sent_rep=True, concatenation_sent_difference=True,
                     concatenation_sent_multiplication=False):
    """``[B, k*D]``: the concatenation the classifier sees, in the reference's order."""
    parts = []
    if concatenation_sent_rep:
        parts += [rep_a, rep_b]
    if concatenation_sent_difference:
        parts.append(jnp.abs(rep_a - rep_b))
    if concatenation_sent_multiplication:
        parts.append(rep_a * rep_b)
    return jnp.concatenate(parts, axis=1)


@sharding_agnostic
def softmax_loss(params, embeddings_a, embeddings_b, labels, *, concatenation_sent_rep: bool = True,
                 concatenation_sent_difference: bool = True, concatenation_sent_multiplication: bool = False,
                 loss_fct: Callable | None = None, mask=None):
    """SoftmaxLoss (sentence-transformers 6.2).

    Args:
      params: ``{"classifier": {"kernel": [k*D, num_labels], "bias": [num_labels]}}``.
      embeddings_a, embeddings_b: ``[B, D]``.
      labels: ``[B]`` int class ids, or ``[B, num_labels]`` class probabilities.
      concatenation_*: which of ``(u, v)``, ``|u - v|``, ``u * v`` feed the classifier.
      loss_fct: ``None`` = cross-entropy (the reference default), or a callable
        ``(logits [B, num_labels], labels) -> scalar`` (then ``mask`` is not supported).
      mask: optional ``[B] bool`` of real rows.

    Returns:
      float32 scalar (mean cross-entropy over rows).
    """
    features = softmax_features(f32(embeddings_a), f32(embeddings_b),
                                concatenation_sent_rep=concatenation_sent_rep,
                                concatenation_sent_difference=concatenation_sent_difference,
                                concatenation_sent_multiplication=concatenation_sent_multiplication)
    kernel, bias = f32(params["classifier"]["kernel"]), f32(params["classifier"]["bias"])
    logits = features @ kernel + bias
    labels = jnp.asarray(labels)
    num_labels = logits.shape[1]
    if num_labels == 1 or labels.shape != logits.shape:
        labels = labels.reshape(-1)
    if loss_fct is not None:
        if mask is not None:
            raise NotImplementedError("A custom loss_fct cannot honour mask=; drop the padded rows instead.")
        return f32(loss_fct(logits, labels))
    log_probs = jax.nn.log_softmax(logits, axis=1)
    if labels.ndim == 2:  # class probabilities
        per_row = -jnp.sum(f32(labels) * log_probs, axis=1)
    else:
        per_row = -jnp.take_along_axis(log_probs, labels.astype(jnp.int32)[:, None], axis=1)[:, 0]
    return masked_mean(per_row, mask)


class SoftmaxLoss(Loss):
    """Columns ``(text_A, text_B)`` with a class label. Owns trainable parameters: the trainer
    must add ``init_params(rng)`` to its train state and pass them back as ``params=``.

    Constructor as SPEC D2: ``sentence_embedding_dimension`` and ``num_labels`` are required;
    the 6.x keyword ``embedding_dimension`` is accepted as an alias.
    """

    min_inputs, max_inputs, label = 2, 2, "required"
    inputs_doc = "(text_A, text_B)"
    label_doc = "a class label"

    def __init__(self, model=None, sentence_embedding_dimension: int | None = None, num_labels: int | None = None,
                 concatenation_sent_rep: bool = True, concatenation_sent_difference: bool = True,
                 concatenation_sent_multiplication: bool = False, loss_fct: Callable | None = None, *,
                 embedding_dimension: int | None = None) -> None:
        super().__init__(model)
        if sentence_embedding_dimension is None:
            sentence_embedding_dimension = embedding_dimension
        elif embedding_dimension is not None and embedding_dimension != sentence_embedding_dimension:
            raise ValueError("SoftmaxLoss got both sentence_embedding_dimension and embedding_dimension, "
                             "with different values.")
        if sentence_embedding_dimension is None or num_labels is None:
            raise ValueError("SoftmaxLoss needs sentence_embedding_dimension (alias embedding_dimension) "
                             "and num_labels.")
        self.num_vectors = (2 * concatenation_sent_rep + concatenation_sent_difference
                            + concatenation_sent_multiplication)
        if self.num_vectors == 0:
            raise ValueError("At least one of concatenation_sent_rep, concatenation_sent_difference, "
                             "or concatenation_sent_multiplication must be True.")
        self.sentence_embedding_dimension = sentence_embedding_dimension
        self.num_labels = num_labels
        self.concatenation_sent_rep = concatenation_sent_rep
        self.concatenation_sent_difference = concatenation_sent_difference
        self.concatenation_sent_multiplication = concatenation_sent_multiplication
        self.loss_fct = loss_fct

    @property
    def inputs(self):
        """Owns its classifier. With the default cross-entropy, labels are class ids 0..num_labels-1: past the
        classes one gathers NaN (the step is skipped), -1 wraps to the last class, 1.5 is truncated (PyTorch raises
        for these)."""
        if self.loss_fct is not None:
            return LossInputs(owns_params=True)
        n = self.num_labels
        return LossInputs(owns_params=True, label_range=LabelRange(
            self.name, f"integer class ids 0..{n - 1} (num_labels={n})",
            lambda y: (y != np.floor(y)) | (y < 0) | (y >= n)))

    def init_params(self, rng):
        """``{"classifier": {"kernel": [k*D, num_labels], "bias": [num_labels]}}``, initialised like
        ``torch.nn.Linear`` (uniform in ``+-1/sqrt(fan_in)``)."""
        fan_in = self.num_vectors * self.sentence_embedding_dimension
        bound = 1.0 / math.sqrt(fan_in)
        k_kernel, k_bias = jax.random.split(rng)
        return {"classifier": {
            "kernel": jax.random.uniform(k_kernel, (fan_in, self.num_labels), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(k_bias, (self.num_labels,), jnp.float32, -bound, bound)}}

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, params=None, mask=None, **context):
        check_context(self.name, context)
        if params is None:
            raise ValueError(f"{self.name} owns a classifier: pass params= (from init_params(rng)).")
        if labels is None:
            raise ValueError(f"{self.name} needs labels.")
        return softmax_loss(params, embeddings[0], embeddings[1], labels,
                            concatenation_sent_rep=self.concatenation_sent_rep,
                            concatenation_sent_difference=self.concatenation_sent_difference,
                            concatenation_sent_multiplication=self.concatenation_sent_multiplication,
                            loss_fct=self.loss_fct, mask=mask)

    def predict_logits(self, params, embeddings):
        """Classifier logits ``[B, num_labels]`` (the reference's ``forward(..., labels=None)`` output)."""
        features = softmax_features(f32(embeddings[0]), f32(embeddings[1]),
                                    concatenation_sent_rep=self.concatenation_sent_rep,
                                    concatenation_sent_difference=self.concatenation_sent_difference,
                                    concatenation_sent_multiplication=self.concatenation_sent_multiplication)
        return features @ params["classifier"]["kernel"] + params["classifier"]["bias"]

    def get_config_dict(self):
        return {"num_labels": self.num_labels, "concatenation_sent_rep": self.concatenation_sent_rep,
                "concatenation_sent_difference": self.concatenation_sent_difference,
                "concatenation_sent_multiplication": self.concatenation_sent_multiplication}
