"""The training loop against sentence-transformers' own trainer: same model, batches and recipe.

Dropout is switched off and both trainers take the batches in file order, so the two runs are
deterministic and must agree step by step: this checks everything between the loss and the
parameters — AdamW with decoupled weight decay (bias/LayerNorm excluded), gradient clipping, the
warmup + linear schedule, the loss scale — not just the loss function.
"""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer as RefModel
from sentence_transformers import SentenceTransformerTrainer as RefTrainer
from sentence_transformers import SentenceTransformerTrainingArguments as RefArgs
from sentence_transformers import losses as ref_losses
from torch.utils.data import BatchSampler, SequentialSampler

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.losses import CoSENTLoss, MultipleNegativesRankingLoss


def in_order(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
    return BatchSampler(SequentialSampler(range(len(dataset))), batch_size, drop_last)


@pytest.fixture(scope="module")
def no_dropout_dir(tiny_bert_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("nodrop") / "st")
    shutil.copytree(tiny_bert_dir, out)
    for root, _, files in os.walk(out):
        if "config.json" in files:
            path = os.path.join(root, "config.json")
            cfg = json.load(open(path))
            if "hidden_dropout_prob" in cfg:
                cfg["hidden_dropout_prob"] = cfg["attention_probs_dropout_prob"] = 0.0
                json.dump(cfg, open(path, "w"))
    return out


RECIPE = dict(max_steps=6, per_device_train_batch_size=8, learning_rate=5e-4, warmup_ratio=0.34,
              lr_scheduler_type="linear", weight_decay=0.5, max_grad_norm=0.5, adam_epsilon=1e-6, seed=12, save_strategy="no",
              batch_sampler=in_order)


@pytest.mark.parametrize("loss_name", ["cosent", "mnrl"])
def test_parameters_match_reference_trainer(no_dropout_dir, pairs, tmp_path, loss_name):
    data = pairs if loss_name == "cosent" else pairs.remove_columns("score")
    torch.manual_seed(0)
    ref = RefModel(no_dropout_dir, device="cpu")
    ref_loss = ref_losses.CoSENTLoss(ref) if loss_name == "cosent" else ref_losses.MultipleNegativesRankingLoss(ref)
    RefTrainer(model=ref, args=RefArgs(output_dir=str(tmp_path / "ref"), report_to="none", use_cpu=True,
                                       disable_tqdm=True, **RECIPE),
               train_dataset=data, loss=ref_loss).train()
    expected = {k: v.detach().numpy() for k, v in ref[0].auto_model.state_dict().items()}

    got, before = _train_ours(no_dropout_dir, data, loss_name, tmp_path / "ours")
    moved = max(np.abs(got[k] - before[k]).max() for k in expected)
    worst = max(np.abs(got[k] - expected[k]).max() for k in expected)
    assert moved > 1e-3, "training did not move the parameters; the comparison would be vacuous"
    # Adam turns tiny gradient differences (float32 summation order) into small steps on near-zero
    # gradient entries (adam_epsilon 1e-6 bounds them); a recipe difference (schedule, decay mask,
    # clipping, loss scale) moves parameters by much more: see the control test below.
    assert worst < TOL, f"max |ours - sentence-transformers| = {worst:.2e} (parameters moved {moved:.2e})"
    if loss_name == "cosent":  # control: the same comparison sees a weight-decay difference
        off, _ = _train_ours(no_dropout_dir, data, loss_name, tmp_path / "control", weight_decay=0.0)
        assert max(np.abs(off[k] - expected[k]).max() for k in expected) > 10 * TOL


TOL = 1e-5


def _train_ours(model_dir, data, loss_name, out, **override):
    ours = SentenceTransformer(model_dir)
    before = ours.input_module.hf_state_dict()
    loss = CoSENTLoss(ours) if loss_name == "cosent" else MultipleNegativesRankingLoss(ours)
    args = SentenceTransformerTrainingArguments(output_dir=str(out), disable_tqdm=True, save_final_model=False,
                                                mesh_shape={"data": 1}, **{**RECIPE, **override})
    SentenceTransformerTrainer(model=ours, args=args, train_dataset=data, loss=loss).train()
    return ours.input_module.hf_state_dict(), before
