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
class DatasetConfig:
    """One dataset of a ``data.train`` / ``data.eval`` given as a mapping (see :class:`DataConfig`).

    Every key left out (null) takes the ``data`` section's value: ``format``, ``subset``, ``columns``,
    ``score_scale``, ``hard_negatives`` as named there, ``split`` from ``train_split`` / ``eval_split``,
    ``max_rows`` from ``max_train_rows`` / ``max_eval_rows``. After checking, every field holds the value
    the dataset is loaded with (``path`` absolute where local).
    """

    path: str | None = None  # required: a file, an STS-B directory, "quickstart" or a hub dataset id
    format: str | None = None
    subset: str | None = None
    split: str | None = None
    columns: list | None = None
    max_rows: int | None = None
    score_scale: float | None = None
    hard_negatives: HardNegativesConfig | None = None  # training datasets only


DATASET_KEYS = tuple(f.name for f in dataclasses.fields(DatasetConfig))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training / evaluation rows.

    ``train`` and ``eval`` are each one of:

    - a source (as before): a file (``.csv``/``.tsv``/``.jsonl``/``.json``/``.parquet``), an STS benchmark
      directory (``sts-train.csv`` …), ``"quickstart"`` (the embedded help-desk pairs), or a hub dataset id
      (online), read with the section's keys below;
    - one dataset spec, a mapping of :class:`DatasetConfig` keys (``{path: ..., split: ..., columns: ...}``);
    - several named datasets, a mapping ``{name: source or spec}`` (the trainer's dict of datasets: a loss,
      prompts and eval loss per name; ``arguments.multi_dataset_batch_sampler`` mixes them).

    A mapping that has any :class:`DatasetConfig` key is one spec, otherwise it names datasets; so a dataset
    cannot be named ``path``, ``split``, ... (a mapping mixing both is refused, naming the keys).
    ``columns`` keeps and orders columns (inputs first, label last). After checking, ``train``/``eval`` hold a
    source (str), a :class:`DatasetConfig` or a dict name -> :class:`DatasetConfig`; :meth:`datasets` gives
    each as specs.
    """

    train: Any = None  # str | DatasetConfig | dict[str, DatasetConfig] | None
    eval: Any = None
    format: str = "auto"  # auto | stsb | csv | tsv | json | parquet | hub | quickstart
    subset: str | None = None  # hub dataset configuration, e.g. "triplet" for sentence-transformers/all-nli
    train_split: str = "train"  # split (hub datasets / STS-B directories)
    eval_split: str = "validation"
    columns: list | None = None
    max_train_rows: int | None = None
    max_eval_rows: int | None = None
    score_scale: float | None = None  # divide the label by this (e.g. 5.0 for raw STS-B scores)
    hard_negatives: HardNegativesConfig = dataclasses.field(default_factory=HardNegativesConfig)  # train rows

    def spec(self, which: str, entry: DatasetConfig | None = None) -> DatasetConfig:
        """``entry`` (default: an empty one) with every unset key taken from this section, for ``which``
        (``"train"`` or ``"eval"``); a str ``train``/``eval`` is such an empty entry with its path."""
        entry = entry or DatasetConfig()
        inherited = {"format": self.format, "subset": self.subset, "columns": self.columns,
                     "score_scale": self.score_scale,
                     "split": self.train_split if which == "train" else self.eval_split,
                     "max_rows": self.max_train_rows if which == "train" else self.max_eval_rows,
                     "hard_negatives": self.hard_negatives if which == "train" else HardNegativesConfig()}
        return dataclasses.replace(entry, **{k: v for k, v in inherited.items() if getattr(entry, k) is None})

    def datasets(self, which: str) -> tuple[dict[str, DatasetConfig], bool]:
        """``({name: spec}, is_dict)`` of ``train`` or ``eval``: one unnamed dataset is ``{which: spec}``
        (the trainer's own name for it), ``{}`` when not configured."""
        value = getattr(self, which)
        if value is None:
            return {}, False
        if isinstance(value, dict):
            return dict(value), True
        one = value if isinstance(value, DatasetConfig) else self.spec(which, DatasetConfig(path=value))
        return {which: one}, False


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
    # one loss for every training dataset, or {dataset name: LossConfig} (exactly data.train's names)
    loss: Any = dataclasses.field(default_factory=LossConfig)
    arguments: SentenceTransformerTrainingArguments = dataclasses.field(
        default_factory=lambda: SentenceTransformerTrainingArguments(output_dir="output"))
    evaluator: EvaluatorConfig = dataclasses.field(default_factory=EvaluatorConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


SECTIONS: dict[str, Any] = {f.name: f for f in dataclasses.fields(RunConfig)}
