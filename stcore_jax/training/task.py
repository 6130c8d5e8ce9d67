"""``Task``: what a model family tells the generic training loop (training/trainer.py).

The loop owns the mesh, the train state and its shardings, the jitted step, the epoch plans and
streams, schedules, checkpoints, evaluation and callbacks; it never looks inside a model, a dataset row
or a loss. A family (sentence_transformer/task.py, and the fake one of tests/training/test_generic_loop.py)
implements this class to supply everything that does:

- **losses**: the default loss, turning what the user passed into a loss object, validating the
  losses (before any dataset is prepared or anything compiles), a loss's own parameters, and the
  **objective** ``(trainable, batch, key) -> (loss, aux)`` that the step differentiates;
- **data**: preparing a dataset (validation and tokenization or the family's equivalent) into an object
  the loop treats as opaque except for ``len()``; a stream source for ``IterableDataset`` s; the length
  of rows (for length buckets); collation into fixed-shape numpy batches, padded or sequence-packed;
- **the model**: its compute-dtype view, export, frozen parameters and parameter counts, and the
  callbacks it brings (e.g. the model card).

Contract with the model: ``task.model.params`` is the model's parameter pytree; the loop trains it as
``state["trainable"]["model"]`` and writes the live arrays back to ``model.params`` after every step. A model
with state that its training forward updates but no optimizer trains (a SparseAutoEncoder's dead-latent
counts) declares it in :meth:`Task.initial_model_state`; the loop keeps it in ``state["model_state"]``
(replicated, checkpointed) and hands it back through :meth:`Task.set_model_state` wherever it writes the
parameters back for an export, an evaluator or the end of training.
"""

from __future__ import annotations

import abc
import re

import jax
import numpy as np

from stcore_jax.training.distributed import local_rows
from stcore_jax.training.step import Objective

# A Router's sub-module id (models/router.py): "{route}_{position}_{ClassName}".
_ROUTER_ID = re.compile(r"^(.+)_(\d+)_([A-Z][A-Za-z0-9]*)$")


class Task(abc.ABC):
    """One model family's side of training. ``model`` is the model being trained, ``args`` the
    :class:`~stcore_jax.training.arguments.TrainingArguments`."""

    label_columns: tuple[str, ...] = ()  # passed to batch samplers as ``valid_label_columns``
    total_steps: int | None = None  # the run's optimizer steps, once training starts (set_run_length)

    def __init__(self, model, args):
        self.model, self.args = model, args

    # -- losses --------------------------------------------------------------------------------
    @abc.abstractmethod
    def default_loss(self):
        """The loss used when the trainer gets none."""

    def build_loss(self, loss):
        """What the user passed for one dataset (a loss, or e.g. a factory ``model -> loss``) -> the loss."""
        return loss

    def check_losses(self, losses: dict) -> None:
        """Raise a clear ``ValueError`` for a loss the model or the arguments cannot train (``losses``: dataset
        name -> loss). Runs before any dataset is prepared and before anything compiles."""
        return None

    def init_loss_params(self, loss, rng) -> dict:
        """The loss's own trainable parameters (``{}``: none); trained under ``trainable["loss"][name]``."""
        return {}

    @abc.abstractmethod
    def objective(self, loss, *, loss_key: str | None, num_shards: int, model=None) -> Objective:
        """The function the step differentiates: ``objective(trainable, batch, key) -> (loss, aux)`` (with the
        ``uses_step`` / ``uses_model_state`` forms of training/step.py).

        ``trainable = {"model": params, "loss": {name: loss params}}`` (``loss_key``: this loss's entry,
        ``None`` for the whole ``trainable["loss"]``); ``batch`` a collated batch as device arrays; ``key``
        the dropout key (``None``: evaluation, no dropout); ``loss`` a scalar and ``aux`` a dict of scalars
        to log. ``num_shards``: how many data shards the batch rows are split over. ``model``: whose forward
        to run (default: :meth:`compute_model`)."""

    def set_run_length(self, total_steps: int) -> None:
        """Told before the train state and the steps are built: the run's number of optimizer steps (for
        objectives that depend on the step, e.g. a loss weight warmed up over a fraction of training)."""
        self.total_steps = total_steps

    # -- data ----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Check the model against the arguments and configure it for training (called once, before any
        dataset is prepared)."""
        return None

    @abc.abstractmethod
    def prepare(self, dataset, name: str, loss, *, is_dict: bool):
        """Validate ``dataset`` (a ``datasets.Dataset`` named ``name``, trained or evaluated with ``loss``;
        ``is_dict``: it came in a dict of datasets) and return it prepared for :meth:`collate`: an object
        with ``len()`` (its number of rows), otherwise opaque to the loop."""

    def stream_source(self, dataset, name: str, loss, *, is_dict: bool):
        """An ``IterableDataset`` as a source with ``.dataset`` (the stream) and ``.prepare(examples,
        first_row)`` -> a prepared object of one step's examples (as :meth:`prepare` returns)."""
        raise ValueError(f"{type(self).__name__} does not train on streams (IterableDataset)")

    def longest(self, prepared, rows) -> int:
        """Length of the longest of ``rows`` (the length a batch of them pads to, before bucketing);
        rows without a length (fixed-size features): 1."""
        return 1

    def max_length(self) -> int:
        """The longest row the model takes (the last length bucket)."""
        return 1

    def check_lengths(self, buckets: tuple[int, ...]) -> tuple[int, ...]:
        """The length buckets the loop will pad to, checked (or cut) against the model."""
        return buckets

    @abc.abstractmethod
    def collate(self, prepared, rows, batch_size: int, length: int) -> dict:
        """``rows`` of ``prepared`` -> a numpy batch of ``batch_size`` rows (the rows past ``len(rows)``
        padding) of ``length``: a pytree whose leaves have the batch on axis 0."""

    def collate_local(self, prepared, rows, slots, batch_size: int, length: int) -> dict:
        """Multi-process runs: the batch slots ``slots`` (ascending positions of the padded global batch of
        ``batch_size``, those this process's devices hold) of the ``rows`` batch, collated as :meth:`collate`
        would collate them. A family whose rows depend on the whole batch (e.g. in-batch candidates formed on
        the host) overrides this."""
        return self.collate(prepared, local_rows(rows, slots), len(slots), length)

    def sampler_inputs(self, prepared, kind) -> dict:
        """Keyword arguments a built-in batch sampler of ``kind`` needs from the data (``rows``: per row a
        hashable of its values, for NO_DUPLICATES; ``labels``, for GROUP_BY_LABEL)."""
        return {}

    def count_tokens(self, batch) -> int:
        """Tokens (or the family's unit) in a collated batch, for ``tokens_per_second``."""
        return 0

    def batch_report(self, prepared, rows) -> dict:
        """The rows of a batch whose loss was not finite, as plain JSON (nonfinite_policy="stop")."""
        return {"rows": [int(r) for r in rows]}

    # -- sequence packing ----------------------------------------------------------------------
    def packing_obstacles(self, losses: dict) -> list[str]:
        """Why the batches cannot be sequence-packed (empty: they can)."""
        return [f"{type(self).__name__} does not pack sequences"]

    def packed_shape(self, datasets: list, steps: list, global_batch: int, num_shards: int,
                     k: int) -> tuple[int, tuple[int, ...]]:
        """``(row_length, rows-per-shard buckets)`` fitted to ``steps`` (``[(prepared, micro-batch rows)]``
        of the first epoch) of the training ``datasets``; ``k`` buckets."""
        raise NotImplementedError

    def collate_packed(self, prepared, micro_batches, batch_size: int, num_shards: int, local_shards,
                       row_length: int, row_buckets) -> list[dict]:
        """One packed batch per micro-batch of rows: the data shards ``local_shards`` (this process's)."""
        raise NotImplementedError

    # -- the model -----------------------------------------------------------------------------
    def initial_model_state(self) -> dict:
        """The model's non-parameter training state (a pytree of arrays; ``{}``: none), read by objectives that
        ``uses_model_state``. Called when the train state is built, after :meth:`check_losses`."""
        return {}

    def set_model_state(self, model_state: dict) -> None:
        """Write a trained ``model_state`` (host numpy arrays, shaped as :meth:`initial_model_state`) back to the
        model, so that its export and evaluators see it."""
        return None

    def compute_model(self):
        """What the compiled steps run (e.g. a bfloat16 view of the model for ``bf16=True``)."""
        return self.model

    def param_aliases(self, name: str) -> list[str]:
        """Other names of the parameter exported as ``name`` (``training/optim.py`` ``param_names``, e.g.
        ``model.0.query_0_SparseStaticEmbedding.weight``) that a ``learning_rate_mapping`` pattern may match:
        the reference's torch path, where a Router's sub-module ``{route}_{pos}_{Class}`` is
        ``sub_modules.{route}.{pos}`` (``model.0.sub_modules.query.0.weight``), and the path with module class
        names (``model.Router.SparseStaticEmbedding.weight``), so patterns such as ``SparseStaticEmbedding``
        or ``MLMTransformer`` select a module by its type."""
        parts = name.split(".")
        torch_path = ".".join(_ROUTER_ID.sub(r"sub_modules.\1.\2", p) for p in parts)
        classes = list(parts)
        modules = getattr(self.model, "modules", None) or []
        if len(parts) > 1 and parts[0] == "model" and parts[1].isdigit() and int(parts[1]) < len(modules):
            classes[1] = type(modules[int(parts[1])]).__name__
        classes = [_ROUTER_ID.sub(r"\3", p) for p in classes]
        return [a for a in dict.fromkeys([torch_path, ".".join(classes)]) if a != name]

    def frozen_keys(self) -> frozenset:
        """Top-level keys of ``model.params`` that get no optimizer state and no update (e.g. a LoRA base)."""
        return frozenset()

    def parameter_counts(self) -> tuple[int, int] | None:
        """``(trainable, all)`` parameters, for the start-of-training log line (None: not logged)."""
        return None

    def num_trainable_parameters(self) -> int:
        """Parameters the optimizer updates."""
        return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self.model.params)))

    @abc.abstractmethod
    def save(self, path: str, *, create_model_card: bool = True) -> None:
        """Export the model (with its current ``params``) to ``path`` in the family's format."""

    def callbacks(self, trainer) -> list:
        """Callbacks the family adds to every trainer (after the loggers, before the user's)."""
        return []
