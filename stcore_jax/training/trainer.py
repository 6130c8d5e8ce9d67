"""``Trainer``: the training loop on a JAX mesh, for any model family.

Read top to bottom: ``__init__`` validates and prepares the datasets and losses through the family's
task (training/task.py; every input error surfaces before anything compiles) and fixes the batch
geometry (length buckets, sequence packing) -> ``train`` builds the train state (born sharded) and the
donated jitted step, restores a checkpoint -> the loop walks the epoch's batch plan (a pure function of
``(seed, epoch)``) or the streams, logging, evaluating and checkpointing on the configured schedules ->
the final model is exported. The loop's state is one dataclass (training/state.py). Nothing here knows
what the model computes, what a row holds or what the loss is.
"""

from __future__ import annotations

import copy
import dataclasses
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

from stcore_jax.batching.buckets import bucket_for
from stcore_jax.compile_cache import BackgroundCompiler, enable_compilation_cache
from stcore_jax.distributed import maybe_initialize_distributed
from stcore_jax.training import checkpoint as ckpt
from stcore_jax.training.arguments import TrainingArguments
from stcore_jax.training.callbacks import (
    CallbackHandler,
    JsonLinesLogger,
    TrainerCallback,
    TrainerControl,
    integration_callbacks,
)
from stcore_jax.training.evaluate import mean_eval_loss, run_evaluator
from stcore_jax.training.feed import DataFeed, as_dataset_dict
from stcore_jax.training.hub_upload import hub_callbacks
from stcore_jax.training.logs import LogWindow
from stcore_jax.training.mesh import make_mesh
from stcore_jax.training.nonfinite import stop_on_nonfinite, warn_skipped
from stcore_jax.training.optim import freeze_params, make_optimizer
from stcore_jax.training.plots import TrainingPlotsCallback
from stcore_jax.training.preemption import PreemptionGuard, TrainingInterrupted, interrupted_message
from stcore_jax.training.samplers import accumulation_groups
from stcore_jax.training.sharding import data_parallel_size, gather_to_host, sharded_train_state
from stcore_jax.training.state import TrainerState
from stcore_jax.training.step import make_eval_step, make_train_step
from stcore_jax.training.stream import StreamPosition, is_stream, require_max_steps, warn_ignored_samplers
from stcore_jax.training.task import Task

logger = logging.getLogger(__name__)


def _abstract(state):
    """Shapes, dtypes and shardings of ``state``: what a checkpoint is restored onto."""
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def _detached(obj):
    """A shallow copy of a model or module whose modules (nested too: a Router's) are copies, so that setting its
    ``params`` leaves ``obj`` alone (a module holds its own parameters)."""
    out = copy.copy(obj)
    mods = getattr(obj, "modules", None)
    if isinstance(mods, list):
        out.modules = [_detached(m) for m in mods]
    elif isinstance(mods, dict):
        out.modules = {k: _detached(m) for k, m in mods.items()}
    return out


class Trainer(DataFeed, CallbackHandler):
    """Train ``task.model`` (a family's :class:`~stcore_jax.training.task.Task`) under ``args``; the other
    arguments are those of the sentence-transformers trainers."""

    def __init__(self, task: Task, args: TrainingArguments, train_dataset=None, eval_dataset=None, loss=None,
                 evaluator=None, callbacks=None, optimizers=(None, None)):
        maybe_initialize_distributed()
        enable_compilation_cache(args.compilation_cache_dir)  # compile_cache.py: a second run compiles nothing
        self.task, self.model, self.args, self.optimizers = task, task.model, args, optimizers
        # -- data and losses (checked before anything is prepared) ------------------------------
        self.train_data, self.train_is_dict = as_dataset_dict(train_dataset, "train", allow_streams=True)
        self.streaming = any(is_stream(d) for d in self.train_data.values())
        if self.streaming:
            require_max_steps(args.max_steps)
        self.eval_data, self.eval_is_dict = as_dataset_dict(eval_dataset, "eval")
        self.loss = self._resolve_losses(loss)
        if evaluator is not None and isinstance(evaluator, (list, tuple)):
            from stcore_jax.base.evaluation import SequentialEvaluator

            evaluator = SequentialEvaluator(list(evaluator))
        self.evaluator = evaluator
        if args.eval_strategy != "no" and evaluator is None and not self.eval_data:
            raise ValueError(f"eval_strategy={args.eval_strategy!r} needs an eval_dataset or an evaluator")
        # -- the mesh and the batch --------------------------------------------------------------
        self.mesh = make_mesh(args.mesh_shape)
        self.data_parallel = data_parallel_size(self.mesh)  # data x fsdp: both axes split the batch
        self.global_batch = self._global_batch()
        self.per_device_train_batch_size = self.global_batch // self.data_parallel  # args stay as the user set them
        self.global_eval_batch = args.per_device_eval_batch_size * self.data_parallel
        task.setup()
        # -- prepared data: streams are checked now and prepared per step (training/stream.py) ----
        self.train_streams = {n: task.stream_source(d, n, self.loss[n], is_dict=self.train_is_dict)
                              for n, d in self.train_data.items() if self.streaming}
        if self.streaming:
            warn_ignored_samplers(args.batch_sampler, args.multi_dataset_batch_sampler, len(self.train_data))
        self.train_prepared = {n: task.prepare(d, n, self.loss[n], is_dict=self.train_is_dict)
                               for n, d in self.train_data.items() if not self.streaming}
        self.eval_prepared = {n: task.prepare(d, n, self.loss[n], is_dict=self.eval_is_dict)
                              for n, d in self.eval_data.items()}
        self.samplers = {n: self.get_batch_sampler(self.train_data[n], self.global_batch, args.dataloader_drop_last,
                                                   valid_label_columns=list(task.label_columns), seed=self._data_seed(),
                                                   prepared=p)
                         for n, p in self.train_prepared.items()}
        self._fit_batch_geometry()  # length buckets, or sequence packing (feed.py)
        # -- callbacks and the loop state --------------------------------------------------------
        self.callbacks: list[TrainerCallback] = [JsonLinesLogger(), *integration_callbacks(args.report_to),
                                                 TrainingPlotsCallback(), *task.callbacks(self)]
        for cb in callbacks or []:
            self.add_callback(cb)
        self.callbacks += hub_callbacks(self)  # push_to_hub: background uploads on save and at the end (hub_upload.py)
        self.state = TrainerState(is_world_process_zero=self.is_world_process_zero())
        self.control = TrainerControl()
        self.compile_count = [0]  # train-step traces (one per length bucket and loss)
        self.compile_seconds = 0.0  # wall time of the train-step calls that compiled, or waited for a compilation
        self._aot = None  # the background compiler of the run's step shapes (compile_cache.py)
        self.skipped_steps = 0
        self._train_state = None
        self._fire("on_init_end")

    # -- setup helpers -------------------------------------------------------------------------
    def _resolve_losses(self, loss) -> dict:
        """Dataset name -> loss, for every train and eval dataset (a dict must name them all), validated
        by the task."""
        names = list(self.train_data) + [n for n in self.eval_data if n not in self.train_data]
        if loss is None:
            loss = self.task.default_loss()
        if isinstance(loss, dict):
            missing = [n for n in names if n not in loss]
            if missing:
                raise ValueError(f"loss is a dict with keys {sorted(loss)}, but datasets {missing} have no loss; "
                                 "give every train/eval dataset name a loss")
            out = {n: self.task.build_loss(loss[n]) for n in names}
        else:
            out = {n: self.task.build_loss(loss) for n in names}
        self.task.check_losses(out)
        return out

    def _global_batch(self) -> int:
        """``train_batch_size`` (the global batch) when set, else ``per_device_train_batch_size`` x data shards."""
        given = self.args.train_batch_size
        if given is None:
            return self.args.per_device_train_batch_size * self.data_parallel
        if given % self.data_parallel:
            raise ValueError(f"train_batch_size={given} is not divisible by the data-parallel "
                             f"size {self.data_parallel}; pick a multiple of {self.data_parallel}")
        return given

    def is_world_process_zero(self) -> bool:
        return jax.process_index() == 0

    is_local_process_zero = is_world_process_zero

    # -- the train state and the step ----------------------------------------------------------
    def _init_state(self, total_steps):
        """The train state, born sharded: parameters and optimizer state over ``fsdp`` where large enough
        (training/sharding.py), step counters replicated. Sets ``self.state_shardings`` and ``self.schedule``."""
        loss_params = {}  # one subtree per distinct loss object that owns parameters (e.g. SoftmaxLoss's classifier)
        for n, lo in self.loss.items():
            if self._loss_param_key(lo) == n:
                p = self.task.init_loss_params(lo, jax.random.fold_in(jax.random.key(self.args.seed), len(loss_params)))
                if p:
                    loss_params[n] = p
        trainable = {"model": self.model.params, "loss": loss_params}
        if self.optimizers and self.optimizers[0] is not None:
            tx, schedule = self.optimizers[0], self.optimizers[1]
        else:
            tx, schedule = make_optimizer(self.args, trainable, total_steps, aliases=self.task.param_aliases)
        tx = freeze_params(tx, trainable, self.task.frozen_keys())  # e.g. LoRA: the base gets no state, no update
        counts = self.task.parameter_counts()
        if counts is not None:
            n_train, n_all = counts
            logger.info("Trainable parameters: %d of %d (%.2f%%)", n_train, n_all, 100.0 * n_train / max(n_all, 1))
        self.schedule = schedule
        state, self.state_shardings = sharded_train_state(trainable, tx, self.mesh, self.args.fsdp_min_size)
        model_state = self.task.initial_model_state()
        if model_state:  # only then: other families' states (and checkpoints) keep their layout
            replicated = NamedSharding(self.mesh, P())
            self.state_shardings["model_state"] = jax.tree_util.tree_map(lambda _: replicated, model_state)
            state["model_state"] = jax.device_put(model_state, self.state_shardings["model_state"])
        return tx, state

    def _loss_param_key(self, loss):
        """The key of ``loss``'s parameters in ``state["trainable"]["loss"]``: the first dataset name that uses
        this loss object. Datasets sharing one loss object share its parameters; two loss objects never do
        (the reference trains every loss module's own parameters)."""
        return next((n for n, lo in self.loss.items() if lo is loss), None)

    def _objective(self, loss, model=None):
        key = self._loss_param_key(loss)
        return self.task.objective(loss, loss_key=key, num_shards=self.data_parallel, model=model)

    def _model_params(self, state):
        """The model's parameters from ``state`` for export and the evaluator (collective: arrays sharded
        across processes are gathered to the host; on one process they stay as they are)."""
        return gather_to_host(state["trainable"]["model"])

    def _set_model(self, state):
        """Write ``state``'s parameters, and the task's model state if it has one, back to the model (for an
        export, the evaluator, the end of training; collective, as :meth:`_model_params`)."""
        self.model.params = self._model_params(state)
        if "model_state" in state:
            self.task.set_model_state(jax.device_get(gather_to_host(state["model_state"])))

    def _build_steps(self, tx):
        """One jitted step per loss: the state keeps ``self.state_shardings`` in and out (donated), so XLA
        gathers fsdp-sharded weights where they are used and reduce-scatters their gradients."""
        replicated = NamedSharding(self.mesh, P())
        steps, seen = {}, {}
        for n, lo in self.loss.items():
            if id(lo) not in seen:
                fn = make_train_step(self._objective(lo), tx, seed=self.args.seed, counter=self.compile_count,
                                     accum_steps=self.args.gradient_accumulation_steps)
                seen[id(lo)] = jax.jit(fn, in_shardings=(self.state_shardings, None),
                                       out_shardings=(self.state_shardings, replicated), donate_argnums=0)
            steps[n] = seen[id(lo)]
        return steps

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Loss of one collated batch on ``model``'s current parameters (no dropout)."""
        name = inputs.get("dataset_name", next(iter(self.loss)))
        fn = make_eval_step(self._objective(self.loss[name], model=model))
        trainable = {"model": model.params, "loss": self._train_state["trainable"]["loss"] if self._train_state else {}}
        model_state = self._train_state.get("model_state") if self._train_state else self.task.initial_model_state()
        out = fn(trainable, inputs, jnp.maximum(self._train_state["step"] - 1, 0) if self._train_state else 0,
                 model_state)
        return (out["loss"], {}) if return_outputs else out["loss"]

    # -- the loop ------------------------------------------------------------------------------
    def _schedule_steps(self, value, total):
        return max(1, int(math.ceil(value * total))) if value and value < 1 else int(value or 0)

    def _run_length(self) -> tuple[int, int | None]:
        """``(total optimizer steps, epochs)`` (and ``self.steps_per_epoch``); streams have no length:
        ``max_steps``, epochs unbounded."""
        args = self.args
        self.steps_per_epoch = None if self.streaming else max(
            1, len(accumulation_groups(self.epoch_plan(0), args.gradient_accumulation_steps)))
        if self.streaming:  # no length: as many passes over the stream as max_steps takes
            require_max_steps(args.max_steps)
            return args.max_steps, None
        if args.max_steps > 0:
            return args.max_steps, math.ceil(args.max_steps / self.steps_per_epoch)
        return int(math.ceil(args.num_train_epochs * self.steps_per_epoch)), math.ceil(args.num_train_epochs)

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Train; on SIGTERM/SIGINT finish the step, write a checkpoint and raise ``TrainingInterrupted``."""
        self.state.last_save_step = None
        self._pending_save = None  # (PendingSave, epoch): a checkpoint being written in the background
        with PreemptionGuard() as self._preemption:
            try:
                return self._train(resume_from_checkpoint)
            finally:
                self._drain_save()  # leaving with an error: the checkpoint in flight (a good step's) completes
                if self._aot is not None:  # ended, interrupted or failed: no compile thread outlives train()
                    self._aot.close()

    def _start_aot(self, step_fns, state, epoch, skip, steps):
        """``aot_compile``: compile the train step for every (loss, batch shape) of the next ``steps`` steps of
        ``epoch`` in a background thread (compile_cache.BackgroundCompiler) while the first steps run. Map-style
        data on one process only; else None (each new shape compiles at its first step)."""
        if not self.args.aot_compile or self.streaming or jax.process_count() > 1 or steps <= 0:
            return None
        self.epoch_plan(epoch)  # computed here, once, not by both threads
        jobs = (None if job is None else (step_fns[job[0]], job[1])
                for job in self._planned_inputs(epoch, skip or 0, steps))
        return BackgroundCompiler(state, jobs)

    def _train(self, resume_from_checkpoint):
        args, st = self.args, self.state
        if not self.train_data:
            raise ValueError("train() needs a train_dataset")
        resume_path = ckpt.resume_path(resume_from_checkpoint, args.output_dir)
        accum = args.gradient_accumulation_steps
        total, num_epochs = self._run_length()
        self.total_steps = total
        self.task.set_run_length(total)
        log_every = self._schedule_steps(args.logging_steps, total) if args.logging_strategy == "steps" else 0
        eval_every = self._schedule_steps(args.eval_steps, total) if args.eval_strategy == "steps" else 0
        save_every = self._schedule_steps(args.save_steps, total) if args.save_strategy == "steps" else 0

        tx, state = self._init_state(total)
        step_fns = self._build_steps(tx)
        start_epoch, resume_at = 0, None
        if resume_path is not None:
            state, saved = ckpt.restore_checkpoint(resume_path, _abstract(state))
            st.restore(saved, resume_path, streaming=self.streaming)
            start_epoch, resume_at = st.epoch_index, st.stream_position if self.streaming else st.batches_in_epoch
            logger.info("Resumed from %s at step %d", resume_path, st.global_step)
        if self.is_world_process_zero():
            os.makedirs(args.output_dir, exist_ok=True)
        ckpt.clean_partials(args.output_dir)  # every process: it ends with a barrier
        self._train_state = state
        first_step = st.global_step
        self._aot = self._start_aot(step_fns, state, start_epoch, resume_at, total - first_step)
        st.max_steps, st.num_train_epochs = total, num_epochs
        self._fire("on_train_begin")
        if args.eval_on_start and st.global_step == 0:
            self._evaluate_now(state)

        bar = tqdm(total=total, initial=st.global_step, desc="Training",
                   disable=args.disable_tqdm or not self.is_world_process_zero())
        window = LogWindow()
        st.last_eval_step = None
        stop = st.global_step >= total
        for epoch in itertools.count(start_epoch) if self.streaming else range(start_epoch, num_epochs):
            if stop:
                break
            self._fire("on_epoch_begin")
            for name, ds, rows, reported_rows, progress, position in self._epoch_steps(
                    epoch, resume_at if epoch == start_epoch else None):
                batch = self._collate_step(name, rows, self.global_batch, ds)
                window.count(sum(len(r) for r in rows), self.task.count_tokens(batch))
                self._fire("on_step_begin")
                inputs = self._to_device(batch, leading_accum=accum > 1, local=True)
                step_fn, waited = (step_fns[name], 0.0) if self._aot is None else \
                    self._aot.executable(step_fns[name], inputs, st.global_step - first_step)
                traced, t_call = self.compile_count[0], time.perf_counter()
                state, metrics = step_fn(state, inputs)
                if step_fn is step_fns[name] and self.compile_count[0] != traced:  # a new shape: traced and compiled
                    self.compile_seconds += time.perf_counter() - t_call
                self.compile_seconds += waited  # for the background compilation of this shape
                st.global_step += 1
                st.epoch = progress
                self._train_state = state
                # The step donated the old parameter buffers; callbacks that encode between steps must see
                # this step's (live) arrays, not freed ones (reading a donated buffer can crash the process).
                self.model.params = state["trainable"]["model"]
                window.append(metrics)
                if args.nonfinite_policy == "stop" and not bool(metrics["finite"]):
                    self._stop_nonfinite(name, ds, [r for rs in rows for r in rs])
                bar.update(1)
                st.advance(*position)
                self._fire("on_step_end", dataset_name=name, rows=reported_rows)
                gs = st.global_step
                first = args.logging_first_step and gs == 1
                if (log_every and gs % log_every == 0) or first or self.control.should_log:
                    self._log_window(window, bar)
                if (eval_every and gs % eval_every == 0) or self.control.should_evaluate:
                    self._evaluate_now(state)
                self._finish_save(block=False)  # a background save that completed: rotation, on_save
                if (save_every and gs % save_every == 0) or self.control.should_save:
                    self._save(state)
                self.control.should_log = self.control.should_evaluate = self.control.should_save = False
                if self._preemption.should_stop(gs):
                    self._stop_preempted(state, window)
                if gs >= total or self.control.should_training_stop:
                    stop = True
                    break
            if not stop:
                st.advance(epoch + 1, 0, StreamPosition(epoch + 1) if self.streaming else None)
            self._fire("on_epoch_end")
            if args.logging_strategy == "epoch" and window:
                self._log_window(window, bar)
            if args.eval_strategy == "epoch":
                self._evaluate_now(state)
            if args.save_strategy == "epoch":
                self._save(state)
        bar.close()
        if window:
            self._log_window(window, None)
        self._finish_save()  # the last checkpoint complete (and the best one on disk) before anything reads it
        if args.load_best_model_at_end and st.best_model_checkpoint:
            state, _ = ckpt.restore_checkpoint(st.best_model_checkpoint, _abstract(state))
            logger.info("Loaded best model from %s (%s=%s)", st.best_model_checkpoint, args.metric_for_best_model,
                        st.best_metric)
        self._train_state = state
        self._set_model(state)
        self.skipped_steps = int(state["skipped"])
        self._fire("on_train_end")
        if args.save_final_model:
            self.save_model(os.path.join(args.output_dir, "final"))
        return {"global_step": st.global_step, "skipped_steps": self.skipped_steps}

    def _log_window(self, window: LogWindow, bar):
        st = self.state
        logs = window.summary(nan_inf_filter=self.args.logging_nan_inf_filter, epoch=st.epoch,
                              learning_rate=float(self.schedule(st.global_step - 1)) if self.schedule else None)
        self.log(logs)
        warn_skipped(logs["skipped_nonfinite"], st.global_step - len(window) + 1, st.global_step)
        if bar is not None:
            bar.set_postfix(loss=f"{logs['loss']:.4f}")
        window.reset()

    def log(self, logs: dict):
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._fire("on_log", logs=logs)

    def _stop_nonfinite(self, name, ds, rows):
        """nonfinite_policy="stop": write the batch report and raise NonFiniteLossError (nonfinite.py)."""
        stop_on_nonfinite(self.args.output_dir, self.state.global_step, name, self.task.batch_report(ds, rows),
                          write=self.is_world_process_zero())

    def _stop_preempted(self, state, window):
        """A signal arrived (preemption.py): flush the log window, checkpoint this step (unless it just was),
        then raise TrainingInterrupted."""
        guard, gs = self._preemption, self.state.global_step
        if window:
            self._log_window(window, None)
        if self.state.last_save_step != gs:
            self._save(state)
        self._finish_save()  # the message below promises a complete checkpoint
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
        self._set_model(state)
        metrics = self.evaluate()
        st = self.state
        st.last_eval_step = st.global_step
        key = self.args.metric_for_best_model
        if key and key in metrics:
            v = metrics[key]
            if st.best_metric is None or (v > st.best_metric if self.args.greater_is_better else v < st.best_metric):
                st.best_metric = v
                st.pending_best = True
        return metrics

    def _eval_step_fn(self, loss):
        """The jitted eval step of ``loss``, kept across evaluations: a fresh ``jax.jit`` per evaluate()
        would trace and compile every length bucket again each time."""
        cache = self.__dict__.setdefault("_eval_step_fns", {})
        if id(loss) not in cache:
            replicated = NamedSharding(self.mesh, P())
            cache[id(loss)] = jax.jit(make_eval_step(self._objective(loss)), out_shardings=replicated)
        return cache[id(loss)]

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        t0 = time.perf_counter()
        metrics, prepared = {}, self.eval_prepared
        loss_of = lambda n: self.loss.get(n, next(iter(self.loss.values())))  # noqa: E731
        if eval_dataset is not None:
            data, is_dict = as_dataset_dict(eval_dataset, "eval")
            prepared = {n: self.task.prepare(d, n, loss_of(n), is_dict=is_dict) for n, d in data.items()}
        n_rows = 0
        if prepared and self._train_state is not None:
            for name, ds in prepared.items():
                def make_batch(rows, ds=ds):
                    length = bucket_for(self.task.longest(ds, rows), self.buckets)
                    return self._to_device(self.task.collate(ds, rows, self.global_eval_batch, length))

                # A step-dependent loss (SpladeLoss's warm-up) is evaluated as the last update trained it.
                last = jnp.maximum(self._train_state["step"] - 1, 0)
                fn = self._eval_step_fn(loss_of(name))
                model_state = self._train_state.get("model_state")  # read, not advanced (training/step.py)
                means, count = mean_eval_loss(lambda t, b, fn=fn, ms=model_state: fn(t, b, last, ms),
                                              self._train_state["trainable"], len(ds), self.global_eval_batch,
                                              make_batch)
                n_rows += count
                named = len(prepared) > 1 or self.eval_is_dict
                prefix = f"{metric_key_prefix}_{name}_" if named else f"{metric_key_prefix}_"
                metrics.update({prefix + k: v for k, v in means.items()})
        if self.evaluator is not None:
            out_dir = os.path.join(self.args.output_dir, "eval") if self.is_world_process_zero() else None
            if out_dir:
                os.makedirs(out_dir, exist_ok=True)
            results = run_evaluator(self.evaluator, self.model, output_path=out_dir, epoch=self.state.epoch,
                                    steps=self.state.global_step, is_main=self.is_world_process_zero())
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

    # -- saving --------------------------------------------------------------------------------
    def _save(self, state):
        """Checkpoint ``state``: in a background thread on one process without per-save Hub pushes (training goes
        on while it is written; training/checkpoint.py), else in the foreground. Rotation and ``on_save`` follow
        its completion."""
        self._finish_save()  # one save in flight: the previous one completes (or raises) first
        self._set_model(state)  # the live model as saved (and, in the foreground, the export inside the checkpoint)
        st, step = self.state, self.state.global_step
        path = os.path.join(self.args.output_dir, f"{ckpt.PREFIX}{step}")
        if st.pending_best and st.last_eval_step == step:
            st.best_model_checkpoint = path
            st.pending_best = False
        saved = st.to_json(data_seed=self._data_seed(), global_batch=self.global_batch, streaming=self.streaming)
        # push_to_hub pushes each checkpoint from on_save (hub_upload.py), which a background write would delay by
        # the write's duration: those saves stay in the foreground, so each push starts at its step.
        if ckpt.background_saves() and not (self.args.push_to_hub and self.args.hub_strategy != "end"):
            self._pending_save = (ckpt.start_checkpoint(self.args.output_dir, step, state, saved,
                                                        export=self._export_snapshot(state)), st.epoch)
            st.last_save_step = step
            return
        ckpt.save_checkpoint(self.args.output_dir, step, state, saved,
                             export=lambda d: self.task.save(d, create_model_card=False))
        st.last_save_step = step
        self._after_save(step, st.epoch)

    def _after_save(self, step: int, epoch: float):
        """A checkpoint is complete: rotate (``save_total_limit``; never the best one), then ``on_save``, which
        sees the state as at the saved step (a background write completes some steps later)."""
        keep = self.state.best_model_checkpoint if self.args.load_best_model_at_end else None
        ckpt.rotate_checkpoints(self.args.output_dir, self.args.save_total_limit, keep)
        live = self.state
        if live.global_step != step:
            self.state = dataclasses.replace(live, global_step=step, epoch=epoch)
        try:
            self._fire("on_save")
        finally:
            self.state = live

    def _finish_save(self, block: bool = True):
        """Complete the background save in flight, if any (``block=False``: only if its write has ended);
        a failed write raises ``CheckpointWriteError`` here."""
        pending = getattr(self, "_pending_save", None)
        if pending is None or (not block and not pending[0].done()):
            return
        self._pending_save = None
        pending[0].wait()
        self._after_save(pending[0].step, pending[1])

    def _drain_save(self):
        """train() is ending with an error: let the write in flight complete (logged, not raised, if it fails)."""
        pending = getattr(self, "_pending_save", None)
        self._pending_save = None
        if pending is not None:
            try:
                pending[0].wait()
            except ckpt.CheckpointWriteError as e:
                logger.error("%s", e)

    def _export_snapshot(self, state):
        """``export(directory)`` writing the model as ``state`` holds it now, safe in a thread while training goes
        on: host copies of the parameters (and model state), on a copy of the task whose model's modules are
        copies (the live modules get every step's parameters; the next step donates ``state``'s buffers)."""
        host = lambda tree: jax.tree_util.tree_map(np.array, jax.device_get(tree))  # noqa: E731  np.array copies
        task = copy.copy(self.task)
        task.model = _detached(self.model)
        task.model.params = host(self._model_params(state))
        if "model_state" in state:
            task.set_model_state(host(gather_to_host(state["model_state"])))
        return lambda d: task.save(d, create_model_card=False)

    def save_model(self, output_dir=None):
        if self.is_world_process_zero():
            self.task.save(output_dir or self.args.output_dir)

    def get_num_trainable_parameters(self) -> int:
        return self.task.num_trainable_parameters()

    def get_learning_rates(self):
        return [float(self.schedule(self.state.global_step))] if getattr(self, "schedule", None) else []
