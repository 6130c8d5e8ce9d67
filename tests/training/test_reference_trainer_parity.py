"""The training loop against sentence-transformers' own trainer: same model, batches and recipe.

Dropout is switched off and both trainers take the same batches, so the two runs are deterministic and
must agree step by step. Three things are compared:

- the loss of every step (``logging_steps=1``): the loss scale, the mean over accumulated
  micro-batches, which batch each step saw (sampler, round-robin order) and what the model was fed
  (prompts);
- the pre-clipping gradient norm of every step: the gradient itself, including its scale;
- every parameter after the last step: AdamW with decoupled weight decay (bias/LayerNorm excluded),
  clipping, the warmup + linear schedule.

Parameters alone cannot see the loss scale: every step's gradient norm here (0.8 to 3.5) is above
``max_grad_norm`` (0.5), so clipping, then Adam, divide any constant factor out of the update (see
``test_loss_scale_control``). The logged losses and gradient norms are what catch it.

Batches: the reference's order everywhere. ``in_order`` (file order) for most cases; for NO_DUPLICATES both
trainers use their own sampler, ours drawing the reference's shuffle (its RNG stream is NumPy's, the
reference's torch's: the same seed gives other batches), so what is compared is the greedy batching and
the training on it. The sampler's own rules are tested in test_samplers.py.

The reference's losses are captured unrounded by a forward hook on its loss modules (transformers 5.24
logs the step loss unrounded, but sentence-transformers rounds logged loss components to 4 digits,
and a logging window would average steps; the hook sees each micro-batch's value).
"""

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from datasets import Dataset
from sentence_transformers import (
    SentenceTransformer as RefModel,
    SentenceTransformerTrainer as RefTrainer,
    SentenceTransformerTrainingArguments as RefArgs,
    losses as ref_losses,
)
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler as RefNoDuplicates
from torch.utils.data import BatchSampler, SequentialSampler

import stcore_jax.losses
import tiny_models
from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.losses import CoSENTLoss, MultipleNegativesRankingLoss
from stcore_jax.sentence_transformer.losses import adaptive_layer
from stcore_jax.training import samplers


def in_order(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
    return BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last)


RECIPE = dict(max_steps=6, per_device_train_batch_size=8, learning_rate=5e-4, warmup_ratio=0.34, logging_steps=1,
              lr_scheduler_type="linear", weight_decay=0.5, max_grad_norm=0.5, adam_epsilon=1e-6, seed=12,
              save_strategy="no", batch_sampler=in_order)
# Ours only: one fitted length bucket, so each run compiles its step once (4 buckets: 4x the compile time
# for the same numbers). Sequence packing stays at its default (on for these losses).
OURS = dict(length_buckets=1)
PROMPTS = {"sentence1": "query: ", "sentence2": "passage: "}


@dataclass(frozen=True)
class Case:
    """One training setup, run by both trainers. ``data``: "sts" (sentence1, sentence2, score), "pairs" (no
    score), "duplicates" (repeated anchors) or "two" (a dict of both); ``args``: overrides of RECIPE for both
    (enums by value: both argument classes take the strings); ``model``: "include_prompt" or
    "exclude_prompt", the pooling of the model."""

    data: str
    loss: str  # "cosent" | "mnrl" | "both" (a dict: sts -> CoSENT, pairs -> MNRL)
    args: tuple = ()
    model: str = "include_prompt"
    wrap: str | None = None  # a per-layer modifier around the loss (WRAPS)

    @property
    def accum(self):
        return dict(self.args).get("gradient_accumulation_steps", 1)


CASES = {
    "cosent": Case("sts", "cosent"),
    "mnrl": Case("pairs", "mnrl"),
    "accumulation": Case("pairs", "mnrl", (("gradient_accumulation_steps", 2), ("max_steps", 4))),
    "no_duplicates": Case("duplicates", "mnrl", (("batch_sampler", "no_duplicates"),)),
    "round_robin": Case("two", "both", (("multi_dataset_batch_sampler", "round_robin"),)),
    "prompts": Case("pairs", "mnrl", (("prompts", PROMPTS),), model="exclude_prompt"),
    # Per-layer losses (AdaptiveLayerLoss, Matryoshka2dLoss) around the case's loss: see WRAPS.
    "adaptive_layer": Case("pairs", "mnrl", wrap="adaptive_layer"),
    "matryoshka_2d": Case("sts", "cosent", wrap="matryoshka_2d"),
}

# The per-layer modifiers with every prior layer (n_layers_per_step=-1) and every dimension (n_dims_per_step=-1):
# the reference draws layers and dimensions with Python's random, so this is what makes it deterministic. The
# tiny BERT has 2 layers: the final one and the prior hidden states 0 (embedding output) and 1, each with the KL
# term to the final layer (kl_temperature 0.3). Non-default weights, so that each weight is seen.
WRAPS = {
    "adaptive_layer": lambda lib, model, inner: lib.AdaptiveLayerLoss(
        model, inner, n_layers_per_step=-1, last_layer_weight=0.8, prior_layers_weight=1.5, kl_div_weight=2.0,
        layer_weighting="log"),
    "matryoshka_2d": lambda lib, model, inner: lib.Matryoshka2dLoss(
        model, inner, [8, 32, 16], matryoshka_weights=[0.5, 1.0, 0.7], n_layers_per_step=-1, n_dims_per_step=-1),
}


@dataclass
class Run:
    params: dict  # HF state-dict name -> array
    losses: np.ndarray  # [steps] the loss of each optimizer step (mean over its micro-batches)
    grad_norms: np.ndarray  # [steps] before clipping
    learning_rates: np.ndarray  # [steps] the rate each step used


def _dataset(kind, stsb_train):
    s1, s2, sc = stsb_train
    sts = Dataset.from_dict({"sentence1": s1[:128], "sentence2": s2[:128], "score": [x / 5 for x in sc[:128]]})
    if kind == "sts":
        return sts
    if kind == "pairs":
        return sts.remove_columns("score")
    if kind == "duplicates":  # 24 anchors, each twice: a random batch of 8 of these 48 rows often repeats one
        return Dataset.from_dict({"sentence1": s1[:24] * 2, "sentence2": s2[:48]})
    return {"sts": sts.select(range(32)), "pairs": sts.select(range(64, 96)).remove_columns("score")}


@pytest.fixture(scope="module")
def model_dirs(tiny_bert_dir, tmp_path_factory):
    """The tiny BERT with dropout off, pooling with and without the prompt tokens."""
    out = {}
    for name, include in (("include_prompt", True), ("exclude_prompt", False)):
        path = str(tmp_path_factory.mktemp("nodrop") / "st")
        out[name] = tiny_models.copy_without_dropout(tiny_bert_dir, path, include_prompt=include)
    return out


@pytest.fixture(scope="module")
def reference(model_dirs, stsb_train, tmp_path_factory):
    """``reference(case_name) -> Run`` of sentence-transformers' trainer, each case trained once per module."""
    runs = {}

    def get(name):
        if name not in runs:
            case = CASES[name]
            runs[name] = _train_reference(case, model_dirs[case.model], _dataset(case.data, stsb_train),
                                          tmp_path_factory.mktemp(f"ref_{name}"))
        return runs[name]

    return get


def _losses(case, model, cosent, mnrl, lib=None):
    if case.loss == "both":
        return {"sts": cosent(model), "pairs": mnrl(model)}
    loss = (cosent if case.loss == "cosent" else mnrl)(model)
    return loss if case.wrap is None else WRAPS[case.wrap](lib, model, loss)


def _train_reference(case, model_dir, data, out):
    torch.manual_seed(0)
    model = RefModel(model_dir, device="cpu")
    loss = _losses(case, model, ref_losses.CoSENTLoss, ref_losses.MultipleNegativesRankingLoss, ref_losses)
    captured = []  # every micro-batch's loss, in the order they were computed
    for module in (loss.values() if isinstance(loss, dict) else [loss]):
        module.register_forward_hook(lambda mod, inputs, output: captured.append(float(output.detach())))
    args = RefArgs(output_dir=str(out), report_to="none", use_cpu=True, disable_tqdm=True,
                   **{**RECIPE, **dict(case.args)})
    trainer = RefTrainer(model=model, args=args, train_dataset=data, loss=loss)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == list(range(1, args.max_steps + 1))
    assert len(captured) == args.max_steps * case.accum, "the hook saw forward calls other than the training steps"
    return Run(params={k: v.detach().numpy() for k, v in model[0].auto_model.state_dict().items()},
               losses=np.asarray(captured).reshape(args.max_steps, case.accum).mean(1),
               grad_norms=np.array([h["grad_norm"] for h in logs]),
               learning_rates=np.array([h["learning_rate"] for h in logs]))


def _train_ours(case, model_dir, data, out, scale=1.0, **override):
    """Our trainer on ``case``; ``scale`` multiplies the loss (the mutation control)."""
    model = SentenceTransformer(model_dir)
    cosent, mnrl = (CoSENTLoss, MultipleNegativesRankingLoss) if scale == 1.0 else (
        _scaled(CoSENTLoss, scale), _scaled(MultipleNegativesRankingLoss, scale))
    loss = _losses(case, model, cosent, mnrl, stcore_jax.losses)
    args = SentenceTransformerTrainingArguments(output_dir=str(out), disable_tqdm=True, save_final_model=False,
                                                mesh_shape={"data": 1}, **{**RECIPE, **OURS, **dict(case.args),
                                                                           **override})
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    before = model.input_module.hf_state_dict()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logs] == list(range(1, args.max_steps + 1))
    run = Run(params=model.input_module.hf_state_dict(), losses=np.array([h["loss"] for h in logs]),
              grad_norms=np.array([h["grad_norm"] for h in logs]),
              learning_rates=np.array([h["learning_rate"] for h in logs]))
    return run, before, trainer


def _scaled(cls, factor):
    class Scaled(cls):
        def compute_loss_from_embeddings(self, *args, **kwargs):
            return factor * super().compute_loss_from_embeddings(*args, **kwargs)

    return Scaled


def _differences(ours: Run, ref: Run) -> dict:
    """Max |ours - reference| of each compared quantity: parameters absolute, the per-step series relative to
    the run's largest reference value (the first step's learning rate is 0)."""
    return {"params": max(float(np.abs(ours.params[k] - ref.params[k]).max()) for k in ref.params),
            **{k: float((np.abs(getattr(ours, k) - getattr(ref, k)) / np.abs(getattr(ref, k)).max()).max())
               for k in ("losses", "grad_norms", "learning_rates")}}


# Measured (CPU, float32, "highest" matmul precision), max over the six cases: parameters 3.7e-7 (1.8e-6 with
# CoSENT, alone or inside Matryoshka2dLoss: its scale of 20 amplifies float32 noise), losses 8.9e-7, gradient norms 1.4e-6, learning rates
# 5.1e-8 (our schedule is float32). The controls land far outside: weight decay off, parameters 1.9e-4 (38x the
# CoSENT tolerance); loss halved, losses and gradient norms 0.5 (1e5x).
TOL = {"params": 1e-6, "losses": 3e-6, "grad_norms": 5e-6, "learning_rates": 5e-7}
COSENT_PARAMS_TOL = 5e-6


def _torch_permutation(seed, epoch):
    """The reference NoDuplicatesBatchSampler's shuffle (torch.randperm, generator seeded ``seed + epoch``) in
    place of ours (NumPy, seeded ``[seed, epoch]``): the two RNG streams differ by design, and parity needs
    the same batches. What this keeps from ours is the greedy no-duplicates batching over that order."""

    class Rng:  # one generator per epoch, as the reference's: a resampling pass draws the next permutation
        generator = torch.Generator().manual_seed(seed + epoch)

        def permutation(self, n):
            return torch.randperm(n, generator=self.generator, dtype=torch.int32).numpy()

    return Rng()


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference_trainer(model_dirs, stsb_train, reference, tmp_path, monkeypatch, name):
    case = CASES[name]
    data = _dataset(case.data, stsb_train)
    if name == "no_duplicates":
        monkeypatch.setattr(samplers, "_rng", _torch_permutation)
    ref = reference(name)
    ours, before, trainer = _train_ours(case, model_dirs[case.model], data, tmp_path)
    if name == "no_duplicates":  # the batches are the reference sampler's, and they differ from plain shuffling
        expected = list(RefNoDuplicates(data, 8, False, valid_label_columns=["label", "score"],
                                        generator=torch.Generator(), seed=RECIPE["seed"]))
        plan = [rows for _, rows in trainer.epoch_plan(0)]
        assert plan == expected
        anchors = data["sentence1"]
        assert all(len({anchors[i] for i in rows}) == len(rows) for rows in plan)
        shuffled = _torch_permutation(RECIPE["seed"], 0).permutation(len(data)).tolist()
        assert plan[:6] != [shuffled[i : i + 8] for i in range(0, 48, 8)], "no duplicate was deferred: vacuous"

    moved = max(float(np.abs(ours.params[k] - before[k]).max()) for k in ref.params)
    assert moved > 1e-3, "training did not move the parameters; the comparison would be vacuous"
    diff = _differences(ours, ref)
    print(f"{name}: {diff}; reference grad norms {ref.grad_norms.min():.3f} to {ref.grad_norms.max():.3f}")
    # Adam turns tiny gradient differences (float32 summation order) into small steps on near-zero
    # gradient entries (adam_epsilon 1e-6 bounds them); a recipe difference moves parameters by much more.
    # CoSENT's scale of 20 amplifies float32 noise in every case that trains with it (matryoshka_2d wraps it: its
    # parameters reached 1.2e-6 on the 2-core CI machine, 10 float32 ulps of a LayerNorm weight near 1).
    tol = {**TOL, "params": COSENT_PARAMS_TOL} if case.loss == "cosent" else TOL
    assert all(diff[k] < tol[k] for k in tol), f"max |ours - sentence-transformers|: {diff} (tolerances {tol})"


def test_weight_decay_control(model_dirs, stsb_train, reference, tmp_path):
    """The parameter comparison sees a recipe difference the losses hardly show in 6 steps (weight decay off:
    losses 3.4e-6 apart, parameters 1.9e-4)."""
    ours, _, _ = _train_ours(CASES["cosent"], model_dirs["include_prompt"], _dataset("sts", stsb_train), tmp_path,
                             weight_decay=0.0)
    diff = _differences(ours, reference("cosent"))
    print(f"weight decay 0: {diff}")
    assert diff["params"] > 10 * COSENT_PARAMS_TOL


def test_loss_scale_control(model_dirs, stsb_train, reference, tmp_path):
    """Halving our loss (e.g. dividing by the accumulation steps twice) must fail the comparison, though the
    parameters cannot show it (clipping and Adam divide the factor out)."""
    case = CASES["accumulation"]
    ours, _, _ = _train_ours(case, model_dirs[case.model], _dataset(case.data, stsb_train), tmp_path, scale=0.5)
    diff = _differences(ours, reference("accumulation"))
    print(f"loss x 0.5: {diff}")
    assert diff["losses"] > 1000 * TOL["losses"] and diff["grad_norms"] > 1000 * TOL["grad_norms"]


def test_adaptive_layer_kl_term_control(model_dirs, stsb_train, reference, tmp_path, monkeypatch):
    """AdaptiveLayerLoss without its KL term (each prior layer's KL to the final layer) must fail the comparison:
    the per-layer case sees every part of the per-layer loss, not only the wrapped loss on each layer."""
    monkeypatch.setattr(adaptive_layer, "_kl_to_teacher", lambda teacher, columns, temperature, mask: 0.0)
    case = CASES["adaptive_layer"]
    ours, _, _ = _train_ours(case, model_dirs[case.model], _dataset(case.data, stsb_train), tmp_path)
    diff = _differences(ours, reference("adaptive_layer"))
    print(f"adaptive_layer without the KL term: {diff}")
    assert diff["losses"] > 100 * TOL["losses"] and diff["params"] > 100 * TOL["params"]
