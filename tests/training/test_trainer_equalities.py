"""Trainer-level equalities that see the gradient's SCALE: 1 device == 8 devices, FSDP == data parallel,
packed == padded, and gradient accumulation 2 x 8 rows == one step of 16 rows.

Comparing parameters after a few AdamW steps is nearly blind to a constant gradient factor: clipping
(max_grad_norm=1; these gradients' norms are 2-3) takes the factor out before Adam sees it, and Adam
divides the first moment by the root of the second, so even unclipped the x8 and /4 mutations below move
the weights by only 2.3e-5 and 2.1e-5 (the parameter tolerance is 1e-5); clipped, the x8 one not at all.
Each pair of runs is therefore compared on what is linear (or quadratic) in the gradient, where those
mutations show as relative differences of 7 and 0.75, as well as on the parameters:

* the logged loss and grad_norm of every step (``logging_steps=1``);
* the first step's gradient: Adam's first moment after step 1 is exactly ``(1 - beta1) * grad``
  (``mu_0 = 0``; gradient clipping is off, ``max_grad_norm=0``, so nothing rescales it);
* Adam's ``mu`` and ``nu`` after the last step, per parameter, with a relative tolerance.

Every equality has a mutation control that must fail the same comparison: a real run with the loss
scaled by the shard count (the sum-vs-mean bug), a real FSDP run whose gradient alone is divided by the
fsdp size (the loss logs stay right), and the accumulation and packing records rescaled after the fact.
All runs are module-scoped and each compiles its step once (one length / rows bucket).
"""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest
from datasets import Dataset

import stcore_jax.sentence_transformer.task as step_module
import tiny_models
from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.losses import CosineSimilarityLoss, MultipleNegativesRankingLoss
from stcore_jax.training import TrainerCallback

STEPS = 3
FSDP = {"data": 2, "fsdp": 4}
FSDP_MIN_SIZE = 1024  # the 32x32 and 32x64 kernels are sharded too, not only the word embeddings
BETA1 = 0.9  # SentenceTransformerTrainingArguments.adam_beta1's default


def _args(out, **kw):
    base = dict(output_dir=str(out), num_train_epochs=1, max_steps=STEPS, per_device_train_batch_size=2,
                learning_rate=1e-4, logging_steps=1, max_grad_norm=0.0, length_buckets=1, save_strategy="no",
                disable_tqdm=True, save_final_model=False, fsdp_min_size=FSDP_MIN_SIZE)
    base.update(kw)
    return SentenceTransformerTrainingArguments(**base)


def _named_leaves(tree, field=None):
    """``{path string: host array}`` of ``tree``'s leaves; with ``field`` (``"mu"``/``"nu"``) only the leaves
    under an attribute of that name (Adam's moments inside the optax chain's state)."""
    out = {}
    for path, x in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
        names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        if field is None or field in names:
            out["/".join(names)] = np.asarray(x, np.float64)
    assert out, field
    return out


class _FirstStepMoments(TrainerCallback):
    """After step 1, copies Adam's ``mu`` (= ``(1 - beta1) * grad``): the next step donates the buffers."""

    def __init__(self):
        self.trainer, self.mu = None, None

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 1:
            self.mu = _named_leaves(self.trainer._train_state["opt_state"], "mu")


class Record:
    """What one run leaves: per-step logged loss and grad_norm, the first step's gradient, the final Adam
    moments and parameters."""

    def __init__(self, trainer, first):
        logs = [h for h in trainer.state.log_history if "loss" in h]
        assert [h["step"] for h in logs] == list(range(1, STEPS + 1))
        self.loss = np.array([h["loss"] for h in logs])
        self.grad_norm = np.array([h["grad_norm"] for h in logs])
        self.grad1 = {k: v / (1 - BETA1) for k, v in first.mu.items()}
        opt = trainer._train_state["opt_state"]
        self.mu, self.nu = _named_leaves(opt, "mu"), _named_leaves(opt, "nu")
        self.params = _named_leaves(trainer._train_state["trainable"]["model"])
        self.trainer = trainer

    def scaled(self, factor, loss_factor=1.0):
        """This record as a run whose gradients were ``factor`` times larger (and its logged losses
        ``loss_factor`` times) would have left it: the numeric mutation control."""
        out = object.__new__(Record)
        out.__dict__.update(self.__dict__)
        out.loss = self.loss * loss_factor
        out.grad_norm = self.grad_norm * factor
        out.grad1 = {k: v * factor for k, v in self.grad1.items()}
        out.mu = {k: v * factor for k, v in self.mu.items()}
        out.nu = {k: v * factor**2 for k, v in self.nu.items()}
        return out


def _rel_tree(a: dict, b: dict) -> float:
    """Largest per-leaf ``||a - b|| / max(||b||, 1e-3 ||b_tree||)``. The floor: a leaf carrying under a
    thousandth of the tree's norm is compared at that level, not at its own. The attention key biases are
    such leaves: their exact gradient is 0 (a key bias adds ``q . b`` to every logit of a query, which the
    softmax ignores), so they hold only float noise (~1e-10 against a tree norm ~0.2), whose relative
    difference between layouts is of order 1."""
    assert a.keys() == b.keys()
    floor = 1e-3 * np.sqrt(sum(np.sum(v**2) for v in b.values()))
    return max(float(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(b[k]), floor)) for k in b)


def discrepancies(a: Record, b: Record) -> dict:
    """How far run ``a`` is from run ``b``: relative for everything that scales with the gradient."""
    return {
        "loss": float(np.max(np.abs(a.loss - b.loss) / np.abs(b.loss))),
        "grad_norm": float(np.max(np.abs(a.grad_norm - b.grad_norm) / b.grad_norm)),
        "grad1": _rel_tree(a.grad1, b.grad1),
        "mu": _rel_tree(a.mu, b.mu),
        "nu": _rel_tree(a.nu, b.nu),
        "params": max(float(np.abs(a.params[k] - b.params[k]).max()) for k in b.params),  # absolute
    }


# Measured on 8 simulated CPU devices (largest over the four equalities below), tolerances ~2-3x that:
# loss 3.7e-7 (1 vs 8), grad_norm 1.4e-6 (accumulation), grad1 2.9e-6 (1 vs 8), mu 1.8e-6 and nu 4.2e-6
# (accumulation), params 4.3e-6 absolute (packed vs padded; 1e-5 is the tolerance the parameter-only tests had).
# The relative ones are what a scale bug moves by O(1): x8 -> 7, /4 -> 0.75.
TOL = {"loss": 1e-6, "grad_norm": 3e-6, "grad1": 6e-6, "mu": 4e-6, "nu": 1e-5, "params": 1e-5}


def assert_same_training(a: Record, b: Record, tol: dict = TOL):
    """Runs ``a`` and ``b`` took the same steps, up to float reduction order; returns the discrepancies."""
    got = discrepancies(a, b)
    over = {k: (v, tol[k]) for k, v in got.items() if not v <= tol[k]}
    assert not over, f"runs differ (measured, tolerance): {over}; all: {got}"
    return got


@contextlib.contextmanager
def _scaled_step(loss_factor=1.0, grad_factor=1.0):
    """A mutated train step: ``compute_loss`` (looked up by the step at trace time) returns its value times
    ``loss_factor`` with the gradient times ``loss_factor * grad_factor``."""
    real = step_module.compute_loss

    def mutated(*a, **kw):
        out = real(*a, **kw) * loss_factor
        return out * grad_factor + jax.lax.stop_gradient(out * (1 - grad_factor))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(step_module, "compute_loss", mutated)
        yield


@pytest.fixture(scope="module")
def no_dropout_dir(tiny_bert_dir, tmp_path_factory):
    """The tiny BERT without dropout: accumulation draws other dropout masks than one big step (per
    micro-batch keys), so only a deterministic model makes 2 x 8 rows equal 16 rows."""
    return tiny_models.copy_without_dropout(tiny_bert_dir, tmp_path_factory.mktemp("tiny_bert_no_dropout") / "st")


@pytest.fixture(scope="module")
def runs(tiny_bert_dir, no_dropout_dir, stsb_train, tmp_path_factory):
    s1, s2, sc = stsb_train
    mnrl_data = Dataset.from_dict({"anchor": s1[:128], "positive": s2[:128]})
    sts_data = Dataset.from_dict({"sentence1": s1[:128], "sentence2": s2[:128], "score": [x / 5 for x in sc[:128]]})
    root = tmp_path_factory.mktemp("equalities")
    out = {}

    def run(name, model_dir=tiny_bert_dir, data=mnrl_data, loss=None, **kw):
        model = SentenceTransformer(model_dir)
        first = _FirstStepMoments()
        loss = loss(model) if loss else MultipleNegativesRankingLoss(model, gather_across_devices=True)
        trainer = SentenceTransformerTrainer(model=model, args=_args(root / name, **kw), train_dataset=data,
                                             loss=loss, callbacks=[first])
        first.trainer = trainer
        trainer.train()
        assert trainer.compile_count[0] == 1
        out[name] = Record(trainer, first)
        return out[name]

    # MNRL scoring every anchor against the whole global batch of 16: the same loss on every layout.
    run("one", mesh_shape={"data": 1}, per_device_train_batch_size=16)
    data8 = run("data", mesh_shape={"data": 8})
    run("fsdp", mesh_shape=FSDP)
    run("padded", mesh_shape={"data": 8}, sequence_packing=False, length_buckets=(data8.trainer.pack_length,))
    # Mutation controls (real runs): the loss summed over the 8 shards instead of averaged, and an FSDP
    # gradient divided by the fsdp size once more (its loss values untouched).
    with _scaled_step(loss_factor=8.0):
        run("data_x8", mesh_shape={"data": 8})
    with _scaled_step(grad_factor=1 / FSDP["fsdp"]):
        run("fsdp_grad_div4", mesh_shape=FSDP)
    # Gradient accumulation: a per-row loss (no in-batch negatives), so 2 micro-batches of 8 rows average
    # to exactly the loss of their 16 rows.
    cos = dict(model_dir=no_dropout_dir, data=sts_data, loss=CosineSimilarityLoss, mesh_shape={"data": 8})
    run("accum", per_device_train_batch_size=1, gradient_accumulation_steps=2, **cos)
    run("big", per_device_train_batch_size=2, **cos)
    out["initial"] = _named_leaves(SentenceTransformer(tiny_bert_dir).params)
    return out


def test_one_device_equals_eight_devices(runs):
    one, eight = runs["one"].trainer, runs["data"].trainer
    assert (one.data_parallel, eight.data_parallel, one.global_batch, eight.global_batch) == (1, 8, 16, 16)
    moved = max(np.abs(runs["one"].params[k] - runs["initial"][k]).max() for k in runs["initial"])
    assert moved > 1e-4  # training changed the parameters (2e-4), so comparing them means something
    assert_same_training(runs["data"], runs["one"])


def test_fsdp_equals_data_parallel(runs):
    """{"data": 2, "fsdp": 4}: weights and Adam moments sharded 4 ways (gathered for the forward,
    gradients reduce-scattered) give the replicated data-parallel run's losses, gradients and moments."""
    state = runs["fsdp"].trainer._train_state
    kernel = state["trainable"]["model"]["0"]["encoder"]["layer"][0]["intermediate"]["dense"]["kernel"]  # [32, 64]
    assert "fsdp" in kernel.sharding.spec and not kernel.sharding.is_fully_replicated
    assert_same_training(runs["fsdp"], runs["data"])


def test_packed_equals_padded(runs):
    """Several sentences per encoder row (8 shards, in-batch negatives over all of them) give the padded
    run's losses, gradients and moments; the packed run compiles once per rows bucket it uses."""
    packed, padded = runs["data"].trainer, runs["padded"].trainer
    assert packed.packing and not padded.packing
    used = {packed._collate_packed(packed.train_prepared[n], [r], packed.global_batch)["packed"]["packed_input_ids"]
            .shape[1] for n, r in packed.epoch_plan(0)[:STEPS]}
    assert packed.compile_count[0] == len(used)
    assert_same_training(runs["data"], runs["padded"])


def test_gradient_accumulation_equals_one_big_step(runs):
    """2 micro-batches of 8 rows == one batch of their 16 rows, for a per-row loss (CosineSimilarityLoss)
    and no dropout: the reference's accumulation averages the micro-batch losses (and so gradients)."""
    accum, big = runs["accum"].trainer, runs["big"].trainer
    assert (accum.global_batch, accum.args.gradient_accumulation_steps, big.global_batch) == (8, 2, 16)
    assert_same_training(runs["accum"], runs["big"])


# name -> (mutated record, reference record, the discrepancies the mutation must produce)
CONTROLS = {
    # real run: the loss summed over the 8 data shards instead of averaged (loss and gradient x8)
    "sum_over_shards": (lambda r: r["data_x8"], "one", {"loss": 7, "grad_norm": 7, "grad1": 7, "mu": 7, "nu": 63}),
    # real run: the FSDP gradient divided by the fsdp size once more; the logged loss is still right
    "fsdp_double_division": (lambda r: r["fsdp_grad_div4"], "data",
                             {"loss": 0, "grad_norm": 0.75, "grad1": 0.75, "mu": 0.75, "nu": 1 - 1 / 16}),
    # numeric: micro-batch losses summed rather than averaged (x2)
    "accumulation_not_averaged": (lambda r: r["accum"].scaled(2.0, loss_factor=2.0), "big",
                                  {"loss": 1, "grad_norm": 1, "grad1": 1, "mu": 1, "nu": 3}),
    # numeric: a packed gradient divided by the 8 shards once more
    "packed_divided_by_shards": (lambda r: r["data"].scaled(1 / 8), "padded",
                                 {"grad_norm": 7 / 8, "grad1": 7 / 8, "mu": 7 / 8, "nu": 63 / 64}),
}


@pytest.mark.parametrize("name", list(CONTROLS))
def test_mutation_controls_fail(runs, name):
    """Each equality's comparison fails on a scale bug, by the amount the bug implies (1 - 1/8 = 0.875 for
    a 1/8 gradient, 63 for the x8 gradient's second moment, ...; 0, i.e. within tolerance, for the loss
    logs of a gradient-only bug, which only the gradient measures catch)."""
    mutated, reference, expected = CONTROLS[name]
    mutated = mutated(runs)
    with pytest.raises(AssertionError, match="runs differ"):
        assert_same_training(mutated, runs[reference])
    got = discrepancies(mutated, runs[reference])
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-3, abs=TOL[key]), (key, got)
