"""``SparseEncoderTrainingArguments``: the bi-encoder's arguments unchanged, as in the reference (its
``SparseEncoderTrainingArguments`` is ``BaseTrainingArguments``): per-column ``prompts``, ``router_mapping``
(``{column: route}`` or ``{dataset: {column: route}}``) and ``learning_rate_mapping`` (``{regex: lr}``, matched
against the parameter paths, their torch-style paths and their module class names, e.g.
``{r"SparseStaticEmbedding\\.weight": 1e-3}``)."""

from __future__ import annotations

import dataclasses

from stcore_jax.training.arguments import TrainingArguments


@dataclasses.dataclass
class SparseEncoderTrainingArguments(TrainingArguments):
    """The arguments of :class:`stcore_jax.sparse_encoder.SparseEncoderTrainer`."""
