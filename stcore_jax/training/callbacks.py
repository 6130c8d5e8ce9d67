"""Callback protocol with ``transformers.TrainerCallback`` hook names and arguments."""

from __future__ import annotations

import dataclasses
import json
import math
import os

from stcore_jax.training.state import TrainerState  # noqa: F401 (its historical home)


@dataclasses.dataclass
class TrainerControl:
    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False


class TrainerCallback:
    """Override any hook; each gets ``(args, state, control, **kwargs)``."""

    def on_init_end(self, args, state, control, **kwargs): ...
    def on_train_begin(self, args, state, control, **kwargs): ...
    def on_train_end(self, args, state, control, **kwargs): ...
    def on_epoch_begin(self, args, state, control, **kwargs): ...
    def on_epoch_end(self, args, state, control, **kwargs): ...
    def on_step_begin(self, args, state, control, **kwargs): ...
    def on_step_end(self, args, state, control, **kwargs): ...
    def on_substep_end(self, args, state, control, **kwargs): ...
    def on_pre_optimizer_step(self, args, state, control, **kwargs): ...
    def on_optimizer_step(self, args, state, control, **kwargs): ...
    def on_evaluate(self, args, state, control, metrics=None, **kwargs): ...
    def on_save(self, args, state, control, **kwargs): ...
    def on_log(self, args, state, control, logs=None, **kwargs): ...
    def on_prediction_step(self, args, state, control, **kwargs): ...


class CallbackHandler:
    """The trainer's callback list (``self.callbacks``) and the HF Trainer's methods on it; events go to every
    callback with ``(args, state, control, model=..., **kwargs)``."""

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


class JsonLinesLogger(TrainerCallback):
    """Appends every log dict to ``output_dir/logs.jsonl`` (process 0 only)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        row = {"step": state.global_step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                              for k, v in logs.items()}}
        with open(os.path.join(args.output_dir, "logs.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")


class TensorBoardCallback(TrainerCallback):
    def __init__(self):
        from tensorboardX import SummaryWriter  # noqa: F401 (checked at construction)

        self.writer = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.writer is None:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(os.path.join(args.output_dir, "runs", args.run_name or "run"))
        for k, v in (logs or {}).items():
            if isinstance(v, (int, float)):
                self.writer.add_scalar(k, v, state.global_step)
        self.writer.flush()


class WandbCallback(TrainerCallback):
    def __init__(self):
        import wandb

        self.wandb = wandb
        self.run = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.run is None:
            self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "sentence-transformers"),
                                       name=args.run_name, config=args.to_dict())
        self.run.log(dict(logs or {}), step=state.global_step)


class EarlyStoppingCallback(TrainerCallback):
    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float = 0.0):
        self.patience, self.threshold, self.bad = early_stopping_patience, early_stopping_threshold, 0

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        key = args.metric_for_best_model
        if not key or key not in (metrics or {}):
            return
        v = metrics[key]
        better = state.best_metric is None or (
            v - state.best_metric > self.threshold if args.greater_is_better
            else state.best_metric - v > self.threshold)
        self.bad = 0 if better else self.bad + 1
        if self.bad >= self.patience:
            control.should_training_stop = True


def integration_callbacks(report_to) -> list[TrainerCallback]:
    out = []
    wanted = set(report_to or [])
    if "all" in wanted:
        wanted = {"tensorboard", "wandb"}
    for name, cls in (("tensorboard", TensorBoardCallback), ("wandb", WandbCallback)):
        if name in wanted:
            try:
                out.append(cls())
            except ImportError as e:
                raise ValueError(f"report_to includes {name!r} but it is not installed: {e}") from None
    return out
