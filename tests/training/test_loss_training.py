"""Losses that own parameters or use a guide model, trained through the trainer against sentence-transformers'.

Dropout off and batches in file order (as in test_reference_trainer_parity.py), so both trainers are
deterministic and must agree step by step, on the encoder AND on the loss's own parameters (SoftmaxLoss's
classifier, which the reference's optimizer trains too). Every run compiles one step per loss, with one
length bucket, so that the file stays cheap.
"""

import collections
import os
import shutil

import jax
import numpy as np
import pytest
import torch
from datasets import Dataset
from safetensors.numpy import load_file, save_file
from sentence_transformers import (
    SentenceTransformer as RefModel,
    SentenceTransformerTrainer as RefTrainer,
    SentenceTransformerTrainingArguments as RefArgs,
    losses as ref_losses,
)
from torch.utils.data import BatchSampler, SequentialSampler
from transformers import TrainerCallback as RefCallback

import tiny_models
from stcore_jax import (
    BatchSamplers,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
    losses,
)
from stcore_jax.sentence_transformer.data import collate
from stcore_jax.training import TrainerCallback, checkpoint as ckpt

TOL = 1e-5  # as test_reference_trainer_parity.py: float32 summation-order noise, amplified by Adam


def in_order(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
    return BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last)


@pytest.fixture(scope="module")
def dirs(tiny_bert_dir, tmp_path_factory):
    """``(model, guide)``: the tiny BERT without dropout, and a perturbed copy of it as the GIST guide (same
    tokenizer, other weights, so that its similarities differ from the trained model's)."""
    root = tmp_path_factory.mktemp("loss_training")
    model, guide = str(root / "model"), str(root / "guide")
    tiny_models.copy_without_dropout(tiny_bert_dir, model)
    shutil.copytree(model, guide)
    rng = np.random.default_rng(7)
    for dirpath, _, files in os.walk(guide):
        for f in files:
            if f == "model.safetensors":
                path = os.path.join(dirpath, f)
                tensors = load_file(path)
                save_file({k: (v + 0.2 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in tensors.items()},
                          path)
    return model, guide


@pytest.fixture(scope="module")
def texts(stsb_train):
    s1, s2, sc = stsb_train
    return s1[:40], s2[:40], sc[:40]


def _nli(texts, rows, num_labels):
    s1, s2, sc = texts
    return Dataset.from_dict({"sentence1": [s1[i] for i in rows], "sentence2": [s2[i] for i in rows],
                              "label": [min(int(sc[i] * num_labels / 5.01), num_labels - 1) for i in rows]})


RECIPE = dict(per_device_train_batch_size=8, learning_rate=5e-4, warmup_ratio=0.34, lr_scheduler_type="linear",
              weight_decay=0.5, max_grad_norm=0.5, adam_epsilon=1e-6, seed=12, batch_sampler=in_order)


def _ref_train(model_dir, data, make_loss, out, snapshot=None, **override):
    """Train with sentence-transformers. Returns ``(model, loss, initial classifiers)`` (the classifiers of
    its SoftmaxLosses before training, by dataset name; ``"train"`` for a single loss). ``snapshot(ref, loss,
    step)`` runs after every optimizer step."""
    torch.manual_seed(0)
    ref = RefModel(model_dir, device="cpu")
    loss = make_loss(ref)
    named = loss if isinstance(loss, dict) else {"train": loss}
    initial = {n: _classifier(lo) for n, lo in named.items() if isinstance(lo, ref_losses.SoftmaxLoss)}

    class Snap(RefCallback):
        def on_step_end(self, args, state, control, **kw):
            if snapshot is not None:
                snapshot(ref, loss, state.global_step)

    args = RefArgs(output_dir=str(out), report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no",
                   **{**RECIPE, **override})
    RefTrainer(model=ref, args=args, train_dataset=data, loss=loss, callbacks=[Snap()]).train()
    return ref, loss, initial


def _encoder(ref):
    return {k: v.detach().numpy().copy() for k, v in ref[0].auto_model.state_dict().items()}


def _classifier(ref_softmax):
    """The reference classifier in our layout (``kernel = weight.T``)."""
    lin = ref_softmax.classifier
    return {"kernel": lin.weight.detach().numpy().T.copy(), "bias": lin.bias.detach().numpy().copy()}


def _start_from(ours_loss, classifier):
    """Give our SoftmaxLoss the reference's initial classifier (the two libraries draw different inits)."""
    ours_loss.init_params = lambda rng: {"classifier": jax.tree_util.tree_map(np.asarray, classifier)}
    return ours_loss


class Snapshots(TrainerCallback):
    """Our encoder (HF names) and loss parameters after every step."""

    def __init__(self):
        self.trainer, self.steps, self.rows = None, {}, {}

    def on_step_end(self, args, state, control, rows=None, **kw):
        enc = {k: np.array(v, copy=True) for k, v in self.trainer.model.input_module.hf_state_dict().items()}
        lp = jax.tree_util.tree_map(lambda x: np.array(x, copy=True),
                                    jax.device_get(self.trainer._train_state["trainable"]["loss"]))
        self.steps[state.global_step] = (enc, lp)
        self.rows[state.global_step] = rows


def _ours(model_dir, data, loss_fn, out, guide_dir=None, resume=None, snaps=None, **override):
    model = SentenceTransformer(model_dir)
    guide = SentenceTransformer(guide_dir) if guide_dir else None
    snaps = snaps or Snapshots()
    args = SentenceTransformerTrainingArguments(output_dir=str(out), disable_tqdm=True, save_final_model=False,
                                                mesh_shape={"data": 1}, length_buckets=1,
                                                **{"save_strategy": "no", **RECIPE, **override})
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss_fn(model, guide),
                                         callbacks=[snaps])
    snaps.trainer = trainer
    trainer.train(resume_from_checkpoint=resume)
    return trainer, snaps.steps


def _max_diff(a, b, keys=None):
    return max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in (keys or b))


def test_softmax_loss_classifier_trains_like_the_reference(dirs, texts, tmp_path):
    """3 steps with the full recipe (AdamW, weight decay on the kernel but not the bias, clipping, warmup, a
    learning_rate_mapping for the classifier): encoder and classifier match the reference. The reference clips
    ``model.parameters()`` only: clipping the classifier's gradients too (this library's former behaviour) put
    the classifier 4.5e-4 (45 TOL) away from the reference's here."""
    model_dir, _ = dirs
    data = _nli(texts, range(24), 3)
    run = dict(max_steps=3, learning_rate_mapping={r"classifier": 2e-3})  # the classifier's own peak lr
    ref, ref_loss, init = _ref_train(model_dir, data, lambda m: ref_losses.SoftmaxLoss(m, 32, 3), tmp_path / "ref",
                                     **run)
    init_cls = init["train"]
    _, steps = _ours(model_dir, data, lambda m, g: _start_from(losses.SoftmaxLoss(m, 32, 3), init_cls),
                     tmp_path / "ours", **run)
    enc, lp = steps[3]
    expected, expected_cls = _encoder(ref), _classifier(ref_loss)
    assert set(lp) == {"train"}  # the loss's subtree, keyed by its dataset
    moved = _max_diff(expected_cls, init_cls)
    assert moved > 30 * TOL, "the reference classifier did not move; the comparison would be vacuous"
    assert _max_diff(lp["train"]["classifier"], expected_cls) < TOL
    assert _max_diff(enc, expected, expected) < TOL


def _multi(texts):
    s1, s2, _ = texts
    return {
        "nli3": _nli(texts, range(0, 8), 3),
        "nli2": _nli(texts, range(8, 16), 2),
        "gist": Dataset.from_dict({"anchor": s1[16:24], "positive": s2[16:24]}),
        "cgist": Dataset.from_dict({"anchor": s1[24:32], "positive": s2[24:32], "negative": s2[32:40]}),
    }


def test_two_softmax_losses_and_guided_losses_train_like_the_reference(dirs, texts, tmp_path):
    """A dict of losses, one batch each in ROUND_ROBIN order: SoftmaxLoss with 3 labels, SoftmaxLoss with
    2 labels, GISTEmbedLoss and CachedGISTEmbedLoss (GradCache in chunks of 4) with a guide model. After every
    step the encoder and BOTH classifiers match the reference: each loss trains its own classifier (the
    trainer used to keep one loss's parameters and hand them to every loss), and the guided losses filter
    their in-batch negatives with the guide as the reference does.

    Betas 0 and no weight decay: torch skips a parameter that got no gradient (a classifier during the
    other datasets' steps), while optax updates it with a zero gradient, which Adam's momentum and decoupled
    decay turn into a move; with betas 0 and no decay a zero gradient is a zero update in both."""
    model_dir, guide_dir = dirs
    data = _multi(texts)
    recipe = dict(max_steps=4, adam_beta1=0.0, adam_beta2=0.0, weight_decay=0.0, warmup_ratio=0.0,
                  multi_dataset_batch_sampler="round_robin")
    expected = {}

    def snap(ref, loss, step):
        expected[step] = (_encoder(ref), {n: _classifier(loss[n]) for n in ("nli3", "nli2")})

    def ref_losses_for(m):
        guide = RefModel(guide_dir, device="cpu")
        return {"nli3": ref_losses.SoftmaxLoss(m, 32, 3), "nli2": ref_losses.SoftmaxLoss(m, 32, 2),
                "gist": ref_losses.GISTEmbedLoss(m, guide),
                "cgist": ref_losses.CachedGISTEmbedLoss(m, guide, mini_batch_size=4)}

    ref, ref_loss, init = _ref_train(model_dir, data, ref_losses_for, tmp_path / "ref", snapshot=snap, **recipe)

    def our_losses(m, guide):
        return {"nli3": _start_from(losses.SoftmaxLoss(m, 32, 3), init["nli3"]),
                "nli2": _start_from(losses.SoftmaxLoss(m, 32, 2), init["nli2"]),
                "gist": losses.GISTEmbedLoss(m, guide),
                "cgist": losses.CachedGISTEmbedLoss(m, guide, mini_batch_size=4)}

    trainer, steps = _ours(model_dir, data, our_losses, tmp_path / "ours", guide_dir=guide_dir,
                           save_strategy="steps", save_steps=4, **recipe)
    assert sorted(steps) == sorted(expected) == [1, 2, 3, 4]
    enc0 = trainer.model.input_module.hf_state_dict(jax.device_get(SentenceTransformer(model_dir).params["0"]))
    for step, (ref_enc, ref_cls) in expected.items():
        enc, lp = steps[step]
        assert set(lp) == {"nli3", "nli2"}, "one parameter subtree per SoftmaxLoss, keyed by its dataset"
        assert [lp[n]["classifier"]["kernel"].shape for n in ("nli3", "nli2")] == [(96, 3), (96, 2)]
        for name in ("nli3", "nli2"):
            assert _max_diff(lp[name]["classifier"], ref_cls[name]) < TOL, (step, name)
        assert _max_diff(enc, ref_enc, ref_enc) < TOL, step
        assert _max_diff(enc, enc0, ref_enc) > 30 * TOL, step  # every step moved the encoder
    for name, own in (("nli3", 1), ("nli2", 2)):  # each classifier moved in its dataset's step: not vacuous
        assert _max_diff(steps[own][1][name]["classifier"], init[name]) > 30 * TOL, name

    # The checkpoint holds both classifiers, and restores onto the trainer's state layout.
    state = trainer._train_state
    abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    restored, _ = ckpt.restore_checkpoint(str(tmp_path / "ours" / "checkpoint-4"), abstract)
    for name in ("nli3", "nli2"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(np.asarray(restored["trainable"]["loss"][name]["classifier"][leaf]),
                                          steps[4][1][name]["classifier"][leaf])

    # compute_loss uses each dataset's own classifier: on the trained parameters, the 2-label loss of a batch
    # equals the reference's trained loss module on it.
    ds = trainer.train_prepared["nli2"]
    batch = trainer._to_device(collate(ds, list(range(8)), 8, 32, trainer.model.input_module.pad))
    ours_value = float(trainer.compute_loss(trainer.model, {**batch, "dataset_name": "nli2"}))
    with torch.no_grad():
        features = [ref.tokenize(list(data["nli2"][c])) for c in ("sentence1", "sentence2")]
        ref_value = float(ref_loss["nli2"](features, torch.tensor(data["nli2"]["label"])))
    assert abs(ours_value - ref_value) < 1e-5 * abs(ref_value), (ours_value, ref_value)


def test_batch_hard_triplet_loss_with_group_by_label_resumes(dirs, texts, tmp_path):
    """BatchHardTripletLoss (labels) with GROUP_BY_LABEL: every step's batch holds >= 2 labels with >= 2 rows
    each; step 1's loss equals the reference loss module's on the same rows; and a run resumed from step 2
    takes the same remaining batches (step 4 is in the next epoch) and ends with the same parameters."""
    model_dir, _ = dirs
    data = Dataset.from_dict({"text": texts[0][:24], "label": [i % 4 for i in range(24)]})  # 3 batches an epoch
    run = dict(max_steps=4, save_strategy="steps", save_steps=2, logging_steps=1,
               batch_sampler=BatchSamplers.GROUP_BY_LABEL)

    def triplet(m, g):
        return losses.BatchHardTripletLoss(m)

    straight = Snapshots()
    trainer, steps = _ours(model_dir, data, triplet, tmp_path / "a", snaps=straight, **run)
    for step, (rows,) in straight.rows.items():
        per_label = collections.Counter(data["label"][r] for r in rows)
        assert len(rows) == 8 and len(per_label) >= 2 and min(per_label.values()) >= 2, (step, rows)
    assert straight.rows[4] != straight.rows[1]  # epoch 1 is reshuffled

    (first,) = straight.rows[1]
    ref = RefModel(model_dir, device="cpu")
    with torch.no_grad():
        features = ref.tokenize([data["text"][r] for r in first])
        labels = torch.tensor([data["label"][r] for r in first])
        ref_value = float(ref_losses.BatchHardTripletLoss(ref)([features], labels))
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert abs(logged[0] - ref_value) < 1e-5 * max(1.0, abs(ref_value)), (logged[0], ref_value)

    resumed = Snapshots()
    shutil.copytree(tmp_path / "a" / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    _, steps_b = _ours(model_dir, data, triplet, tmp_path / "b", snaps=resumed, resume=True, **run)
    assert sorted(resumed.rows) == [3, 4]
    assert {s: resumed.rows[s] for s in (3, 4)} == {s: straight.rows[s] for s in (3, 4)}
    for k, v in steps[4][0].items():
        np.testing.assert_array_equal(steps_b[4][0][k], v, err_msg=k)
    assert _max_diff(steps[4][0], steps[2][0]) > 30 * TOL  # steps 3 and 4 moved the parameters
