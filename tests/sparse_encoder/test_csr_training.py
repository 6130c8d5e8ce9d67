"""CSR training (a dense encoder + SparseAutoEncoder, CSRLoss) in the SparseEncoderTrainer against sentence-transformers
6.2's trainer.

A tiny CSR model (2-layer BERT, hidden 32, dropout 0; mean Pooling; SparseAutoEncoder 32 -> 64 latents, k=4, k_aux=8,
dead_threshold=2 with a perturbed dead-latent state, so that the auxiliary dead-latent loss is live from the first
step) is built and saved by the reference; both trainers train it on the same in-order batches: 28 rows of 2 columns
in batches of 8 (the last batch has 4 rows: ours pads it and masks the padding rows), evaluating the eval loss at
steps 2 and 4. Compared: every training step's loss components (captured unrounded by a forward hook on the
reference's loss), the eval components, every parameter and the autoencoder's ``stats_last_nonzero`` after
training (the reference reads our export back), and embeddings of the export. Also: gradient accumulation against
the reference; exact resume from a checkpoint; 8 data-parallel devices against 1.

Controls (each must move a compared quantity past its tolerance): the columns merged into one forward (the state
advances once for both), the padding rows left in the state update, the state not threaded through the accumulation
scan, and the eval loss computed with the state advancing.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from datasets import Dataset
from sentence_transformers import SparseEncoder as RefSparseEncoder
from sentence_transformers.base.modules import Transformer as RefTransformer
from sentence_transformers.sentence_transformer.modules import Pooling as RefPooling
from sentence_transformers.sparse_encoder import (
    SparseEncoderTrainer as RefTrainer,
    SparseEncoderTrainingArguments as RefArgs,
    losses as ref_losses,
)
from sentence_transformers.sparse_encoder.modules import SparseAutoEncoder as RefSparseAutoEncoder
from torch.utils.data import BatchSampler, SequentialSampler

import tiny_models
from stcore_jax import SparseEncoder, SparseEncoderTrainer, SparseEncoderTrainingArguments
from stcore_jax.sparse_encoder import losses as our_losses, task as task_module
from stcore_jax.training import step as step_module
from stcore_jax.util import read_sts

SAE = dict(input_dim=32, hidden_dim=64, k=4, k_aux=8, dead_threshold=2)
COMPONENTS = ("reconstruction_loss_k", "reconstruction_loss_4k", "reconstruction_loss_aux", "base_loss")
TOL = 1e-5


def in_order(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
    return BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last)


RECIPE = dict(per_device_train_batch_size=8, per_device_eval_batch_size=8, num_train_epochs=1, learning_rate=5e-4,
              warmup_ratio=0.25, lr_scheduler_type="linear", weight_decay=0.01, max_grad_norm=1.0, logging_steps=1,
              seed=3, eval_strategy="steps", eval_steps=2, batch_sampler=in_order)
OURS = dict(length_buckets=1, mesh_shape={"data": 1}, disable_tqdm=True, save_final_model=False)


@pytest.fixture(scope="module")
def csr_dir(tmp_path_factory, minilm_path, stsb_dir):
    """The reference's CSR model (BERT hidden 32 + mean Pooling + SparseAutoEncoder), saved, dropout off."""
    s1, s2, _ = read_sts(stsb_dir / "sts-train.csv")
    root = tmp_path_factory.mktemp("csr_train")
    hf = tiny_models.build_hf("bert", str(root / "hf"), str(minilm_path), s1[:500] + s2[:500])
    transformer = RefTransformer(hf, max_seq_length=32)
    sae = RefSparseAutoEncoder(**SAE)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        sae.stats_last_nonzero.copy_(torch.randint(0, 5, (SAE["hidden_dim"],), generator=torch.Generator().manual_seed(
            8)))
    model = RefSparseEncoder(modules=[transformer, RefPooling(32, "mean"), sae], device="cpu")
    model.save(str(root / "with_dropout"))
    return tiny_models.copy_without_dropout(str(root / "with_dropout"), str(root / "csr"))


@pytest.fixture(scope="module")
def data(stsb_dir):
    s1, s2, sc = read_sts(stsb_dir / "sts-train.csv")
    pairs = [(a, b) for a, b, s in zip(s1, s2, sc) if s >= 3.5][:36]
    train = Dataset.from_dict({"query": [a for a, _ in pairs[:28]], "answer": [b for _, b in pairs[:28]]})
    evals = Dataset.from_dict({"query": [a for a, _ in pairs[28:]], "answer": [b for _, b in pairs[28:]]})
    return train, evals


def _run_reference(csr_dir, train, evals, out, **overrides):
    """Train the reference; returns its model, the per-step components (training forwards) and the eval ones."""
    torch.manual_seed(0)
    model = RefSparseEncoder(csr_dir, device="cpu")
    loss = ref_losses.CSRLoss(model, ref_losses.SparseMultipleNegativesRankingLoss(model, gather_across_devices=True))
    captured = []
    loss.register_forward_hook(
        lambda mod, inputs, out: captured.append((model.training, {k: float(v) for k, v in out.items()})))
    args = RefArgs(output_dir=str(out), report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
                   **{**RECIPE, **overrides})
    RefTrainer(model=model, args=args, train_dataset=train, eval_dataset=evals, loss=loss).train()
    steps = [c for training, c in captured if training]
    evaluated = [c for training, c in captured if not training]
    return model, {k: np.array([c[k] for c in steps]) for k in COMPONENTS}, evaluated


@pytest.fixture(scope="module")
def reference(csr_dir, data, tmp_path_factory):
    model, components, evaluated = _run_reference(csr_dir, *data, tmp_path_factory.mktemp("ref"))
    assert len(components["base_loss"]) == 4 and len(evaluated) == 2  # 8 + 8 + 8 + 4 rows; evals at steps 2, 4
    return dict(model=model, components=components, evals=evaluated)


def _train_ours(csr_dir, train, evals, out, **overrides):
    model = SparseEncoder(csr_dir)
    loss = our_losses.CSRLoss(model, our_losses.SparseMultipleNegativesRankingLoss(model, gather_across_devices=True))
    args = SparseEncoderTrainingArguments(output_dir=str(out), **{**RECIPE, **OURS, **overrides})
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=train, eval_dataset=evals, loss=loss)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "grad_norm" in h]
    components = {k: np.array([h[k] for h in logs]) for k in COMPONENTS}
    evaluated = [{k: h[f"eval_{k}"] for k in COMPONENTS} for h in trainer.state.log_history if "eval_loss" in h]
    return dict(model=model, trainer=trainer, components=components, evals=evaluated)


@pytest.fixture(scope="module")
def ours(csr_dir, data, tmp_path_factory):
    """The main run, checkpointing at steps 2 and 4 (the resume test restarts from checkpoint-2)."""
    return _train_ours(csr_dir, *data, tmp_path_factory.mktemp("ours"), save_strategy="steps", save_steps=2)


def _params_and_stats(model, tmp_path):
    """Our export read by the reference: (its state dict, as numpy)."""
    model.save_pretrained(str(tmp_path), create_model_card=False)
    back = RefSparseEncoder(str(tmp_path), device="cpu")
    return back, {k: v.detach().numpy() for k, v in back.state_dict().items()}


def _reference_state(ref_model):
    return {k: v.detach().numpy() for k, v in ref_model.state_dict().items()}


def _max_diffs(got: dict, want: dict) -> dict:
    """Per quantity, the largest absolute difference of the compared runs' dicts of arrays."""
    return {k: float(np.abs(np.asarray(got[k], np.float64) - np.asarray(want[k], np.float64)).max()) for k in want}


def _stats(model):
    return np.asarray(model[2].stats_last_nonzero)


def test_matches_reference_trainer(ours, reference, csr_dir, data, tmp_path):
    ref_model = reference["model"]
    # The auxiliary dead-latent path is live (dead latents exist at every step) and the last batch was padded.
    assert (reference["components"]["reconstruction_loss_aux"] > 1e-4).all()
    assert ours["trainer"].global_batch == 8 and len(data[0]) % 8 == 4
    diffs = {f"train_{k}": v for k, v in _max_diffs(ours["components"], reference["components"]).items()}
    for i, (got, want) in enumerate(zip(ours["evals"], reference["evals"], strict=True)):
        diffs.update({f"eval{i}_{k}": v for k, v in _max_diffs(got, want).items()})
    back, exported = _params_and_stats(ours["model"], tmp_path / "export")
    want = _reference_state(ref_model)
    assert exported.keys() == want.keys() and "2.stats_last_nonzero" in want
    params = {k: v for k, v in want.items() if k != "2.stats_last_nonzero"}
    moved = max(float(np.abs(params[k] - v).max()) for k, v in _reference_state(RefSparseEncoder(
        csr_dir, device="cpu")).items() if k in params)
    diffs["params"] = max(_max_diffs(exported, params).values())
    print({k: f"{v:.2e}" for k, v in diffs.items()}, f"params moved {moved:.2e}")
    assert moved > 5e-4
    assert max(diffs.values()) < TOL, diffs
    # The dead-latent counts: exactly the reference's, in the module and in the export.
    initial = _stats(SparseEncoder(csr_dir))
    np.testing.assert_array_equal(_stats(ours["model"]), want["2.stats_last_nonzero"])
    np.testing.assert_array_equal(exported["2.stats_last_nonzero"], want["2.stats_last_nonzero"])
    assert not np.array_equal(initial, want["2.stats_last_nonzero"])
    # The reference encodes our export as ours encodes it.
    texts = list(data[1]["query"])
    np.testing.assert_allclose(ours["model"].encode(texts), back.encode(texts).to_dense().numpy(), atol=TOL, rtol=0)


ORIGINAL_OUTPUTS = task_module.csr_column_outputs


def _merged_columns(forward, params, columns, state, *, dropout_key, mask, update):
    """Mutation: both columns in one forward (the state advances once per step instead of once per column)."""
    n, b = len(columns), columns[0]["input_ids"].shape[0]
    merged = {k: jnp.concatenate([c[k] for c in columns]) for k in columns[0]}
    (out,), state = ORIGINAL_OUTPUTS(forward, params, [merged], state, dropout_key=dropout_key,
                                     mask=jnp.tile(mask, n), update=update)
    part = lambda v, i: v[i * b:(i + 1) * b] if getattr(v, "ndim", 0) and v.shape[0] == n * b else v  # noqa: E731
    return [{k: part(v, i) for k, v in out.items()} for i in range(n)], state


def _unmasked(forward, params, columns, state, *, dropout_key, mask, update):
    """Mutation: padding rows fire latents (no row mask)."""
    return ORIGINAL_OUTPUTS(forward, params, columns, state, dropout_key=dropout_key, mask=None, update=update)


def _always_update(forward, params, columns, state, *, dropout_key, mask, update):
    """Mutation: the eval forward advances the state too."""
    return ORIGINAL_OUTPUTS(forward, params, columns, state, dropout_key=dropout_key, mask=mask, update=True)


@pytest.mark.parametrize("mutation", ["merged_columns", "no_row_mask"])
def test_training_controls(mutation, reference, csr_dir, data, tmp_path, monkeypatch):
    """Merging the columns moves the counts from the first step; ignoring the row mask moves them at the padded
    last step. Either way the trained counts are no longer the reference's."""
    monkeypatch.setattr(task_module, "csr_column_outputs",
                        {"merged_columns": _merged_columns, "no_row_mask": _unmasked}[mutation])
    run = _train_ours(csr_dir, *data, tmp_path, eval_strategy="no")
    want = reference["model"][2].stats_last_nonzero.numpy()
    assert not np.array_equal(_stats(run["model"]), want)


def test_eval_does_not_advance_state_control(ours, reference, monkeypatch):
    """The eval loss after the last step, recomputed with the state advancing inside the eval forward (the second
    column then reads counts the first one advanced): the auxiliary term leaves the reference's."""
    trainer = ours["trainer"]
    again = trainer.evaluate()
    assert abs(again["eval_reconstruction_loss_aux"] - reference["evals"][-1]["reconstruction_loss_aux"]) < TOL
    monkeypatch.setattr(task_module, "csr_column_outputs", _always_update)
    monkeypatch.setattr(trainer, "_eval_step_fns", {})  # retrace with the mutation
    mutated = trainer.evaluate()
    assert abs(mutated["eval_reconstruction_loss_aux"] - reference["evals"][-1]["reconstruction_loss_aux"]) > 10 * TOL


ACCUM = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, eval_strategy="no")


def _not_threaded(grad_fn, trainable, batch, key, model_state, accum_steps):
    """Mutation: every micro-batch starts from the step's state; the last one's result is kept."""
    def micro(sums, xs):
        i, mb = xs
        (lv, (c, state)), g = grad_fn(trainable, mb, jax.random.fold_in(key, i), model_state)
        return jax.tree_util.tree_map(jnp.add, sums, (lv, c, g)), state

    first = jax.tree_util.tree_map(lambda x: x[0], batch)
    (lv, (c, _)), g = jax.eval_shape(lambda: grad_fn(trainable, first, key, model_state))
    zeros = jax.tree_util.tree_map(jnp.zeros_like, (lv, c, g))
    sums, states = jax.lax.scan(micro, zeros, (jnp.arange(accum_steps), batch))
    return sums, jax.tree_util.tree_map(lambda x: x[-1], states)


def test_gradient_accumulation_matches_reference(csr_dir, data, tmp_path, monkeypatch):
    """Two micro-batches of 4 per step (24 rows: 3 steps): the micro-batches' forwards advance the counts one after
    the other, as the reference's. Control: each micro-batch starting from the step's counts."""
    train = data[0].select(range(24))
    ref_model, ref_components, _ = _run_reference(csr_dir, train, None, tmp_path / "ref", **ACCUM)
    run = _train_ours(csr_dir, train, None, tmp_path / "ours", **ACCUM)
    # The reference's hook sees each micro-batch's forward; a step logs their mean.
    diffs = _max_diffs(run["components"], {k: v.reshape(-1, 2).mean(1) for k, v in ref_components.items()})
    want = _reference_state(ref_model)
    _, exported = _params_and_stats(run["model"], tmp_path / "export")
    diffs["params"] = max(v for k, v in _max_diffs(exported, want).items() if k != "2.stats_last_nonzero")
    print({k: f"{v:.2e}" for k, v in diffs.items()})
    assert len(ref_components["base_loss"]) == 6 and max(diffs.values()) < TOL, diffs
    np.testing.assert_array_equal(_stats(run["model"]), want["2.stats_last_nonzero"])

    monkeypatch.setattr(step_module, "accumulate", _not_threaded)
    mutated = _train_ours(csr_dir, train, None, tmp_path / "mutated", **ACCUM)
    assert not np.array_equal(_stats(mutated["model"]), want["2.stats_last_nonzero"])


def test_resume_is_exact(ours, csr_dir, data, tmp_path):
    """A fresh trainer resuming from the main run's checkpoint-2 ends with its parameters and counts, bitwise; the
    checkpoint's export holds the counts of its step."""
    out = ours["trainer"].args.output_dir
    assert os.path.isdir(os.path.join(out, "checkpoint-2"))
    model = SparseEncoder(csr_dir)
    loss = our_losses.CSRLoss(model, our_losses.SparseMultipleNegativesRankingLoss(model, gather_across_devices=True))
    args = SparseEncoderTrainingArguments(output_dir=str(tmp_path), **{**RECIPE, **OURS})
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=data[0], eval_dataset=data[1], loss=loss)
    trainer.train(resume_from_checkpoint=os.path.join(out, "checkpoint-2"))
    straight, resumed = jax.tree_util.tree_leaves(ours["model"].params), jax.tree_util.tree_leaves(model.params)
    assert len(straight) == len(resumed)
    for a, b in zip(straight, resumed):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(_stats(model), _stats(ours["model"]))
    np.testing.assert_array_equal(SparseEncoder(os.path.join(out, "checkpoint-4"))[2].stats_last_nonzero,
                                  _stats(ours["model"]))


def test_eight_devices_match_one(ours, csr_dir, data, tmp_path):
    """8 data-parallel devices (1 row each; the padded last batch leaves 4 devices with padding only): the state's
    update is over the global batch, so components, parameters and counts are those of the 1-device run."""
    run = _train_ours(csr_dir, *data, tmp_path, mesh_shape={"data": 8}, per_device_train_batch_size=1,
                      eval_strategy="no")
    assert run["trainer"].global_batch == 8
    diffs = _max_diffs(run["components"], ours["components"])
    diffs["params"] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
        jax.tree_util.tree_leaves(run["model"].params), jax.tree_util.tree_leaves(ours["model"].params)))
    print({k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs.values()) < TOL, diffs
    np.testing.assert_array_equal(_stats(run["model"]), _stats(ours["model"]))


def test_bad_input_before_compiling(csr_dir, data, tmp_path):
    """What CSR training cannot do is said before anything compiles: sequence packing (the columns run one forward
    each), a GradCache base loss (its mini-batches would run the columns' forwards itself)."""
    from stcore_jax.sentence_transformer.losses import CachedMultipleNegativesRankingLoss

    model = SparseEncoder(csr_dir)
    args = SparseEncoderTrainingArguments(output_dir=str(tmp_path), **{**RECIPE, **OURS, "sequence_packing": True, "eval_strategy": "no"})
    with pytest.raises(ValueError, match="sequence_packing=True, but .*CSRLoss.* runs each column's forward"):
        SparseEncoderTrainer(model=model, args=args, train_dataset=data[0], loss=our_losses.CSRLoss(model))
    args = SparseEncoderTrainingArguments(output_dir=str(tmp_path), **{**RECIPE, **OURS, "eval_strategy": "no"})
    cached = our_losses.CSRLoss(model, CachedMultipleNegativesRankingLoss(model, mini_batch_size=4))
    with pytest.raises(ValueError, match="CSRLoss.* runs every column's forward itself .* GradCache mini-batches"):
        SparseEncoderTrainer(model=model, args=args, train_dataset=data[0], loss=cached)
    # sequence_packing=None (the default) packs where it can: a CSR run does not pack.
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=data[0], loss=our_losses.CSRLoss(model))
    assert trainer.task.packing_obstacles(trainer.loss)[-1].endswith("runs each column's forward separately (CSR)")
    assert trainer.compile_count[0] == 0


def test_step_threads_model_state():
    """training/step.py with a toy objective that counts its calls in the model state: the count advances once per
    micro-batch (threaded through the accumulation scan), also on a skipped (non-finite) step whose parameters stay
    put, as the reference's buffer advances inside the forward; the eval step hands no state back."""
    def objective(trainable, batch, key, model_state):
        loss = jnp.sum((trainable["model"]["w"] * batch["x"]) ** 2) / batch["scale"][0]
        return loss, ({"calls": model_state["calls"].astype(jnp.float32)}, {"calls": model_state["calls"] + 1})

    objective.uses_model_state = True
    tx = optax.sgd(0.1)
    trainable = {"model": {"w": jnp.ones(3)}, "loss": {}}
    state = {"trainable": trainable, "opt_state": tx.init(trainable), "step": jnp.int32(0), "skipped": jnp.int32(0),
             "model_state": {"calls": jnp.int32(5)}}
    batch = {"x": jnp.ones((3, 2, 3)), "scale": jnp.ones((3, 2))}
    state, metrics = jax.jit(step_module.make_train_step(objective, tx, seed=0, accum_steps=3))(state, batch)
    assert int(state["model_state"]["calls"]) == 8 and float(metrics["calls"]) == 6.0  # mean of 5, 6, 7
    w = np.asarray(state["trainable"]["model"]["w"])
    state, metrics = jax.jit(step_module.make_train_step(objective, tx, seed=0))(
        state, {"x": jnp.ones((2, 3)), "scale": jnp.zeros(2)})  # loss inf: skipped
    assert not bool(metrics["finite"]) and int(state["skipped"]) == 1
    np.testing.assert_array_equal(np.asarray(state["trainable"]["model"]["w"]), w)
    assert int(state["model_state"]["calls"]) == 9
    out = step_module.make_eval_step(objective)(state["trainable"], {"x": jnp.ones((2, 3)), "scale": jnp.ones(2)},
                                                0, state["model_state"])
    assert float(out["calls"]) == 9.0 and set(out) == {"loss", "calls"}
