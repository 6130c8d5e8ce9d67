"""The CrossEncoder ``README.md``: sentence-transformers 6.2's card (``cross_encoder/model_card.py`` and
``model_card_template.md``), filled from a stcore_jax training run.

:class:`CrossEncoderModelCardData` takes the reference's arguments (language, license, model_name, model_id,
train_datasets, eval_datasets, task_name, tags, local_files_only, generate_widget_examples);
:class:`CrossEncoderModelCardCallback` (added by the trainer) fills it: the datasets (size, columns, token
statistics of the first 100 rows, three samples, the loss and its ``get_config_dict``), the training arguments
that differ from the defaults, the training-log table and, through ``set_evaluation_metrics``, every
evaluator's metrics. :func:`generate_model_card` renders the reference template's sections
(cross_encoder/model_card_render.py).

Where the card differs from the reference's, on purpose: Framework Versions lists stcore_jax, JAX and Flax
where the reference lists PyTorch and Accelerate ("Sentence Transformers" is :data:`FORMAT_VERSION`, the
release whose format is written); the first sentence says the model was trained with stcore_jax; stcore_jax's
losses and evaluators link to the sentence-transformers documentation of the same class; the Hub is never
queried (dataset ids are listed as given or as read from the dataset's cache, the base model is read from a
hub-cache path); no CodeCarbon section.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Any

import numpy as np

from stcore_jax.base import model_card as mc
from stcore_jax.training.callbacks import TrainerCallback

logger = logging.getLogger(__name__)

DEFAULT_TAGS = ("sentence-transformers", "cross-encoder", "reranker")
DEFAULT_USAGE = [
    ["How many calories in an egg", "There are on average between 55 and 80 calories in an egg depending on its size."],
    ["How many calories in an egg",
     "Egg whites are very low in calories, have no fat, no cholesterol, and are loaded with protein."],
    ["How many calories in an egg", "Most of the calories in an egg come from the yellow yolk in the center."],
]


def get_losses(losses) -> list:
    """The distinct losses (a dict's values, by identity) and the losses they wrap (``.loss`` and the
    regularizers), as the reference lists them."""
    out = []
    for lo in (losses.values() if isinstance(losses, dict) else [losses]):
        if not any(lo is o for o in out):
            out.append(lo)
    i = 0
    while i < len(out):
        for attr in ("loss", "document_regularizer", "query_regularizer"):
            inner = getattr(out[i], attr, None)
            if inner is not None and not isinstance(inner, (int, float)) and not any(inner is o for o in out):
                out.append(inner)
        i += 1
    return out


@dataclasses.dataclass
class CrossEncoderModelCardData:
    """What the card of a :class:`~stcore_jax.CrossEncoder` reports (sentence-transformers'
    ``CrossEncoderModelCardData``: the same arguments; the other fields are filled during training).

    Args:
      language: ``"en"`` or ``["en", "de"]``.
      license: e.g. ``"apache-2.0"``.
      model_name: the card's title (default ``"CrossEncoder based on {base_model}"``).
      model_id: the Hub id ``"org/name"`` the usage snippet loads.
      train_datasets / eval_datasets: ``[{"name": ..., "id": ...}]``, one per dataset given to the trainer.
      task_name: what the scores are for (default by ``num_labels``).
      tags: the front-matter tags (default ``sentence-transformers, cross-encoder, reranker``).
      local_files_only, generate_widget_examples: as the reference's (the latter: run ``predict`` on the usage
        examples for the snippet's output).
    """

    language: str | list[str] | None = dataclasses.field(default_factory=list)
    license: str | None = None
    model_name: str | None = None
    model_id: str | None = None
    train_datasets: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    eval_datasets: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    task_name: str | None = None
    tags: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_TAGS))
    local_files_only: bool = False
    generate_widget_examples: bool = True

    # Filled by the callback, the trainer and the evaluators.
    base_model: str | None = dataclasses.field(default=None, init=False)
    base_model_revision: str | None = dataclasses.field(default=None, init=False)
    non_default_hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict, init=False)
    all_hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict, init=False)
    eval_results_dict: dict = dataclasses.field(default_factory=dict, init=False, repr=False)  # evaluator -> metrics
    training_logs: list[dict[str, Any]] = dataclasses.field(default_factory=list, init=False)
    usage_examples: list | None = dataclasses.field(default=None, init=False)
    citations: dict[str, str] = dataclasses.field(default_factory=dict, init=False)
    best_model_step: int | None = dataclasses.field(default=None, init=False)
    datasets: list[str] = dataclasses.field(default_factory=list, init=False, repr=False)  # Hub dataset ids
    similarities: str | None = dataclasses.field(default=None, init=False, repr=False)
    training_curve: str | None = dataclasses.field(default=None, init=False, repr=False)  # training/plots.py
    evaluation_duration: float = dataclasses.field(default=0.0, init=False, repr=False)
    training_start_time: float | None = dataclasses.field(default=None, init=False, repr=False)
    pipeline_tag: str | None = dataclasses.field(default=None, init=False)
    library_name: str = dataclasses.field(default="sentence-transformers", init=False)
    model: Any = dataclasses.field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.language, str):
            self.language = [self.language]
        self.language = list(self.language or [])
        self.tags = list(self.tags) if self.tags is not None else list(DEFAULT_TAGS)
        self.train_datasets = self.validate_datasets(self.train_datasets, "train_datasets")
        self.eval_datasets = self.validate_datasets(self.eval_datasets, "eval_datasets")
        if self.model_id and self.model_id.count("/") != 1:
            logger.warning("The provided %r model ID should include the organization or user, such as "
                           '"tomaarsen/mpnet-base-nli-matryoshka". Setting `model_id` to None.', self.model_id)
            self.model_id = None

    # -- setters (the reference's API) ---------------------------------------------------------
    def validate_datasets(self, dataset_list, what: str = "datasets") -> list[dict[str, Any]]:
        """Each entry a dict; ``name`` defaults to ``id``; ids are collected for the front matter (not looked
        up on the Hub)."""
        out = []
        for i, ds in enumerate(dataset_list or []):
            if not isinstance(ds, dict):
                raise ValueError(f"CrossEncoderModelCardData({what}=...): entry {i} is {ds!r}; give one dict per "
                                 f"dataset, e.g. {what}=[{{'name': 'STSB', 'id': 'sentence-transformers/stsb'}}]")
            if "name" not in ds and "id" in ds:
                ds["name"] = ds["id"]
            if ds.get("id") and ds["id"] not in self.datasets:
                self.datasets.append(ds["id"])
            out.append(ds)
        return out

    def add_tags(self, tags: str | list[str]) -> None:
        for tag in [tags] if isinstance(tags, str) else tags:
            if tag not in self.tags:
                self.tags.append(tag)

    def set_language(self, language: str | list[str]) -> None:
        self.language = [language] if isinstance(language, str) else list(language)

    def set_license(self, license: str) -> None:  # noqa: A002 (the reference's name)
        self.license = license

    def set_model_id(self, model_id: str) -> None:
        self.model_id = model_id

    def set_base_model(self, model_id: str | None, revision: str | None = None) -> bool:
        """Record the model this one was fine-tuned from (not checked against the Hub)."""
        if not model_id:
            return False
        self.base_model, self.base_model_revision = model_id, revision
        return True

    def set_best_model_step(self, step: int) -> None:
        self.best_model_step = step

    def set_losses(self, losses: list) -> None:
        """Citations (the losses' ``citation``, one entry per distinct text) and a ``loss:Name`` tag per class."""
        citations = {"Sentence Transformers": mc.SBERT_CITATION}
        for loss in losses:
            if isinstance(getattr(loss, "citation", None), str):
                citations[type(loss).__name__] = loss.citation
        by_text: dict[str, list[str]] = {}
        for name, text in citations.items():
            by_text.setdefault(text, []).append(name)

        def join(names):
            return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]

        self.citations = {join(names): text for text, names in by_text.items()}
        self.add_tags([f"loss:{name}" for name in {type(lo).__name__: lo for lo in losses}])

    def set_evaluation_metrics(self, evaluator, metrics: dict[str, Any], epoch: int = 0, step: int = 0) -> None:
        """Called by every evaluator: its latest metrics, and its primary metric(s) in the training logs."""
        self.eval_results_dict[evaluator] = dict(metrics)
        primary = getattr(evaluator, "primary_metric", None)
        if not primary:
            return
        subs = getattr(evaluator, "evaluators", None)
        keys = [getattr(e, "primary_metric", None) for e in subs] if subs else [primary]
        row = {k: v for k, v in metrics.items() if k in keys}
        if self.training_logs and self.training_logs[-1]["Step"] == step:
            self.training_logs[-1].update(row)
        else:
            self.training_logs.append({"Epoch": epoch, "Step": step, **row})

    def set_widget_examples(self, dataset) -> None:
        """Up to 5 pairs from the first two text columns of ``dataset`` (the first of a dict) for the usage
        snippet; a list column pairs its first row's query with up to 5 of its documents."""
        if isinstance(dataset, dict):
            dataset = next(iter(dataset.values()), None)
        if dataset is None or not hasattr(dataset, "select") or len(dataset) == 0:
            return
        first = dataset[0]
        cols = [c for c, v in first.items() if c not in ("dataset_name", "label") and (
            isinstance(v, str) or (isinstance(v, list) and v and isinstance(v[0], str)))][:2]
        if len(cols) < 2:
            return
        head = dataset[:5]
        queries, answers = head[cols[0]], head[cols[1]]
        if isinstance(first[cols[1]], list):
            answers = answers[0][:5]
            queries = [queries[0]] * len(answers)
        self.usage_examples = [[q, a] for q, a in zip(queries, answers)]

    def register_model(self, model) -> None:
        self.model = model
        if self.task_name is None:
            self.task_name = ("text reranking and semantic search" if model.num_labels == 1
                              else "text pair classification")
        if self.pipeline_tag is None:
            self.pipeline_tag = "text-ranking" if model.num_labels == 1 else "text-classification"
        if not self.base_model:
            self.set_base_model(mc.guess_base_model(getattr(model, "model_path", None)))

    # -- datasets ------------------------------------------------------------------------------
    @staticmethod
    def infer_datasets(datasets: dict, is_dict: bool) -> list[dict[str, Any]]:
        """``{"name", "split", "size", "id", "revision"}`` per dataset, from the dict's keys or the dataset's
        info (a Hub dataset's id and revision from its download checksums)."""
        out = []
        for key, ds in datasets.items():
            name = key if is_dict and not re.match(r"_dataset_\d+", key) else None
            info = getattr(ds, "info", None)
            entry = {"name": name or getattr(info, "dataset_name", None), "split": str(getattr(ds, "split", None))}
            splits = getattr(info, "splits", None)
            if splits and getattr(ds, "split", None) in splits:
                entry["size"] = splits[ds.split].num_examples
            checksums = getattr(ds, "download_checksums", None) or {}
            source = next(iter(checksums), "")
            if source.startswith("hf://datasets/") and "@" in source:
                entry["id"], rest = source[len("hf://datasets/"):].split("@", 1)
                if len(revision := rest.split("/")[0]) == 40:
                    entry["revision"] = revision
            out.append(entry)
        return out

    def compute_dataset_metrics(self, dataset, info: dict[str, Any], loss) -> dict[str, Any]:
        """Size, columns, statistics of the first 100 rows (texts in tokens of the model's tokenizer, as the
        reference counts them), three samples and the loss with its parameters."""
        info["size"] = len(dataset)
        columns = [c for c in dataset.column_names if c != "dataset_name"]
        info["columns"] = [f"<code>{c}</code>" for c in columns]
        head = dataset.select(range(min(len(dataset), mc.STATS_ROWS)))
        if len(head):
            try:
                stats = {c: mc.column_stats(list(head[c]), self._count_tokens) for c in columns}
                info["stats_table"] = mc.stats_table(stats)
            except Exception as exc:  # noqa: BLE001 (odd values, e.g. None in a text column, must not stop training)
                logger.warning("Model card: no column statistics for dataset %r: %s", info.get("name"), exc)
            examples = dataset[:3]
            info["examples_table"] = mc.examples_table({c: examples[c] for c in columns}, columns)
        info["loss"] = {"fullname": mc.fullname(loss)}
        if hasattr(loss, "get_config_dict"):
            info["loss"]["config_code"] = mc.config_code(dict(loss.get_config_dict()))
        return info

    def _count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text (special tokens included, truncated to ``max_seq_length``)."""
        return [len(ids) for ids in self.model.input_module.tokenize_ids(list(texts))["input_ids"]]

    def extract_dataset_metadata(self, datasets: dict, is_dict: bool, metadata: list, losses: dict,
                                 dataset_type: str) -> list[dict[str, Any]]:
        """The card's entries for the trainer's ``datasets`` (name -> Dataset); ``metadata`` (the user's
        ``train_datasets``/``eval_datasets``) names them when it has one entry per dataset."""
        if not datasets:
            return metadata
        if metadata and len(metadata) != len(datasets):
            logger.warning("The number of `%s_datasets` in the model card data does not match the number of %s "
                           "datasets in the Trainer. Removing the provided `%s_datasets` from the model card data.",
                           dataset_type, dataset_type, dataset_type)
            metadata = []
        metadata = metadata or self.infer_datasets(datasets, is_dict)
        out = [self.compute_dataset_metrics(ds, info, losses[name])
               for (name, ds), info in zip(datasets.items(), metadata)]
        if dataset_type == "train" and (total := sum(i.get("size", 0) for i in out)):
            self.add_tags(f"dataset_size:{total}")
        return self.validate_datasets(out, f"{dataset_type}_datasets")

    # -- rendering -----------------------------------------------------------------------------
    def run_usage_snippet(self) -> None:
        """The usage pairs, and (``generate_widget_examples``) the model's scores for them."""
        if self.usage_examples is None:
            self.usage_examples = [list(p) for p in DEFAULT_USAGE]
        if not self.generate_widget_examples or self.model is None:
            return
        scores = self.model.predict(self.usage_examples, convert_to_numpy=True, show_progress_bar=False)
        with np.printoptions(precision=4):
            self.similarities = "\n".join(f"# {line}" for line in str(np.asarray(scores)).splitlines())

    def to_dict(self) -> dict[str, Any]:
        """The template's variables (the reference's ``to_dict``): the fields, the front-matter values, the
        usage snippet, evaluation tables, training logs, durations and the model's own details."""
        from stcore_jax.cross_encoder.model_card_render import usage_snippet

        if not self.base_model and self.model is not None:
            self.set_base_model(mc.guess_base_model(getattr(self.model, "model_path", None)))
        if not self.model_name:
            self.model_name = f"CrossEncoder based on {self.base_model}" if self.base_model else "CrossEncoder"
        try:
            self.run_usage_snippet()
        except Exception as exc:  # noqa: BLE001 (the card is written without the scores, as the reference does)
            logger.warning("Error while computing usage snippet output: %s", exc)
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}
        out["usage_snippet"] = usage_snippet(self.model_id, self.usage_examples, self.similarities,
                                             self.model.num_labels if self.model is not None else 1)
        if self.eval_results_dict:
            out.update(mc.format_eval_metrics(self.eval_results_dict, self.model_name))
        if self.training_logs:
            out.update(mc.format_training_logs(self.training_logs, self.best_model_step))
        out["hide_eval_lines"] = len(self.training_logs) > 100
        out.update(self._durations())
        out["version"] = mc.framework_versions()
        if self.model is not None:
            out.update({"model_max_length": self.model.max_seq_length, "model_string": repr(self.model),
                        "supported_modalities": ["Text"], "model_num_labels": self.model.num_labels})
        return out

    def _durations(self) -> dict[str, str | None]:
        if self.training_start_time is None:
            return {"training_time": None, "evaluation_time": None, "total_time": None}
        total = time.time() - self.training_start_time
        ev = self.evaluation_duration
        return {"training_time": mc.format_duration(total - ev),
                "evaluation_time": mc.format_duration(ev) if ev else None,
                "total_time": mc.format_duration(total) if ev else None}


class CrossEncoderModelCardCallback(TrainerCallback):
    """Fills ``model.model_card_data`` from a :class:`~stcore_jax.cross_encoder.CrossEncoderTrainer` (the
    reference's ``BaseModelCardCallback``): datasets, losses and usage pairs at init, the arguments at the start,
    the training and validation losses as they are logged."""

    def __init__(self, trainer):
        self.trainer = trainer

    @staticmethod
    def _card(model) -> CrossEncoderModelCardData:
        card = getattr(model, "model_card_data", None)
        if card is None:
            card = model.model_card_data = CrossEncoderModelCardData()
            card.register_model(model)
        if not isinstance(card, CrossEncoderModelCardData):
            raise ValueError(f"model.model_card_data is a {type(card).__name__}; a CrossEncoder's card data must be a "
                             f"stcore_jax.cross_encoder.CrossEncoderModelCardData (or None for a default one)")
        return card

    def on_init_end(self, args, state, control, model=None, **kwargs):
        t, card = self.trainer, self._card(model)
        card.add_tags("generated_from_trainer")
        card.train_datasets = card.extract_dataset_metadata(t.train_data, t.train_is_dict, card.train_datasets,
                                                            t.loss, "train")
        card.eval_datasets = card.extract_dataset_metadata(t.eval_data, t.eval_is_dict, card.eval_datasets, t.loss,
                                                           "eval")
        card.set_losses(get_losses(t.loss))
        card.set_widget_examples(t.eval_data or t.train_data)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        card = self._card(model)
        defaults = type(args)(output_dir="unused").to_dict()
        card.all_hyperparameters, card.non_default_hyperparameters = mc.non_default_arguments(args.to_dict(),
                                                                                              defaults)
        card.training_start_time = time.time()

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        card, metrics = self._card(model), metrics or {}
        losses = {" ".join(k.split("_")[1:]): v for k, v in metrics.items()
                  if k.startswith("eval_") and k.endswith("_loss")}
        if len(losses) == 1 and "loss" in losses:
            losses = {"Validation Loss": losses["loss"]}
        card.evaluation_duration += metrics.get("eval_runtime", 0.0)
        self._row(card, state).update(losses)

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._row(self._card(model), state)["Training Loss"] = logs["loss"]

    def on_train_end(self, args, state, control, model=None, **kwargs):
        best = getattr(state, "best_model_checkpoint", None)
        if args.load_best_model_at_end and best and (m := re.search(r"(\d+)$", str(best))):
            self._card(model).set_best_model_step(int(m.group(1)))

    @staticmethod
    def _row(card, state) -> dict:
        """The training-log row of this step (appended when the last row is another step's)."""
        if not card.training_logs or card.training_logs[-1]["Step"] != state.global_step:
            card.training_logs.append({"Epoch": state.epoch, "Step": state.global_step})
        return card.training_logs[-1]


def generate_model_card(model, training_curve: str | None = None) -> str:
    """The README.md text for ``model`` (a CrossEncoder) from its ``model_card_data``; ``training_curve``: a loss
    plot's file name beside the README, shown under "Training Logs"."""
    from stcore_jax.cross_encoder.model_card_render import render

    card = model.model_card_data
    if card is None:
        card = model.model_card_data = CrossEncoderModelCardData()
    if card.model is not model:
        card.register_model(model)
    return render({**card.to_dict(), "training_curve": training_curve})
