"""Parity with sentence-transformers 6.2 for the batch-mined triplet losses (one column + class
labels): values and gradients w.r.t. the embeddings (float32, within 1e-5)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer import losses as ref

import stcore_jax.losses as L
from losses_reference import assert_parity, columns

# 12 rows, 4 classes; class 3 has a single member (no positive for it).
LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1])
REF_DIST = ref.BatchHardTripletLossDistanceFunction
OUR_DIST = L.BatchHardTripletLossDistanceFunction


@pytest.mark.parametrize("name,distance,margin", [
    ("BatchAllTripletLoss", "euclidean_distance", 5.0), ("BatchAllTripletLoss", "cosine_distance", 0.5),
    ("BatchHardTripletLoss", "euclidean_distance", 5.0), ("BatchHardTripletLoss", "cosine_distance", 0.5),
    ("BatchSemiHardTripletLoss", "euclidean_distance", 5.0), ("BatchSemiHardTripletLoss", "cosine_distance", 0.5)])
def test_batch_triplet(name, distance, margin):
    reference = getattr(ref, name)(None, distance_metric=getattr(REF_DIST, distance), margin=margin)
    ours = getattr(L, name)(None, distance_metric=getattr(OUR_DIST, distance), margin=margin)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, torch.tensor(LABELS)),
                  lambda e: ours(e, jnp.asarray(LABELS)), columns(20, 1, batch=len(LABELS), dim=8))


@pytest.mark.parametrize("distance", ["euclidean_distance"])
def test_batch_hard_soft_margin(distance):
    reference = ref.BatchHardSoftMarginTripletLoss(None, distance_metric=getattr(REF_DIST, distance))
    ours = L.BatchHardSoftMarginTripletLoss(None, distance_metric=getattr(OUR_DIST, distance))
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, torch.tensor(LABELS)),
                  lambda e: ours(e, jnp.asarray(LABELS)), columns(21, 1, batch=len(LABELS), dim=8))


def test_semi_hard_both_negative_paths():
    """Rows on a line: for some anchor-positive pairs a negative lies beyond the positive (the
    sorted-search path), for others none does (fallback to the farthest negative); both paths
    must match the reference."""
    noise = columns(22, 1, batch=len(LABELS), dim=8)[0]
    points = np.zeros((len(LABELS), 8), np.float32)
    points[:, 0] = np.arange(len(LABELS), dtype=np.float32)
    points += 0.05 * noise
    dist = np.abs(points[:, None, 0] - points[None, :, 0])
    same = LABELS[:, None] == LABELS[None, :]
    has_beyond = [(dist[a][~same[a]] > dist[a, p]).any() for a in range(len(LABELS)) for p in range(len(LABELS))
                  if same[a, p] and a != p]
    assert any(has_beyond) and not all(has_beyond)
    reference = ref.BatchSemiHardTripletLoss(None, margin=2.0)
    ours = L.BatchSemiHardTripletLoss(None, margin=2.0)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, torch.tensor(LABELS)),
                  lambda e: ours(e, jnp.asarray(LABELS)), [points])
