"""``SentenceTransformerTrainer``: the sentence-transformers training workflow on a JAX mesh.

Read top to bottom: datasets and losses are validated and tokenized in ``__init__`` (every input error
surfaces before anything compiles) -> ``train`` builds the mesh, state and jitted step -> the loop
walks the epoch's batch plan (a pure function of ``(seed, epoch)``), logging, evaluating and
checkpointing on the configured schedules -> the final model is exported in sentence-transformers
format.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from stcore_jax.batching.buckets import bucket_for, covering, default_buckets, fit_buckets
from stcore_jax.models.router import Router
from stcore_jax.training import checkpoint as ckpt
from stcore_jax.training.arguments import BatchSamplers, SentenceTransformerTrainingArguments
from stcore_jax.training.callbacks import (
    JsonLinesLogger,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    integration_callbacks,
)
from stcore_jax.distributed import maybe_initialize_distributed
from stcore_jax.training.distributed import local_batch_slots, local_rows, to_global
from stcore_jax.sentence_transformer.losses.embed import supports_packing
from stcore_jax.sentence_transformer.data import (
    LABEL_COLUMNS,
    batch_bucket,
    batch_longest,
    collate,
    collate_packed,
    prepare_dataset,
)
from stcore_jax.training.mesh import make_mesh
from stcore_jax.training.nonfinite import NonFiniteLossError, stop_on_nonfinite, warn_skipped
from stcore_jax.training.optim import freeze_params, make_optimizer
from stcore_jax.batching.packing import choose_row_length, fit_row_buckets, pack_plan, packed_rows_needed
from stcore_jax.training.preemption import PreemptionGuard, TrainingInterrupted, interrupted_message
from stcore_jax.training.samplers import SAMPLERS, accumulation_groups, epoch_batches, multi_dataset_order
from stcore_jax.training.sharding import data_parallel_size, gather_to_host, param_shardings
from stcore_jax.training.step import make_eval_step, make_train_step
from stcore_jax.training.stream import (
    StreamPosition,
    StreamSource,
    epoch_groups,
    group_rows,
    is_stream,
    require_max_steps,
    resume_position,
    warn_ignored_samplers,
)

logger = logging.getLogger(__name__)

DEFAULT_FITTED_BUCKETS = 4  # length buckets fitted to the training batches when length_buckets is None


def _stack_micro_batches(parts):
    """One collated micro-batch as is; several stacked on a leading axis (gradient accumulation)."""
    return parts[0] if len(parts) == 1 else jax.tree_util.tree_map(lambda *xs: np.stack(xs), *parts)


def _as_dataset_dict(ds, what, allow_streams=False):
    """``(dict name -> dataset, is_dict)``; a single dataset becomes ``{"train"|"eval": ds}``. With
    ``allow_streams`` (training data) the datasets may be IterableDatasets: all of a dict's, or none."""
    if ds is None:
        return {}, False
    if isinstance(ds, dict):  # DatasetDict and IterableDatasetDict are dicts
        if not ds:
            raise ValueError(f"{what} is an empty dict")
        data, is_dict = dict(ds), True
    else:
        if not hasattr(ds, "column_names"):
            raise ValueError(f"{what} must be a datasets.Dataset, DatasetDict or dict of Datasets"
                             f"{' (or IterableDatasets)' if allow_streams else ''}, got {type(ds).__name__}")
        data, is_dict = {what: ds}, False
    streams = [n for n, d in data.items() if is_stream(d)]
    if streams and not allow_streams:
        raise ValueError(f"{what}: IterableDataset (streaming) is supported for train_dataset only; materialise the "
                         "eval data with datasets.Dataset.from_generator or .take(n)")
    if streams and len(streams) < len(data):
        raise ValueError(f"{what}: datasets {streams} are IterableDatasets (streams) but "
                         f"{[n for n in data if n not in streams]} are not; use streams for all of them or for none")
    return data, is_dict


class SentenceTransformerTrainer:
    """Train a :class:`stcore_jax.SentenceTransformer` (same constructor as sentence-transformers)."""

    def __init__(self, model=None, args: SentenceTransformerTrainingArguments | None = None, train_dataset=None,
                 eval_dataset=None, loss=None, evaluator=None, callbacks=None, optimizers=(None, None),
                 model_init=None, data_collator=None, processing_class=None, tokenizer=None, compute_metrics=None,
                 **unused):
        maybe_initialize_distributed()
        if model is None:
            if model_init is None:
                raise ValueError("SentenceTransformerTrainer needs model= (or model_init=)")
            model = model_init()
        self.model = model
        self.args = args if args is not None else SentenceTransformerTrainingArguments(output_dir="tmp_trainer")
        if compute_metrics is not None:
            logger.warning("compute_metrics is not supported by SentenceTransformerTrainer; use an evaluator")
        self.optimizers = optimizers
        self.train_data, self.train_is_dict = _as_dataset_dict(train_dataset, "train", allow_streams=True)
        self.streaming = any(is_stream(d) for d in self.train_data.values())
        if self.streaming:
            require_max_steps(self.args.max_steps)
        self.eval_data, self.eval_is_dict = _as_dataset_dict(eval_dataset, "eval")
        self.loss = self._resolve_losses(loss)
        if evaluator is not None and isinstance(evaluator, (list, tuple)):
            from stcore_jax.evaluation import SequentialEvaluator

            evaluator = SequentialEvaluator(list(evaluator))
        self.evaluator = evaluator
        if self.args.eval_strategy != "no" and evaluator is None and not self.eval_data:
            raise ValueError(f"eval_strategy={self.args.eval_strategy!r} needs an eval_dataset or an evaluator")
        if self.args.gradient_checkpointing:
            model.input_module.set_gradient_checkpointing(True)
        self.mesh = make_mesh(self.args.mesh_shape)
        self.data_parallel = data_parallel_size(self.mesh)  # data x fsdp: both axes split the batch
        if self.args.train_batch_size is not None:
            if self.args.train_batch_size % self.data_parallel:
                raise ValueError(f"train_batch_size={self.args.train_batch_size} is not divisible by the data-parallel "
                                 f"size {self.data_parallel}; pick a multiple of {self.data_parallel}")
            self.args.per_device_train_batch_size = self.args.train_batch_size // self.data_parallel
        self.global_batch = self.args.per_device_train_batch_size * self.data_parallel
        self.global_eval_batch = self.args.per_device_eval_batch_size * self.data_parallel
        self._check_router_mapping()
        module, routes = model.input_module, self.args.router_mapping
        # Streams (training/stream.py): columns checked now; rows are validated and tokenized per step.
        self.train_streams = {n: StreamSource(d, n, self.loss[n], module, prompts=self.args.prompts,
                                              is_dict_dataset=self.train_is_dict, router_mapping=routes)
                              for n, d in self.train_data.items() if self.streaming}
        if self.streaming:
            warn_ignored_samplers(self.args.batch_sampler, self.args.multi_dataset_batch_sampler, len(self.train_data))
        self.train_prepared = {n: prepare_dataset(d, n, self.loss[n], module, prompts=self.args.prompts,
                                                  is_dict_dataset=self.train_is_dict, router_mapping=routes)
                               for n, d in self.train_data.items() if not self.streaming}
        self.eval_prepared = {n: prepare_dataset(d, n, self.loss[n], module, prompts=self.args.prompts,
                                                 is_dict_dataset=self.eval_is_dict, router_mapping=routes)
                              for n, d in self.eval_data.items()}
        self.samplers = {n: self.get_batch_sampler(p.hf_dataset, self.global_batch, self.args.dataloader_drop_last,
                                                   valid_label_columns=list(LABEL_COLUMNS), seed=self._data_seed(),
                                                   prepared=p)
                         for n, p in self.train_prepared.items()}
        self.buckets = model.check_padding_lengths(self._length_buckets())  # none past the position table (NaN)
        self.packing = self._resolve_packing()
        if self.packing:
            self.pack_length, self.row_buckets = self._packed_shape()
        self.callbacks: list[TrainerCallback] = [JsonLinesLogger(), *integration_callbacks(self.args.report_to)]
        from stcore_jax.sentence_transformer.model_card import ModelCardCallback  # fills model.model_card_data for save_pretrained

        self.callbacks.append(ModelCardCallback(self))
        for cb in callbacks or []:
            self.add_callback(cb)
        self.state = TrainerState(is_world_process_zero=self.is_world_process_zero())
        self.control = TrainerControl()
        self.compile_count = [0]  # train-step traces (one per length bucket and loss)
        self.compile_seconds = 0.0  # wall time of the train-step calls that compiled
        self._train_state = None
        self._fire("on_init_end")

    # -- setup helpers -------------------------------------------------------------------------
    def _length_buckets(self) -> tuple[int, ...]:
        """``length_buckets``: a tuple is used as given (plus ``max_seq_length`` last, so that every row fits);
        an int ``k`` (default ``None``: 4) fits ``k`` lengths to the longest row of every step of the first
        epoch's plan (``fit_buckets``), plus ``max_seq_length`` for
        longer eval rows. Each step compiles once per bucket it reaches, so a few fitted buckets pad about as
        little as the reference's pad-to-longest (STS-B train, batch 16: 1.22x its tokens with 4 fitted
        buckets, 1.63x with powers of two; bench/padding.py). The plan is a pure function of the seed, so every
        host and every resume fits the same buckets. Streams have no plan: powers of two from 16."""
        given, max_len = self.args.length_buckets, self.model.max_seq_length
        if isinstance(given, (tuple, list)):
            return covering(given, max_len)
        if self.streaming or not self.train_prepared:
            return default_buckets(max_len, smallest=16, per_octave=1)
        accum = self.args.gradient_accumulation_steps
        longest = [max(batch_longest(self.train_prepared[name], rows) for rows in micro)
                   for _, name, micro in accumulation_groups(self.epoch_plan(0), accum)]
        # every row, so that later epochs (other batches) fit in the last bucket too
        longest += [batch_longest(p, range(len(p))) for p in self.train_prepared.values() if len(p)]
        if not longest:
            return default_buckets(max_len, smallest=16, per_octave=1)
        fitted = fit_buckets(longest, DEFAULT_FITTED_BUCKETS if given is None else given, cap=max_len)
        return covering(fitted, max_len)

    def _resolve_packing(self) -> bool:
        """``sequence_packing``: None packs wherever it keeps the step's results (a Transformer whose encoder
        takes packed rows, the plain one-forward loss path, map-style data); True requires it; False never."""
        want = self.args.sequence_packing
        if want is False or not self.streaming and not any(len(p) for p in self.train_prepared.values()):
            return False  # nothing to train on (an evaluate-only trainer)
        module = self.model.input_module
        reasons = []
        if self.streaming:
            reasons.append("the training data are streams (no epoch plan to fit the packed shapes to)")
        if not getattr(module, "supports_packing", False):
            reasons.append(f"the input module {type(module).__name__} "
                           f"({getattr(getattr(module, 'encoder_cls', None), '__name__', 'no encoder')}) cannot pack")
        if self.args.router_mapping:
            reasons.append("router_mapping routes columns to different modules")
        reasons += [f"loss {type(lo).__name__} of dataset {n!r} embeds its columns itself (GradCache, a guide or "
                    f"per-layer embeddings)" for n, lo in self.loss.items() if not supports_packing(lo)]
        if want is True and reasons:
            raise ValueError("sequence_packing=True, but " + "; ".join(reasons) + ". Use sequence_packing=None "
                             "(pack where possible) or False.")
        return not reasons

    def _packed_shape(self) -> tuple[int, tuple[int, ...]]:
        """``(row_length, rows-per-shard buckets)`` of packed steps, fitted to the first epoch's plan
        (batching/packing.py). On STS-B train (batch 16) packing computes on 0.50x the reference's
        padded tokens, against 1.22x for fitted length buckets (bench/padding.py)."""
        accum, shards = self.args.gradient_accumulation_steps, self.data_parallel
        steps = [(self.train_prepared[name], micro) for _, name, micro in accumulation_groups(self.epoch_plan(0), accum)]
        longest = max(batch_longest(p, range(len(p))) for p in self.train_prepared.values() if len(p))
        hidden = self.model.input_module.get_embedding_dimension()
        length = choose_row_length(steps, longest, hidden, self.global_batch, shards)
        most = max(len(p.token_ids) for p in self.train_prepared.values()) * (self.global_batch // shards)
        k = self.args.length_buckets if isinstance(self.args.length_buckets, int) else DEFAULT_FITTED_BUCKETS
        return length, fit_row_buckets(steps, length, self.global_batch, shards, k, most)

    def _data_seed(self):
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

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

    def _resolve_losses(self, loss):
        names = list(self.train_data) + [n for n in self.eval_data if n not in self.train_data]
        if loss is None:
            from stcore_jax.losses import CoSENTLoss

            loss = CoSENTLoss(self.model)
        if isinstance(loss, dict):
            missing = [n for n in names if n not in loss]
            if missing:
                raise ValueError(f"loss is a dict with keys {sorted(loss)}, but datasets {missing} have no loss; "
                                 "give every train/eval dataset name a loss")
            out = {n: loss[n] for n in names}
        else:
            out = {n: loss for n in names}
        for n, lo in list(out.items()):
            if not hasattr(lo, "compute_loss_from_embeddings") and callable(lo):
                out[n] = lo(self.model)  # a factory model -> loss
        return out

    def is_world_process_zero(self) -> bool:
        return jax.process_index() == 0

    is_local_process_zero = is_world_process_zero

    def add_callback(self, callback):
        self.callbacks.append(callback() if isinstance(callback, type) else callback)

    def pop_callback(self, callback):
        for cb in self.callbacks:
            if cb is callback or (isinstance(callback, type) and isinstance(cb, callback)):
                self.callbacks.remove(cb)
                return cb
        return None

    def remove_callback(self, callback):
        self.pop_callback(callback)

    def _fire(self, event, **kwargs):
        for cb in self.callbacks:
            getattr(cb, event)(self.args, self.state, self.control, model=self.model, **kwargs)

    # -- override points -----------------------------------------------------------------------
    def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0,
                          prepared=None):
        kind = self.args.batch_sampler
        if isinstance(kind, BatchSamplers):
            cls = SAMPLERS[kind]
            extra = {}
            if kind in (BatchSamplers.NO_DUPLICATES, BatchSamplers.NO_DUPLICATES_HASHED) and prepared is not None:
                extra["rows"] = list(zip(*prepared.texts))
            if kind == BatchSamplers.GROUP_BY_LABEL and prepared is not None:
                if prepared.labels is None:
                    raise ValueError(f"Dataset {prepared.name!r}: GROUP_BY_LABEL needs a label column")
                extra["labels"] = prepared.labels.tolist()
            return cls(dataset, batch_size, drop_last, valid_label_columns, generator, seed, **extra)
        return kind(dataset, batch_size, drop_last, valid_label_columns, generator, seed)

    def get_multi_dataset_batch_sampler(self, batch_counts: dict, epoch: int, seed: int):
        kind = self.args.multi_dataset_batch_sampler
        if callable(kind) and not isinstance(kind, str):
            return list(kind(batch_counts, epoch, seed))
        return multi_dataset_order(kind, batch_counts, seed, epoch)

    def epoch_plan(self, epoch: int) -> list[tuple[str, list[int]]]:
        """The batches of one epoch: ``(dataset name, row indices)``, a pure function of (seed, epoch).
        The last epoch's plan is kept: fitting the buckets, counting the steps and training epoch 0 all
        read it, and a NO_DUPLICATES pass over a large dataset is seconds of Python."""
        cached = self.__dict__.get("_plan_cache")
        if cached is not None and cached[0] == epoch:
            return cached[1]
        plan = self._draw_epoch_plan(epoch)
        self._plan_cache = (epoch, plan)
        return plan

    def _draw_epoch_plan(self, epoch: int) -> list[tuple[str, list[int]]]:
        per = {n: epoch_batches(s, epoch) for n, s in self.samplers.items()}
        if len(per) == 1:
            (name, batches), = per.items()
            return [(name, b) for b in batches]
        order = self.get_multi_dataset_batch_sampler({n: len(b) for n, b in per.items()}, epoch, self._data_seed())
        cursors = dict.fromkeys(per, 0)
        plan = []
        for n in order:
            plan.append((n, per[n][cursors[n]]))
            cursors[n] += 1
        return plan

    # -- device placement ----------------------------------------------------------------------
    def _to_device(self, batch, leading_accum=False, local=False):
        """Host batch -> global arrays sharded on ``data`` x ``fsdp``. ``local=True``: ``batch`` holds only this
        process's rows of a ``self.global_batch`` batch (:meth:`_collate_step`); otherwise the whole batch."""
        size = self.global_batch if local else jax.tree_util.tree_leaves(batch)[0].shape[1 if leading_accum else 0]
        return to_global(batch, self.mesh, size, leading_accum=leading_accum, local=local)

    def _collate_step(self, name, micro_batches, batch_size, ds=None):
        """Collate the rows this process feeds (all of them on one process; see training/distributed.py).
        ``ds``: the prepared rows (a stream step's); default: dataset ``name``'s."""
        if ds is None:
            ds = self.train_prepared[name] if name in self.train_prepared else self.eval_prepared[name]
        if self.packing and ds is self.train_prepared.get(name):
            return self._collate_packed(ds, micro_batches, batch_size)
        length = max(batch_bucket(ds, rows, self.buckets) for rows in micro_batches)  # global rows: all agree
        pad = self.model.input_module.pad
        slots = local_batch_slots(self.mesh, batch_size) if jax.process_count() > 1 else None
        parts = [collate(ds, rows, batch_size, length, pad) if slots is None else
                 collate(ds, local_rows(rows, slots), len(slots), length, pad) for rows in micro_batches]
        return _stack_micro_batches(parts)

    def _collate_packed(self, ds, micro_batches, batch_size):
        """A packed step (sentence_transformer/data.py ``collate_packed``): this process's data shards only."""
        shards = self.data_parallel
        slots = local_batch_slots(self.mesh, batch_size) if jax.process_count() > 1 else np.arange(batch_size)
        local_shards = sorted({int(s) // (batch_size // shards) for s in slots})
        plans = [pack_plan(ds, r, batch_size, shards, self.pack_length) for r in micro_batches]
        rows = bucket_for(max(packed_rows_needed(p) for p in plans), self.row_buckets)
        pad = self.model.input_module.tokenizer.pad_token_id or 0
        parts = [collate_packed(ds, r, batch_size, shards, local_shards, self.pack_length, rows, pad, plan)
                 for r, plan in zip(micro_batches, plans)]
        return _stack_micro_batches(parts)

    # -- state ---------------------------------------------------------------------------------
    def _init_state(self, total_steps):
        """The train state, born sharded: parameters and optimizer state over ``fsdp`` where large enough
        (training/sharding.py), step counters replicated. Sets ``self.state_shardings``."""
        loss_params = {}  # one subtree per distinct loss object that owns parameters (e.g. SoftmaxLoss's classifier)
        for n, lo in self.loss.items():
            if self._loss_param_key(lo) == n and hasattr(lo, "init_params"):
                p = lo.init_params(jax.random.fold_in(jax.random.key(self.args.seed), len(loss_params)))
                if p:
                    loss_params[n] = p
        trainable = {"model": self.model.params, "loss": loss_params}
        if self.optimizers and self.optimizers[0] is not None:
            tx, schedule = self.optimizers[0], self.optimizers[1]
        else:
            tx, schedule = make_optimizer(self.args, trainable, total_steps)
        frozen = self.model.frozen_param_keys() if hasattr(self.model, "frozen_param_keys") else frozenset()
        tx = freeze_params(tx, trainable, frozen)  # LoRA: the base encoder gets no state and no update
        if hasattr(self.model, "get_nb_trainable_parameters"):
            n_train, n_all = self.model.get_nb_trainable_parameters()
            logger.info("Trainable parameters: %d of %d (%.2f%%)", n_train, n_all, 100.0 * n_train / max(n_all, 1))
        self.schedule = schedule
        counter = jax.ShapeDtypeStruct((), jnp.int32)
        abstract = {"trainable": trainable, "opt_state": jax.eval_shape(tx.init, trainable), "step": counter,
                    "skipped": counter}
        self.state_shardings = shardings = param_shardings(abstract, self.mesh, self.args.fsdp_min_size)
        trainable = jax.device_put(trainable, shardings["trainable"])
        opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(trainable)  # never whole on one device
        zeros = [jax.device_put(jnp.zeros((), jnp.int32), shardings[k]) for k in ("step", "skipped")]
        return tx, {"trainable": trainable, "opt_state": opt_state, "step": zeros[0], "skipped": zeros[1]}

    def _loss_param_key(self, loss):
        """The key of ``loss``'s parameters in ``state["trainable"]["loss"]``: the first dataset name that uses
        this loss object. Datasets sharing one loss object share its parameters; two loss objects never do
        (the reference trains every loss module's own parameters)."""
        return next((n for n, lo in self.loss.items() if lo is loss), None)

    def _model_params(self, state):
        """The model's parameters from ``state`` for export and the evaluator (collective: arrays sharded
        across processes are gathered to the host; on one process they stay as they are)."""
        return gather_to_host(state["trainable"]["model"])

    def _compute_model(self):
        """What the compiled steps run: for ``bf16=True`` a view of the model computing in bfloat16 with
        the float32 master weights (torch autocast's contract); the model itself is left as it is."""
        return self.model.with_compute_dtype(jnp.bfloat16) if self.args.bf16 else self.model

    def _build_steps(self, tx):
        """One jitted step per loss: the state keeps ``self.state_shardings`` in and out (donated), so XLA
        gathers fsdp-sharded weights where they are used and reduce-scatters their gradients."""
        replicated = NamedSharding(self.mesh, P())
        steps, seen = {}, {}
        for n, lo in self.loss.items():
            if id(lo) not in seen:
                fn = make_train_step(self._compute_model().forward, lo, tx, seed=self.args.seed, num_shards=self.data_parallel,
                                     accum_steps=self.args.gradient_accumulation_steps, counter=self.compile_count,
                                     loss_key=n)
                seen[id(lo)] = jax.jit(fn, in_shardings=(self.state_shardings, None),
                                       out_shardings=(self.state_shardings, replicated), donate_argnums=0)
            steps[n] = seen[id(lo)]
        return steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Loss of one collated batch on the current parameters (no dropout)."""
        name = inputs.get("dataset_name", next(iter(self.loss)))
        fn = make_eval_step(model.forward, self.loss[name], num_shards=self.data_parallel,
                            loss_key=self._loss_param_key(self.loss[name]))
        trainable = {"model": model.params, "loss": self._train_state["trainable"]["loss"] if self._train_state else {}}
        out = fn(trainable, inputs)
        return (out["loss"], {}) if return_outputs else out["loss"]

    # -- the loop ------------------------------------------------------------------------------
    def _schedule_steps(self, value, total):
        return max(1, int(math.ceil(value * total))) if value and value < 1 else int(value or 0)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Train; on SIGTERM/SIGINT finish the step, write a checkpoint and raise ``TrainingInterrupted``."""
        self._last_save_step = None
        with PreemptionGuard() as self._preemption:
            return self._train(resume_from_checkpoint)

    def _train(self, resume_from_checkpoint):
        args = self.args
        if not self.train_data:
            raise ValueError("train() needs a train_dataset")
        resume_path = self._resume_path(resume_from_checkpoint)
        accum = args.gradient_accumulation_steps
        steps_per_epoch = max(1, len(accumulation_groups(self.epoch_plan(0), accum))) if not self.streaming else None
        if self.streaming:  # no length: as many passes over the stream as max_steps takes
            require_max_steps(args.max_steps)
            total, num_epochs = args.max_steps, None
        elif args.max_steps > 0:
            total = args.max_steps
            num_epochs = math.ceil(total / steps_per_epoch)
        else:
            total = int(math.ceil(args.num_train_epochs * steps_per_epoch))
            num_epochs = math.ceil(args.num_train_epochs)
        self.total_steps, self.steps_per_epoch = total, steps_per_epoch
        log_every = self._schedule_steps(args.logging_steps, total) if args.logging_strategy == "steps" else 0
        eval_every = self._schedule_steps(args.eval_steps, total) if args.eval_strategy == "steps" else 0
        save_every = self._schedule_steps(args.save_steps, total) if args.save_strategy == "steps" else 0

        tx, state = self._init_state(total)
        step_fns = self._build_steps(tx)
        start_epoch, skip_batches = 0, 0
        if resume_path is not None:
            abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
            state, ts = ckpt.restore_checkpoint(resume_path, abstract)
            start_epoch, skip_batches = ts["epoch_index"], ts["batches_in_epoch"]
            if self.streaming:
                skip_batches = resume_position(ts, resume_path)
            self.state.global_step = ts["global_step"]
            self.state.log_history = ts.get("log_history", [])
            self.state.best_metric = ts.get("best_metric")
            self.state.best_model_checkpoint = ts.get("best_model_checkpoint")
            logger.info("Resumed from %s at step %d", resume_path, self.state.global_step)
        if self.is_world_process_zero():
            os.makedirs(args.output_dir, exist_ok=True)
        ckpt.clean_partials(args.output_dir)  # every process: it ends with a barrier
        self._train_state = state
        self.state.max_steps, self.state.num_train_epochs = total, num_epochs
        self._fire("on_train_begin")
        if args.eval_on_start and self.state.global_step == 0:
            self._evaluate_now(state)

        bar = tqdm(total=total, initial=self.state.global_step, desc="Training",
                   disable=args.disable_tqdm or not self.is_world_process_zero())
        window, t0, samples, tokens = [], time.perf_counter(), 0, 0
        self._last_eval_step = None
        stop = self.state.global_step >= total
        for epoch in itertools.count(start_epoch) if self.streaming else range(start_epoch, num_epochs):
            if stop:
                break
            self._fire("on_epoch_begin")
            resume_at = skip_batches if epoch == start_epoch else None
            for name, ds, rows, reported_rows, progress, position in (
                    self._stream_steps(epoch, resume_at) if self.streaming else self._plan_steps(epoch, resume_at or 0)):
                batch = self._collate_step(name, rows, self.global_batch, ds)
                samples += sum(len(r) for r in rows)
                tokens += int(sum(c["attention_mask"].sum() for c in batch["columns"]))
                self._fire("on_step_begin")
                traced, t_call = self.compile_count[0], time.perf_counter()
                state, metrics = step_fns[name](state, self._to_device(batch, leading_accum=accum > 1, local=True))
                if self.compile_count[0] != traced:  # a new length bucket: this call traced and compiled
                    self.compile_seconds += time.perf_counter() - t_call
                self.state.global_step += 1
                self.state.epoch = progress
                self._train_state = state
                # The step donated the old parameter buffers; callbacks that encode between steps must see
                # this step's (live) arrays, not freed ones (reading a donated buffer can crash the process).
                self.model.params = state["trainable"]["model"]
                window.append(metrics)
                if args.nonfinite_policy == "stop" and not bool(metrics["finite"]):
                    self._dump_nonfinite(ds, [r for rs in rows for r in rs])
                bar.update(1)
                self._epoch_index, self._batches_in_epoch, self._stream_position = position
                self._fire("on_step_end", dataset_name=name, rows=reported_rows)
                gs = self.state.global_step
                if (log_every and gs % log_every == 0) or (args.logging_first_step and gs == 1) or self.control.should_log:
                    window, t0, samples, tokens = self._log_window(window, t0, samples, tokens, bar)
                if (eval_every and gs % eval_every == 0) or self.control.should_evaluate:
                    self._evaluate_now(state)
                if (save_every and gs % save_every == 0) or self.control.should_save:
                    self._save(state)
                self.control.should_log = self.control.should_evaluate = self.control.should_save = False
                if self._preemption.should_stop(gs):
                    self._stop_preempted(state, window, t0, samples, tokens)
                if gs >= total or self.control.should_training_stop:
                    stop = True
                    break
            if not stop:
                self._batches_in_epoch, self._epoch_index = 0, epoch + 1
                self._stream_position = StreamPosition(epoch + 1) if self.streaming else None
            self._fire("on_epoch_end")
            if args.logging_strategy == "epoch" and window:
                window, t0, samples, tokens = self._log_window(window, t0, samples, tokens, bar)
            if args.eval_strategy == "epoch":
                self._evaluate_now(state)
            if args.save_strategy == "epoch":
                self._save(state)
        bar.close()
        if window:
            self._log_window(window, t0, samples, tokens, None)
        if args.load_best_model_at_end and self.state.best_model_checkpoint:
            abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
            best, _ = ckpt.restore_checkpoint(self.state.best_model_checkpoint, abstract)
            state = best
            logger.info("Loaded best model from %s (%s=%s)", self.state.best_model_checkpoint,
                        args.metric_for_best_model, self.state.best_metric)
        self._train_state = state
        self.model.params = self._model_params(state)
        self.skipped_steps = int(state["skipped"])
        self._fire("on_train_end")
        if args.save_final_model:
            self.save_model(os.path.join(args.output_dir, "final"))
        return {"global_step": self.state.global_step, "skipped_steps": self.skipped_steps}

    def _plan_steps(self, epoch, skip):
        """Map-style data: the steps of ``epoch`` from batch ``skip`` on, as ``(dataset name, prepared
        dataset, micro-batch rows, rows for callbacks, epoch progress, (epoch, batches done, None))``."""
        plan = self.epoch_plan(epoch)
        for pos, name, rows in accumulation_groups(plan, self.args.gradient_accumulation_steps):
            if pos > skip:
                yield name, self.train_prepared[name], rows, rows, epoch + pos / max(len(plan), 1), (epoch, pos, None)

    def _stream_steps(self, epoch, position=None):
        """Streams: the steps of ``epoch`` from ``position`` on (a resumed run's), each step's examples
        validated and tokenized as they arrive; same tuples as :meth:`_plan_steps`, the callbacks' rows
        being stream indices within the epoch. ``state.epoch`` advances by 1/max_steps per step (the HF
        Trainer's convention for data without a length)."""
        accum = self.args.gradient_accumulation_steps
        position = position if isinstance(position, StreamPosition) else StreamPosition(epoch)  # not resumed: 0/None
        streams = {n: s.dataset for n, s in self.train_streams.items()}
        for group in epoch_groups(streams, self.global_batch, accum, self.args.dataloader_drop_last, position):
            examples, rows, indices = group_rows(group)
            ds = self.train_streams[group.name].prepare(examples, group.first_row)
            pos = group.position
            yield group.name, ds, rows, indices, epoch + pos.steps / self.args.max_steps, (epoch, pos.steps * accum, pos)

    def _resume_path(self, resume):
        if resume is None or resume is False:
            return None
        if resume is True:
            ckpt.clean_partials(self.args.output_dir)  # a killed run's leftovers: promote or remove, then list
            found = ckpt.list_checkpoints(self.args.output_dir)
            if not found:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir!r} has no complete checkpoint-*")
            return found[-1][1]
        if not ckpt.is_checkpoint(str(resume)):
            raise ValueError(f"resume_from_checkpoint={resume!r} is not a stcore_jax checkpoint (expected a directory "
                             "with state/ and trainer_state.json, e.g. output_dir/checkpoint-500)")
        return str(resume)

    def _log_window(self, window, t0, samples, tokens, bar):
        fetched = jax.device_get(window)  # the only host sync: once per logging interval
        losses = np.array([m["loss"] for m in fetched], np.float64)
        finite = np.isfinite(losses)
        if self.args.logging_nan_inf_filter and finite.any():
            losses = losses[finite]
        dt = max(time.perf_counter() - t0, 1e-9)
        logs = {"loss": float(losses.mean()), "grad_norm": float(fetched[-1]["grad_norm"]),
                "learning_rate": float(self.schedule(self.state.global_step - 1)) if self.schedule else None,
                "epoch": round(self.state.epoch, 4), "samples_per_second": samples / dt, "tokens_per_second": tokens / dt,
                "skipped_nonfinite": int(sum(1 for m in fetched if not m["finite"]))}
        for k in fetched[-1]:
            if k not in ("loss", "grad_norm", "finite"):
                logs[k] = float(np.mean([m[k] for m in fetched]))
        self.log(logs)
        warn_skipped(logs["skipped_nonfinite"], self.state.global_step - len(fetched) + 1, self.state.global_step)
        if bar is not None:
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
        return [], time.perf_counter(), 0, 0

    def log(self, logs: dict):
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._fire("on_log", logs=logs)

    def _dump_nonfinite(self, ds, rows):
        """nonfinite_policy="stop": write the batch report and raise NonFiniteLossError (nonfinite.py)."""
        stop_on_nonfinite(self.args.output_dir, self.state.global_step, ds, rows, write=self.is_world_process_zero())

    def _stop_preempted(self, state, window, t0, samples, tokens):
        """A signal arrived (preemption.py): flush the log window, checkpoint this step (unless it just was),
        then raise TrainingInterrupted."""
        guard, gs = self._preemption, self.state.global_step
        if window:
            self._log_window(window, t0, samples, tokens, None)
        if getattr(self, "_last_save_step", None) != gs:
            self._save(state)
        path = os.path.join(self.args.output_dir, f"{ckpt.PREFIX}{gs}")
        guard.handled = True
        msg = interrupted_message(guard.signum, gs, path)
        logger.warning(msg)
        if self.is_world_process_zero():
            print(msg, file=sys.stderr, flush=True)
        raise TrainingInterrupted(guard.signum, gs, path)

    # -- evaluation ----------------------------------------------------------------------------
    def _evaluate_now(self, state):
        self._train_state = state
        self.model.params = self._model_params(state)
        metrics = self.evaluate()
        self._last_eval_step = self.state.global_step
        key = self.args.metric_for_best_model
        if key and key in metrics:
            v = metrics[key]
            best = self.state.best_metric
            if best is None or (v > best if self.args.greater_is_better else v < best):
                self.state.best_metric = v
                self._pending_best = True
        return metrics

    def _eval_step_fn(self, loss):
        """The jitted eval step of ``loss``, kept across evaluations: a fresh ``jax.jit`` per evaluate()
        would trace and compile every length bucket again each time."""
        cache = self.__dict__.setdefault("_eval_step_fns", {})
        if id(loss) not in cache:
            step = make_eval_step(self._compute_model().forward, loss, num_shards=self.data_parallel,
                                  loss_key=self._loss_param_key(loss))
            cache[id(loss)] = jax.jit(step, out_shardings=NamedSharding(self.mesh, P()))
        return cache[id(loss)]

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        t0 = time.perf_counter()
        metrics = {}
        prepared = self.eval_prepared
        if eval_dataset is not None:
            data, is_dict = _as_dataset_dict(eval_dataset, "eval")
            prepared = {n: prepare_dataset(d, n, self.loss.get(n, next(iter(self.loss.values()))), self.model.input_module,
                                           prompts=self.args.prompts, is_dict_dataset=is_dict,
                                           router_mapping=self.args.router_mapping) for n, d in data.items()}
        n_rows = 0
        if prepared and self._train_state is not None:
            for name, ds in prepared.items():
                fn = self._eval_step_fn(self.loss.get(name, next(iter(self.loss.values()))))
                totals, count = None, 0
                order = np.arange(len(ds))
                for s in range(0, len(ds), self.global_eval_batch):
                    rows = order[s : s + self.global_eval_batch].tolist()
                    length = batch_bucket(ds, rows, self.buckets)
                    batch = collate(ds, rows, self.global_eval_batch, length, self.model.input_module.pad)
                    out = fn(self._train_state["trainable"], self._to_device(batch))
                    w = len(rows)
                    totals = jax.tree_util.tree_map(lambda a: a * w, out) if totals is None else jax.tree_util.tree_map(
                        lambda t, a: t + a * w, totals, out)
                    count += w
                n_rows += count
                prefix = f"{metric_key_prefix}_{name}_" if len(prepared) > 1 or self.eval_is_dict else f"{metric_key_prefix}_"
                for k, v in jax.device_get(totals).items():
                    metrics[prefix + k] = float(v) / count
        if self.evaluator is not None:
            out_dir = os.path.join(self.args.output_dir, "eval") if self.is_world_process_zero() else None
            if out_dir:
                os.makedirs(out_dir, exist_ok=True)
            results = self._run_evaluator_on_process_zero(out_dir)
            for k, v in results.items():
                metrics[k if k.startswith(metric_key_prefix + "_") else f"{metric_key_prefix}_{k}"] = float(v)
        dt = time.perf_counter() - t0
        metrics[f"{metric_key_prefix}_runtime"] = dt
        if n_rows:
            metrics[f"{metric_key_prefix}_samples_per_second"] = n_rows / dt
        metrics["epoch"] = self.state.epoch
        self.log(metrics)
        self._fire("on_evaluate", metrics=metrics)
        return metrics

    def _run_evaluator_on_process_zero(self, out_dir):
        """The evaluator runs on process 0; the others wait and receive its metrics (multi-host)."""
        if jax.process_count() == 1:
            return self.evaluator(self.model, output_path=out_dir, epoch=self.state.epoch, steps=self.state.global_step)
        import json

        from jax.experimental import multihost_utils

        size = 1 << 16
        buf = np.zeros((size,), np.uint8)
        if self.is_world_process_zero():
            results = self.evaluator(self.model, output_path=out_dir, epoch=self.state.epoch, steps=self.state.global_step)
            raw = json.dumps({k: float(v) for k, v in results.items()}).encode()
            if len(raw) > size:
                raise ValueError(f"evaluator returned {len(raw)} bytes of metrics; at most {size} can be broadcast")
            buf[: len(raw)] = np.frombuffer(raw, np.uint8)
        buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
        return json.loads(bytes(buf[buf != 0]).decode())

    # -- saving --------------------------------------------------------------------------------
    def _trainer_state_dict(self):
        return {"global_step": self.state.global_step, "epoch": self.state.epoch,
                "epoch_index": getattr(self, "_epoch_index", 0), "batches_in_epoch": getattr(self, "_batches_in_epoch", 0),
                "log_history": self.state.log_history, "best_metric": self.state.best_metric,
                "best_model_checkpoint": self.state.best_model_checkpoint, "data_seed": self._data_seed(),
                "global_batch": self.global_batch,
                **({"stream": (getattr(self, "_stream_position", None) or StreamPosition()).to_dict()}
                   if self.streaming else {})}

    def _save(self, state):
        self.model.params = self._model_params(state)  # the export inside the checkpoint
        step = self.state.global_step
        path = os.path.join(self.args.output_dir, f"{ckpt.PREFIX}{step}")
        if getattr(self, "_pending_best", False) and self._last_eval_step == step:
            self.state.best_model_checkpoint = path
            self._pending_best = False
        ckpt.save_checkpoint(self.args.output_dir, step, state, self._trainer_state_dict(), self.model)
        self._last_save_step = step
        keep = self.state.best_model_checkpoint if self.args.load_best_model_at_end else None
        ckpt.rotate_checkpoints(self.args.output_dir, self.args.save_total_limit, keep)
        self._fire("on_save")

    def save_model(self, output_dir=None):
        if self.is_world_process_zero():
            self.model.save_pretrained(output_dir or self.args.output_dir)

    def get_num_trainable_parameters(self) -> int:
        if hasattr(self.model, "num_trainable_parameters"):  # excludes a LoRA-frozen base
            return self.model.num_trainable_parameters()
        return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self.model.params)))

    def get_learning_rates(self):
        return [float(self.schedule(self.state.global_step))] if getattr(self, "schedule", None) else []
