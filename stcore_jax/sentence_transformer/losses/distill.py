"""Distillation losses: regress student embeddings or scores onto a teacher's.

``EmbedDistillLoss`` / ``MSELoss`` take teacher embeddings as labels; ``MarginMSELoss`` and
``DistillKLDivLoss`` take teacher scores for ``(query, positive, negative_1..n)`` tuples.
Teacher labels never receive gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import (
    Loss,
    LossInputs,
    check_context,
    f32,
    masked_mean,
    resolve_similarity,
    row_mask,
    sharding_agnostic,
    similarity_fct_name,
)
from stcore_jax.similarity import _safe_sqrt, normalize, pairwise_dot_score

DISTANCES = ("mse", "l2", "cosine")


def teacher_columns(labels, num_columns: int) -> list:
    """Teacher embeddings per input column: ``[B, Dt]`` (shared by every column), ``[B, C, Dt]``, or
    an explicit list of ``C`` arrays ``[B, Dt]``."""
    if isinstance(labels, (list, tuple)):
        if len(labels) != num_columns:
            raise ValueError(f"Got {len(labels)} teacher embedding arrays for {num_columns} input columns.")
        return [jax.lax.stop_gradient(f32(t)) for t in labels]
    labels = jax.lax.stop_gradient(f32(labels))
    if labels.ndim == 2:
        return [labels] * num_columns
    if labels.ndim == 3:
        if labels.shape[1] != num_columns:
            raise ValueError(
                f"Number of label columns ({labels.shape[1]}) does not match number of input text columns "
                f"({num_columns}). Pass labels of shape (batch_size, {num_columns}, teacher_dim), or "
                f"(batch_size, teacher_dim) to use one teacher embedding for every column.")
        return [labels[:, i] for i in range(num_columns)]
    raise ValueError(f"Expected teacher embeddings of shape (batch_size, teacher_dim) or "
                     f"(batch_size, num_columns, teacher_dim); got {labels.ndim}D.")


@sharding_agnostic
def embed_distill_loss(embeddings: Sequence, labels, *, distance_metric: str = "cosine", params=None, mask=None):
    """EmbedDistillLoss (sentence-transformers 6.x).

    Args:
      embeddings: sequence of student ``[B, D]`` arrays, one per input column.
      labels: teacher embeddings, see :func:`teacher_columns`.
      distance_metric: ``"mse"`` (mean squared error over elements), ``"l2"`` (mean L2 distance)
        or ``"cosine"`` (mean ``1 - cos``).
      params: ``{"projection": {"kernel": [D, Dt], "bias": [Dt]}}`` when the student is projected
        to the teacher's dimension, else None.
      mask: optional ``[B] bool`` of real rows.

    Returns:
      float32 scalar: the mean over columns of the per-column distance.
    """
    if distance_metric not in DISTANCES:
        raise ValueError(f"distance_metric must be one of {DISTANCES}, but got {distance_metric!r}.")
    teachers = teacher_columns(labels, len(embeddings))
    losses = []
    for student, teacher in zip(embeddings, teachers):
        student = f32(student)
        if params is not None and "projection" in params:
            student = student @ params["projection"]["kernel"] + params["projection"]["bias"]
        if distance_metric == "mse":
            per_row = (student - teacher) ** 2
        elif distance_metric == "l2":
            per_row = _safe_sqrt(jnp.sum((student - teacher) ** 2, axis=-1))  # a padded row is 0 - 0
        else:
            per_row = 1.0 - jnp.sum(normalize(student) * normalize(teacher), axis=-1)
        losses.append(masked_mean(per_row, mask))
    return jnp.mean(jnp.stack(losses))


def mse_loss(embeddings: Sequence, labels, *, params=None, mask=None):
    """MSELoss (sentence-transformers 6.2): :func:`embed_distill_loss` with ``"mse"``."""
    return embed_distill_loss(embeddings, labels, distance_metric="mse", params=params, mask=mask)


@sharding_agnostic
def margin_mse_loss(query, positive, *negatives, labels, similarity_fct: Callable | str = pairwise_dot_score,
                    mask=None):
    """MarginMSELoss (Hofstätter et al. 2020; sentence-transformers 6.2).

    Args:
      query, positive: ``[B, D]``; ``*negatives``: ``n >= 1`` arrays ``[B, D]``.
      labels: teacher margins ``sim(q, p) - sim(q, n_k)`` as ``[B]`` (n = 1) or ``[B, n]``, or raw
        teacher scores ``[B, n + 1]`` (positive first), converted to margins.
      similarity_fct: pairwise similarity (``pairwise_dot_score`` default).
      mask: optional ``[B] bool`` of real rows.

    Returns:
      float32 scalar: MSE between student and teacher margins.
    """
    sim = resolve_similarity(similarity_fct, pairwise=True)
    q = f32(query)
    batch, n = q.shape[0], len(negatives)
    labels = jax.lax.stop_gradient(f32(labels))
    if labels.shape == (batch, n + 1):
        labels = labels[:, :1] - labels[:, 1:]
    if labels.shape == (batch,):
        labels = labels[:, None]
    if labels.shape != (batch, n):
        raise ValueError(
            f"Labels shape {labels.shape} does not match expected shape {(batch, n)}. Ensure that your dataset "
            "labels/scores are 1) lists of differences between positive scores and negatives scores (length "
            "`num_negatives`), or 2) lists of positive and negative scores (length `num_negatives + 1`).")
    pos = sim(q, f32(positive))
    margins = jnp.stack([pos - sim(q, f32(neg)) for neg in negatives], axis=1)
    return masked_mean((margins - labels) ** 2, mask)


@sharding_agnostic
def distill_kl_div_loss(query, *candidates, labels, similarity_fct: Callable | str = pairwise_dot_score,
                        temperature: float = 1.0, student_temperature: float | None = None,
                        teacher_temperature: float | None = None, mask=None):
    """DistillKLDivLoss (sentence-transformers 6.2): KL(teacher || student) over each query's candidates.

    Args:
      query: ``[B, D]``; ``*candidates``: ``(positive, negative_1, ..., negative_n)``, ``n >= 1``.
      labels: teacher scores ``[B, n + 1]`` for the candidates, in column order.
      temperature: default for both temperatures (1.0); the loss is multiplied by
        ``student_temperature ** 2``.
      mask: optional ``[B] bool`` of real rows.

    Returns:
      float32 scalar: ``batchmean`` KL divergence.
    """
    student_t = temperature if student_temperature is None else student_temperature
    teacher_t = temperature if teacher_temperature is None else teacher_temperature
    if len(candidates) < 2:
        raise ValueError(
            f"DistillKLDivLoss expects at least 3 columns (query, positive, negative_1, ...), but got "
            f"{len(candidates) + 1}. A softmax over one candidate is constant, so the loss would be zero.")
    sim = resolve_similarity(similarity_fct, pairwise=True)
    q = f32(query)
    batch = q.shape[0]
    labels = jax.lax.stop_gradient(f32(labels))
    if labels.shape != (batch, len(candidates)):
        raise ValueError(f"DistillKLDivLoss expects teacher scores of shape (batch_size, N) = "
                         f"({batch}, {len(candidates)}) for N candidate columns, but got {tuple(labels.shape)}.")
    student = jnp.stack([sim(q, f32(c)) for c in candidates], axis=1) / student_t
    student_log_probs = jax.nn.log_softmax(student, axis=1)
    teacher_probs = jax.nn.softmax(labels / teacher_t, axis=1)
    per_row = jnp.sum(jax.scipy.special.xlogy(teacher_probs, teacher_probs) - teacher_probs * student_log_probs,
                      axis=1)
    valid = row_mask(mask, batch)
    kl = jnp.sum(jnp.where(valid, per_row, 0.0)) / jnp.maximum(jnp.sum(valid), 1)
    return kl * student_t ** 2


class EmbedDistillLoss(Loss):
    """``1..N`` text columns with teacher embeddings as label. With ``projection_dim`` the loss owns a
    trainable projection ``{"projection": {"kernel": [D, projection_dim], "bias": [projection_dim]}}``
    (:meth:`init_params`), which the trainer must train and pass back as ``params=``."""

    min_inputs, max_inputs, label = 1, None, "required"
    inputs_doc = "(text_1, ..., text_N)"
    label_doc = "teacher embeddings as label ([B, teacher_dim] or [B, N, teacher_dim])"
    _distance = "cosine"

    def __init__(self, model=None, distance_metric: str = "cosine", projection_dim: int | None = None, *,
                 embedding_dimension: int | None = None) -> None:
        super().__init__(model)
        if distance_metric not in DISTANCES:
            raise ValueError(f"distance_metric must be one of {DISTANCES}, but got {distance_metric!r}.")
        self.distance_metric = distance_metric
        self.projection_dim = projection_dim
        if embedding_dimension is None and projection_dim is not None:
            get_dim = getattr(model, "get_embedding_dimension", None) or getattr(
                model, "get_sentence_embedding_dimension", None)
            embedding_dimension = get_dim() if get_dim is not None else None
            if embedding_dimension is None:
                raise ValueError(f"{self.name}(projection_dim=...) needs the student's embedding dimension: "
                                 "pass embedding_dimension= or a model with get_embedding_dimension().")
        self.embedding_dimension = embedding_dimension

    @property
    def inputs(self):
        return LossInputs(owns_params=self.projection_dim is not None)

    def init_params(self, rng):
        """The projection (``torch.nn.Linear``-style uniform init), or ``{}`` without ``projection_dim``."""
        if self.projection_dim is None:
            return {}
        bound = 1.0 / math.sqrt(self.embedding_dimension)
        k_kernel, k_bias = jax.random.split(rng)
        shape = (self.embedding_dimension, self.projection_dim)
        return {"projection": {"kernel": jax.random.uniform(k_kernel, shape, jnp.float32, -bound, bound),
                               "bias": jax.random.uniform(k_bias, (self.projection_dim,), jnp.float32, -bound, bound)}}

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, params=None, mask=None, **context):
        check_context(self.name, context)
        if labels is None:
            raise ValueError(f"{self.name} requires pre-computed teacher embeddings as labels.")
        if self.projection_dim is not None and not params:
            raise ValueError(f"{self.name} owns a projection: pass params= (from init_params(rng)).")
        return embed_distill_loss(list(embeddings), labels, distance_metric=self.distance_metric,
                                  params=params if self.projection_dim is not None else None, mask=mask)

    def get_config_dict(self):
        return {"distance_metric": self.distance_metric, "projection_dim": self.projection_dim}


class MSELoss(EmbedDistillLoss):
    """``1..N`` text columns with teacher embeddings as label; mean squared error. See
    :func:`mse_loss`. ``projection_dim`` adds a trainable student->teacher projection."""

    def __init__(self, model=None, projection_dim: int | None = None, *,
                 embedding_dimension: int | None = None) -> None:
        super().__init__(model, distance_metric="mse", projection_dim=projection_dim,
                         embedding_dimension=embedding_dimension)

    def get_config_dict(self):
        return {"projection_dim": self.projection_dim}


class MarginMSELoss(Loss):
    """Columns ``(query, positive, negative_1, ..., negative_n)`` with teacher margins or scores as
    label. See :func:`margin_mse_loss`."""

    min_inputs, max_inputs, label = 3, None, "required"
    inputs_doc = "(query, positive, negative_1, ..., negative_n)"
    label_doc = "teacher margins ([B] or [B, n]) or teacher scores ([B, n + 1]) as label"

    def __init__(self, model=None, similarity_fct: Callable | str = pairwise_dot_score) -> None:
        super().__init__(model)
        self.similarity_fct = resolve_similarity(similarity_fct, pairwise=True)

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, **context):
        check_context(self.name, context)
        if labels is None:
            raise ValueError(f"{self.name} needs teacher margins as labels.")
        return margin_mse_loss(*embeddings, labels=labels, similarity_fct=self.similarity_fct, mask=mask)

    def get_config_dict(self):
        return {"similarity_fct": similarity_fct_name(self.similarity_fct)}


class DistillKLDivLoss(Loss):
    """Columns ``(query, positive, negative_1, ..., negative_n)`` with teacher scores ``[B, n + 1]``
    as label. See :func:`distill_kl_div_loss`."""

    min_inputs, max_inputs, label = 3, None, "required"
    inputs_doc = "(query, positive, negative_1, ..., negative_n)"
    label_doc = "teacher scores ([B, n + 1]) as label"

    def __init__(self, model=None, similarity_fct: Callable | str = pairwise_dot_score, temperature: float = 1.0,
                 student_temperature: float | None = None, teacher_temperature: float | None = None) -> None:
        super().__init__(model)
        self.similarity_fct = resolve_similarity(similarity_fct, pairwise=True)
        self.temperature = temperature
        self.student_temperature = temperature if student_temperature is None else student_temperature
        self.teacher_temperature = temperature if teacher_temperature is None else teacher_temperature
        for label in ("temperature", "student_temperature", "teacher_temperature"):
            value = getattr(self, label)
            if not 0 < value < math.inf:
                raise ValueError(f"{label} must be a positive finite number, got {value}.")

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, mask=None, **context):
        check_context(self.name, context)
        if labels is None:
            raise ValueError(f"{self.name} needs teacher scores as labels.")
        return distill_kl_div_loss(*embeddings, labels=labels, similarity_fct=self.similarity_fct,
                                   student_temperature=self.student_temperature,
                                   teacher_temperature=self.teacher_temperature, mask=mask)

    def get_config_dict(self):
        config = {"similarity_fct": similarity_fct_name(self.similarity_fct), "temperature": self.temperature}
        if self.student_temperature != self.temperature:
            config["student_temperature"] = self.student_temperature
        if self.teacher_temperature != self.temperature:
            config["teacher_temperature"] = self.teacher_temperature
        return config
