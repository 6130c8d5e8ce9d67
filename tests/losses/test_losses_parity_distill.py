"""Parity with sentence-transformers 6.2 for the distillation losses: values and gradients w.r.t.
the student embeddings (float32, within 1e-5)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer import losses as ref
from sentence_transformers.util import pairwise_cos_sim as torch_pairwise_cos

import stcore_jax.losses as L
from losses_reference import assert_parity, columns, randn


@pytest.mark.parametrize("num_columns,label_rank", [(1, 2), (3, 3)])
def test_mse(num_columns, label_rank):
    teacher = randn(30, 8, 16) if label_rank == 2 else randn(30, 8, num_columns, 16)
    reference, ours = ref.MSELoss(None), L.MSELoss(None)
    # MSELoss.forward turns the label into per-column teacher arrays; do the same for its
    # compute_loss_from_embeddings (2-D: shared by every column; 3-D: column c is labels[:, c]).
    t = torch.tensor(teacher)
    teachers = [t] * num_columns if label_rank == 2 else [t[:, i] for i in range(num_columns)]
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, teachers),
                  lambda e: ours(e, jnp.asarray(teacher)), columns(31, num_columns))


def test_mse_with_projection(tiny_st):
    reference = ref.MSELoss(tiny_st, projection_dim=6)
    ours = L.MSELoss(tiny_st, projection_dim=6)
    teacher = randn(32, 8, 6)
    weight = reference.projection.weight.detach().numpy().T.copy()
    bias = reference.projection.bias.detach().numpy().copy()
    params = {"projection": {"kernel": jnp.asarray(weight), "bias": jnp.asarray(bias)}}
    assert ours.init_params(__import__("jax").random.key(0))["projection"]["kernel"].shape == (16, 6)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, [torch.tensor(teacher)] * 2),
                  lambda e: ours(e, jnp.asarray(teacher), params=params), columns(33, 2))


@pytest.mark.parametrize("metric", ["mse", "l2", "cosine"])
def test_embed_distill(metric):
    teacher = randn(34, 8, 2, 16)
    reference, ours = ref.EmbedDistillLoss(None, distance_metric=metric), L.EmbedDistillLoss(None, metric)
    t = torch.tensor(teacher)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, [t[:, 0], t[:, 1]]),
                  lambda e: ours(e, jnp.asarray(teacher)), columns(35, 2))


@pytest.mark.parametrize("num_negatives,label_shape", [(1, "flat"), (2, "margins"), (2, "scores")])
def test_margin_mse(num_negatives, label_shape):
    rng = np.random.default_rng(36)
    if label_shape == "flat":
        labels = rng.standard_normal(8).astype(np.float32)
    elif label_shape == "margins":
        labels = rng.standard_normal((8, num_negatives)).astype(np.float32)
    else:
        labels = rng.standard_normal((8, num_negatives + 1)).astype(np.float32)
    reference, ours = ref.MarginMSELoss(None), L.MarginMSELoss(None)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, torch.tensor(labels)),
                  lambda e: ours(e, jnp.asarray(labels)), columns(37, 2 + num_negatives))


def test_margin_mse_cosine():
    labels = randn(38, 8, 2)
    reference = ref.MarginMSELoss(None, similarity_fct=torch_pairwise_cos)
    ours = L.MarginMSELoss(None, similarity_fct="pairwise_cos_sim")
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, torch.tensor(labels)),
                  lambda e: ours(e, jnp.asarray(labels)), columns(39, 4))


@pytest.mark.parametrize("temps", [(2.0, None, None), (1.0, 0.5, 3.0)])
def test_distill_kl_div(temps):
    labels = randn(40, 8, 3, scale=3.0)
    kw = dict(temperature=temps[0], student_temperature=temps[1], teacher_temperature=temps[2])
    reference, ours = ref.DistillKLDivLoss(None, **kw), L.DistillKLDivLoss(None, **kw)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, torch.tensor(labels)),
                  lambda e: ours(e, jnp.asarray(labels)), columns(41, 4))
