"""``CrossEncoderTrainingArguments``: the bi-encoder's arguments (the reference's ``BaseTrainingArguments``
has the same fields), with ``prompts`` and ``router_mapping`` restricted to one string or
``{dataset_name: str}``: a CrossEncoder merges the columns into pairs, so per-column entries cannot apply."""

from __future__ import annotations

import dataclasses

from stcore_jax.cross_encoder.data import check_scalar_mapping
from stcore_jax.training.arguments import TrainingArguments


@dataclasses.dataclass
class CrossEncoderTrainingArguments(TrainingArguments):
    """The arguments of :class:`stcore_jax.cross_encoder.CrossEncoderTrainer`."""

    def __post_init__(self):
        super().__post_init__()
        check_scalar_mapping(self.prompts, "prompts",
                             "prompts='Search: ' or prompts={'dataset_a': 'Search: ', 'dataset_b': 'Retrieve: '}")
        check_scalar_mapping(self.router_mapping, "router_mapping",
                             "router_mapping={'dataset_a': 'rerank', 'dataset_b': 'rerank'}")
