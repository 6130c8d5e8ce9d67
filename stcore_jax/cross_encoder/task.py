"""``CrossEncoderTask``: the reranker family's side of training (the protocol is stcore_jax/training/task.py).

Text columns are validated and counted on the host (cross_encoder/data.py), each step's rows form the
pairs the loss declares (in-batch candidates drawn from the global batch, seeded), the pairs are tokenized
into one static ``[B, P, L]`` batch, and the objective scores them in one forward (or by GradCache) and
applies the loss (cross_encoder/objective.py). The reference's trainer differs from the bi-encoder's in
the same places: raw-text collation, the default loss, no IterableDataset, ``num_labels`` in the loss checks,
and prompts / ``router_mapping`` restricted to one string or ``{dataset_name: str}``.
"""

from __future__ import annotations

import logging

import jax.numpy as jnp
import numpy as np

from stcore_jax.base.loss import InputKind
from stcore_jax.cross_encoder import data
from stcore_jax.cross_encoder.losses import BinaryCrossEntropyLoss, CrossEntropyLoss
from stcore_jax.cross_encoder.model_card import CrossEncoderModelCardCallback
from stcore_jax.cross_encoder.objective import compute_loss
from stcore_jax.training.arguments import BatchSamplers
from stcore_jax.training.task import Task

logger = logging.getLogger(__name__)


def _total(out):
    if isinstance(out, dict):
        return sum(out.values()), dict(out)
    return out, {}


class CrossEncoderTask(Task):
    """Training a :class:`~stcore_jax.CrossEncoder` on text columns."""

    label_columns = data.LABEL_COLUMNS

    # -- losses --------------------------------------------------------------------------------
    def default_loss(self):
        loss = BinaryCrossEntropyLoss(self.model) if self.model.num_labels == 1 else CrossEntropyLoss(self.model)
        logger.info("No `loss` passed, using `%s` as a default option.", type(loss).__name__)
        return loss

    def build_loss(self, loss):
        if not hasattr(loss, "compute_loss_from_scores") and callable(loss) and not hasattr(loss, "inputs"):
            return loss(self.model)  # a factory model -> loss
        return loss

    def check_losses(self, losses: dict) -> None:
        """Only CrossEncoder losses (scores of pairs) train a CrossEncoder."""
        for name, loss in losses.items():
            inputs = getattr(loss, "inputs", None)
            if getattr(inputs, "kind", None) != InputKind.SCORES or not hasattr(loss, "compute_loss_from_scores"):
                raise ValueError(
                    f"The loss for dataset {name!r} ({type(loss).__name__}) is not a CrossEncoder loss: a CrossEncoder "
                    f"is trained with losses over pair scores, from stcore_jax.cross_encoder.losses (e.g. "
                    f"BinaryCrossEntropyLoss, MultipleNegativesRankingLoss, LambdaLoss).")
            if getattr(loss, "model", None) is not None and loss.model is not self.model:
                logger.warning("The loss for dataset %r was built with another model; the trainer's model is trained.",
                               name)

    def objective(self, loss, *, loss_key, num_shards, model=None):
        forward = (model if model is not None else self.compute_model()).forward

        def objective(trainable, batch, key):
            return _total(compute_loss(loss, forward, trainable["model"], batch, key, num_shards=num_shards))

        return objective

    # -- data ----------------------------------------------------------------------------------
    def setup(self) -> None:
        args = self.args
        data.check_scalar_mapping(args.prompts, "prompts",
                                  "prompts='Search: ' or prompts={'dataset_a': 'Search: ', 'dataset_b': 'Retrieve: '}")
        data.check_scalar_mapping(args.router_mapping, "router_mapping",
                                  "router_mapping={'dataset_a': 'rerank', 'dataset_b': 'rerank'}")
        if args.router_mapping:
            logger.warning("router_mapping is ignored: this CrossEncoder has no Router module")
        if args.gradient_checkpointing:
            module = self.model.input_module
            if not hasattr(module, "set_gradient_checkpointing"):
                raise ValueError(f"gradient_checkpointing=True, but {type(module).__name__} cannot recompute its "
                                 f"layers; set gradient_checkpointing=False")
            module.set_gradient_checkpointing(True)

    def prepare(self, dataset, name, loss, *, is_dict):
        ds = data.prepare_pairs(dataset, name, loss, self.model, prompts=self.args.prompts, is_dict_dataset=is_dict)
        ds.loss = loss
        return ds

    def stream_source(self, dataset, name, loss, *, is_dict):
        raise ValueError("CrossEncoderTrainer does not support an IterableDataset for the `train_dataset`. Please "
                         "convert the dataset to a `Dataset` or `DatasetDict` before passing it to the trainer.")

    def _specials(self) -> int:
        return self.model.input_module.tokenizer.num_special_tokens_to_add(pair=True)

    def longest(self, prepared, rows) -> int:
        return data.longest(prepared, rows, self.model.max_seq_length, self._specials())

    def max_length(self) -> int:
        return self.model.max_seq_length

    def check_lengths(self, buckets):
        return self.model.check_padding_lengths(buckets)

    def _seed(self):
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def collate(self, prepared, rows, batch_size, length):
        return data.collate(prepared, rows, batch_size, length, self.model, prepared.loss, self._seed())

    def collate_local(self, prepared, rows, slots, batch_size, length):
        """This process's slots, with the in-batch candidates chosen from the whole global batch."""
        return data.collate(prepared, rows, batch_size, length, self.model, prepared.loss, self._seed(), slots=slots)

    def sampler_inputs(self, prepared, kind) -> dict:
        if kind in (BatchSamplers.NO_DUPLICATES, BatchSamplers.NO_DUPLICATES_HASHED):
            def cell(v):
                return tuple(v) if isinstance(v, list) else v
            return {"rows": [tuple(cell(v) for v in row) for row in zip(*prepared.texts)]}
        if kind == BatchSamplers.GROUP_BY_LABEL:
            if prepared.labels is None or isinstance(prepared.labels, list):
                raise ValueError(f"Dataset {prepared.name!r}: GROUP_BY_LABEL needs a label column with one label "
                                 f"per row")
            return {"labels": prepared.labels.tolist()}
        return {}

    def count_tokens(self, batch) -> int:
        """Tokens of the real pairs (padding pairs, e.g. a listwise row's missing documents, left out)."""
        return int((batch["pairs"]["attention_mask"] * batch["doc_mask"][..., None]).sum())

    def batch_report(self, prepared, rows) -> dict:
        out = {"rows": [int(r) for r in rows],
               "texts": {c: [prepared.texts[j][r] for r in rows] for j, c in enumerate(prepared.columns)}}
        if prepared.labels is not None:
            out["label_column"] = prepared.label_column
            out["labels"] = [np.asarray(prepared.labels[r]).tolist() for r in rows]
        return out

    # -- the model -----------------------------------------------------------------------------
    def compute_model(self):
        return self.model.with_compute_dtype(jnp.bfloat16) if self.args.bf16 else self.model

    def frozen_keys(self) -> frozenset:
        return self.model.frozen_param_keys() if hasattr(self.model, "frozen_param_keys") else frozenset()

    def parameter_counts(self):
        return self.model.get_nb_trainable_parameters() if hasattr(self.model, "get_nb_trainable_parameters") else None

    def num_trainable_parameters(self) -> int:
        if hasattr(self.model, "num_trainable_parameters"):
            return self.model.num_trainable_parameters()
        return super().num_trainable_parameters()

    def save(self, path, *, create_model_card=True):
        self.model.save_pretrained(path, create_model_card=create_model_card)

    def callbacks(self, trainer) -> list:
        return [CrossEncoderModelCardCallback(trainer)]  # fills model.model_card_data (datasets, losses, logs, ...)
