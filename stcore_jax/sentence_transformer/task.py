"""``SentenceTransformerTask``: the bi-encoder family's side of training (the protocol is
stcore_jax/training/task.py).

Text columns are validated and tokenized by the input module (sentence_transformer/data.py: prompts,
Router routes, label rules), batches pad every column to one length bucket or pack all columns'
sentences end to end (batching/packing.py), and the objective embeds the columns and applies the loss
(``compute_loss`` in sentence_transformer/losses/embed.py, which follows what the loss declares).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from stcore_jax.batching.buckets import bucket_for
from stcore_jax.batching.packing import choose_row_length, fit_row_buckets, pack_plan, packed_rows_needed
from stcore_jax.models.router import Router
from stcore_jax.sentence_transformer.data import (
    LABEL_COLUMNS,
    batch_longest,
    collate,
    collate_packed,
    prepare_dataset,
)
from stcore_jax.sentence_transformer.losses import CoSENTLoss
from stcore_jax.sentence_transformer.losses.embed import compute_loss, unpackable_reason, validate_loss
from stcore_jax.sentence_transformer.model_card import ModelCardCallback
from stcore_jax.sentence_transformer.stream import StreamSource
from stcore_jax.training.arguments import BatchSamplers
from stcore_jax.training.task import Task


def _total(out):
    """A loss's output -> ``(total, components)``: a dict of components (e.g. a distillation loss's) sums."""
    if isinstance(out, dict):
        return sum(out.values()), dict(out)
    return out, {}


def _loss_params(trainable, loss_key):
    """This loss's own parameters: ``trainable["loss"][loss_key]`` (``{}`` if it owns none); the whole
    ``trainable["loss"]`` when ``loss_key`` is None."""
    return trainable["loss"] if loss_key is None else trainable["loss"].get(loss_key, {})


def apply_loss(loss, forward, trainable, batch, key, *, loss_key, num_shards):
    """``(total, components)`` of ``loss`` on a collated bi-encoder batch (the columns embedded by ``forward``)."""
    out = compute_loss(loss, forward, trainable["model"], batch["columns"], batch.get("label"), dropout_key=key,
                       mask=batch["mask"], num_shards=num_shards, loss_params=_loss_params(trainable, loss_key),
                       packed=batch.get("packed"))
    return _total(out)


class SentenceTransformerTask(Task):
    """Training a :class:`~stcore_jax.SentenceTransformer` on text columns."""

    label_columns = LABEL_COLUMNS

    # -- losses --------------------------------------------------------------------------------
    def default_loss(self):
        return CoSENTLoss(self.model)

    def build_loss(self, loss):
        if not hasattr(loss, "compute_loss_from_embeddings") and callable(loss):
            return loss(self.model)  # a factory model -> loss
        return loss

    def check_losses(self, losses: dict) -> None:
        """Each loss's declaration against the model and ``sequence_packing`` (``validate_loss``)."""
        for name, loss in losses.items():
            validate_loss(loss, self.model, packing=self.args.sequence_packing, dataset=name)

    def init_loss_params(self, loss, rng) -> dict:
        return loss.init_params(rng) if hasattr(loss, "init_params") else {}

    def objective(self, loss, *, loss_key, num_shards, model=None):
        forward = (model if model is not None else self.compute_model()).forward

        def objective(trainable, batch, key):
            return apply_loss(loss, forward, trainable, batch, key, loss_key=loss_key, num_shards=num_shards)

        return objective

    # -- data ----------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.args.gradient_checkpointing:
            self.model.input_module.set_gradient_checkpointing(True)
        self._check_router_mapping()

    def _check_router_mapping(self):
        """A Router needs ``router_mapping`` (the reference raises too), and every mapped task needs a route."""
        routers = [m for m in self.model.modules if isinstance(m, Router)]
        mapping = self.args.router_mapping
        if not routers:
            return
        if not mapping:
            raise ValueError("The model contains a Router but the training arguments have no router_mapping, so the "
                             "Router cannot tell which route each column takes. Map columns to routes, e.g. "
                             "router_mapping={'anchor': 'query', 'positive': 'document'} "
                             f"(routes: {list(routers[0].structure)})")
        tasks = [t for v in mapping.values() for t in (v.values() if isinstance(v, dict) else [v])]
        for router in routers:
            for t in tasks:
                router.resolve_route(t)  # raises, naming the routes, for a task no route takes

    def _data_options(self, is_dict):
        return dict(prompts=self.args.prompts, is_dict_dataset=is_dict, router_mapping=self.args.router_mapping)

    def prepare(self, dataset, name, loss, *, is_dict):
        return prepare_dataset(dataset, name, loss, self.model.input_module, **self._data_options(is_dict))

    def stream_source(self, dataset, name, loss, *, is_dict):
        return StreamSource(dataset, name, loss, self.model.input_module, **self._data_options(is_dict))

    def longest(self, prepared, rows) -> int:
        return batch_longest(prepared, rows)

    def max_length(self) -> int:
        return self.model.max_seq_length

    def check_lengths(self, buckets):
        return self.model.check_padding_lengths(buckets)  # none past the position table (NaN)

    def collate(self, prepared, rows, batch_size, length):
        return collate(prepared, rows, batch_size, length, self.model.input_module.pad)

    def sampler_inputs(self, prepared, kind) -> dict:
        if kind in (BatchSamplers.NO_DUPLICATES, BatchSamplers.NO_DUPLICATES_HASHED):
            return {"rows": list(zip(*prepared.texts))}
        if kind == BatchSamplers.GROUP_BY_LABEL:
            if prepared.labels is None:
                raise ValueError(f"Dataset {prepared.name!r}: GROUP_BY_LABEL needs a label column")
            return {"labels": prepared.labels.tolist()}
        return {}

    def count_tokens(self, batch) -> int:
        return int(sum(c["attention_mask"].sum() for c in batch["columns"]))

    def batch_report(self, prepared, rows) -> dict:
        """The batch's rows, texts per column and labels (inf/nan as JSON Infinity/NaN)."""
        out = {"rows": [int(r) for r in rows],
               "texts": {c: [prepared.texts[j][r] for r in rows] for j, c in enumerate(prepared.columns)}}
        if prepared.labels is not None:
            out["label_column"] = prepared.label_column
            out["labels"] = prepared.labels[np.asarray(rows, dtype=np.int64)].tolist()
        return out

    # -- sequence packing ----------------------------------------------------------------------
    def packing_obstacles(self, losses: dict) -> list[str]:
        """A Transformer whose encoder takes packed rows, no Router routes, and losses on the plain
        one-forward path."""
        module, reasons = self.model.input_module, []
        if not getattr(module, "supports_packing", False):
            reasons.append(f"the input module {type(module).__name__} "
                           f"({getattr(getattr(module, 'encoder_cls', None), '__name__', 'no encoder')}) cannot pack")
        if self.args.router_mapping:
            reasons.append("router_mapping routes columns to different modules")
        for n, lo in losses.items():
            why = unpackable_reason(lo.inputs)  # from the loss's declaration
            if why is not None:
                reasons.append(f"loss {type(lo).__name__} of dataset {n!r} embeds its columns itself ({why})")
        return reasons

    def packed_shape(self, datasets, steps, global_batch, num_shards, k):
        """The row length trading padding against attention cost (batching/packing.py), and rows-per-shard
        buckets fitted to the steps."""
        longest = max(batch_longest(p, range(len(p))) for p in datasets if len(p))
        hidden = self.model.input_module.get_embedding_dimension()
        length = choose_row_length(steps, longest, hidden, global_batch, num_shards)
        most = max(len(p.token_ids) for p in datasets) * (global_batch // num_shards)
        return length, fit_row_buckets(steps, length, global_batch, num_shards, k, most)

    def collate_packed(self, prepared, micro_batches, batch_size, num_shards, local_shards, row_length, row_buckets):
        plans = [pack_plan(prepared, r, batch_size, num_shards, row_length) for r in micro_batches]
        rows = bucket_for(max(packed_rows_needed(p) for p in plans), row_buckets)
        pad = self.model.input_module.tokenizer.pad_token_id or 0
        return [collate_packed(prepared, r, batch_size, num_shards, local_shards, row_length, rows, pad, plan)
                for r, plan in zip(micro_batches, plans)]

    # -- the model -----------------------------------------------------------------------------
    def compute_model(self):
        """For ``bf16=True`` a view of the model computing in bfloat16 with the float32 master weights (torch
        autocast's contract); the model itself is left as it is."""
        return self.model.with_compute_dtype(jnp.bfloat16) if self.args.bf16 else self.model

    def frozen_keys(self) -> frozenset:
        return self.model.frozen_param_keys() if hasattr(self.model, "frozen_param_keys") else frozenset()

    def parameter_counts(self):
        return self.model.get_nb_trainable_parameters() if hasattr(self.model, "get_nb_trainable_parameters") else None

    def num_trainable_parameters(self) -> int:
        if hasattr(self.model, "num_trainable_parameters"):  # excludes a LoRA-frozen base
            return self.model.num_trainable_parameters()
        return super().num_trainable_parameters()

    def save(self, path, *, create_model_card=True):
        self.model.save_pretrained(path, create_model_card=create_model_card)

    def callbacks(self, trainer) -> list:
        return [ModelCardCallback(trainer)]  # fills model.model_card_data (datasets, losses, arguments, logs)
