"""Distillation losses over sparse ``[B, V]`` embeddings: SparseMarginMSELoss, SparseDistillKLDivLoss (both to be
wrapped by SpladeLoss or CSRLoss) and SparseMSELoss (the one sparse loss that trains alone).

The functions are the bi-encoder's (:mod:`stcore_jax.sentence_transformer.losses.distill`), unchanged; the defaults
are sentence-transformers 6.2's sparse ones: dot-product similarity, and ``temperature=2.0`` for the KL loss.
"""

from __future__ import annotations

from collections.abc import Callable

from stcore_jax.sentence_transformer.losses.distill import DistillKLDivLoss, MarginMSELoss, MSELoss
from stcore_jax.similarity import pairwise_dot_score
from stcore_jax.sparse_encoder.losses.standalone import NeedsWrapper


class SparseMarginMSELoss(NeedsWrapper, MarginMSELoss):
    """Columns ``(query, positive, negative_1, ..., negative_n)`` with teacher margins ``[B]``/``[B, n]`` or
    teacher scores ``[B, n + 1]`` as label: ``MSE(s(q, p) - s(q, n_j), y_j)`` with ``s`` the pairwise dot
    product. Must be wrapped by SpladeLoss or CSRLoss."""

    def __init__(self, model=None, similarity_fct: Callable | str = pairwise_dot_score) -> None:
        super().__init__(model, similarity_fct=similarity_fct)


class SparseDistillKLDivLoss(NeedsWrapper, DistillKLDivLoss):
    """Columns ``(query, positive, negative_1, ..., negative_n)`` (at least 3) with teacher scores ``[B, n + 1]``:
    ``KL(softmax(y / T_t) || log_softmax(s / T_s)) * T_s ** 2`` (batchmean), ``T`` defaulting to 2.0 here (1.0 in
    the bi-encoder). Must be wrapped by SpladeLoss or CSRLoss."""

    def __init__(self, model=None, similarity_fct: Callable | str = pairwise_dot_score, temperature: float = 2.0,
                 student_temperature: float | None = None, teacher_temperature: float | None = None) -> None:
        super().__init__(model, similarity_fct=similarity_fct, temperature=temperature,
                         student_temperature=student_temperature, teacher_temperature=teacher_temperature)


class SparseMSELoss(MSELoss):
    """``1..N`` text columns with teacher embeddings (``[B, V]`` or ``[B, N, V]``) as label: mean squared error,
    averaged over columns. Trains on its own (the reference's only sparse loss that does)."""

    def __init__(self, model=None) -> None:
        super().__init__(model)
