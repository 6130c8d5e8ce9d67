"""The run configuration: frozen dataclasses, one per concern. YAML only fills them (see ``load.py``).

A run is ``model`` (what to load; ``family`` picks SentenceTransformer, CrossEncoder or SparseEncoder) + ``data``
(where the rows come from) + ``loss`` + ``arguments`` (:class:`~stcore_jax.SentenceTransformerTrainingArguments`,
:class:`~stcore_jax.CrossEncoderTrainingArguments` or :class:`~stcore_jax.SparseEncoderTrainingArguments` with
``router_mapping`` and ``learning_rate_mapping``, same names as sentence-transformers) + ``evaluator`` +
``mesh`` (device layout, checked against the topology before anything loads).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from stcore_jax.training.arguments import SentenceTransformerTrainingArguments


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """What to load: a local directory, a hub id (online), or ``"all-MiniLM-L6-v2"`` (offline package)."""

    name_or_path: str = "all-MiniLM-L6-v2"
    max_seq_length: int | None = None  # truncate inputs (tokens); None keeps the model's own
    # encode compute dtype ("float32"/"bfloat16"; weights stay float32); training: arguments.bf16
    dtype: str = "float32"
    length_buckets: list | None = None  # padding lengths for encode
    # sentence_transformer | cross_encoder | sparse_encoder: the model class, trainer, losses, evaluators
    family: str = "sentence_transformer"
    # CrossEncoder only (family: cross_encoder):
    num_labels: int | None = None  # head outputs; None: the checkpoint's (1 for a plain encoder, which gets a new head)
    activation_fn: str | None = None  # predict/rank's and the export's: sigmoid, identity, ... or a torch dotted path


@dataclasses.dataclass(frozen=True)
class HardNegativesConfig:
    """Hard negatives mined by a bi-encoder (``stcore_jax.util.mine_hard_negatives``) from (anchor, positive) rows.

    ``model`` None: no mining. ``min_label``: keep only rows whose label (the last column) is >= this, then drop
    the label (e.g. STS-B pairs scored >= 0.8 as (query, answer)). ``kwargs``: mine_hard_negatives arguments
    (num_negatives, range_min, range_max, sampling_strategy, output_format, ...).
    """

    model: str | None = None
    min_label: float | None = None
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training / evaluation rows.

    ``train`` and ``eval`` are a file (``.csv``/``.tsv``/``.jsonl``/``.json``/``.parquet``), an STS
    benchmark directory (``sts-train.csv`` …), ``"quickstart"`` (the embedded help-desk pairs), or a
    hub dataset id (online). ``columns`` keeps and orders columns (inputs first, label last).
    """

    train: str | None = None
    eval: str | None = None
    format: str = "auto"  # auto | stsb | csv | tsv | json | parquet | hub | quickstart
    subset: str | None = None  # hub dataset configuration, e.g. "triplet" for sentence-transformers/all-nli
    train_split: str = "train"  # split (hub datasets / STS-B directories)
    eval_split: str = "validation"
    columns: list | None = None
    max_train_rows: int | None = None
    max_eval_rows: int | None = None
    score_scale: float | None = None  # divide the label by this (e.g. 5.0 for raw STS-B scores)
    hard_negatives: HardNegativesConfig = dataclasses.field(default_factory=HardNegativesConfig)  # train rows


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """A sentence-transformers loss by class name plus its keyword arguments.

    Wrapper losses (``MatryoshkaLoss``, ``AdaptiveLayerLoss``, …) take the inner loss as a nested
    ``{name: ..., ...}`` under ``kwargs.loss``.
    """

    name: str = "CoSENTLoss"
    kwargs: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    """An evaluator by class name, fed from ``data`` (default: the ``data.eval`` rows).

    ``hard_negatives`` (CrossEncoderRerankingEvaluator): each (query, positive) row's documents are mined from the
    rows' positives, the positive kept among them where retrieved (``include_positives``, n-tuple output).
    """

    name: str | None = None  # None: no evaluator
    data: str | None = None
    max_rows: int | None = None
    kwargs: dict = dataclasses.field(default_factory=dict)
    hard_negatives: HardNegativesConfig = dataclasses.field(default_factory=HardNegativesConfig)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device layout. ``topology`` (e.g. ``"v5p-64"``) pins the device count the mesh must use.

    ``data`` None means "all devices not used by ``fsdp``". Both axes split the batch (global batch =
    per-device batch x data x fsdp); ``fsdp`` > 1 also shards parameters and optimizer state over that
    many devices (training/sharding.py).
    """

    topology: str | None = None
    data: int | None = None
    fsdp: int = 1


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    arguments: SentenceTransformerTrainingArguments = dataclasses.field(
        default_factory=lambda: SentenceTransformerTrainingArguments(output_dir="output"))
    evaluator: EvaluatorConfig = dataclasses.field(default_factory=EvaluatorConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


SECTIONS: dict[str, Any] = {f.name: f for f in dataclasses.fields(RunConfig)}
