"""Parity with sentence-transformers 6.2 for the in-batch-negative losses: values and gradients
w.r.t. every embedding column (float32, within 1e-5)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer import losses as ref
from sentence_transformers.sentence_transformer.losses import gist_embed as ref_gist
from sentence_transformers.util import dot_score as torch_dot_score

import stcore_jax.losses as L
from losses_reference import assert_parity, columns, patch_embed_columns

ALL_DIRECTIONS = ("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
DIRECTION_CASES = [
    (("query_to_doc",), "joint"),
    (("query_to_doc",), "per_direction"),
    (("query_to_doc", "query_to_query"), "joint"),
    (("query_to_doc", "doc_to_query"), "joint"),
    (("query_to_doc", "doc_to_query"), "per_direction"),
    (("query_to_doc", "doc_to_doc"), "joint"),
    (ALL_DIRECTIONS, "joint"),
]


@pytest.mark.parametrize("directions,partition_mode", DIRECTION_CASES)
def test_mnrl_directions(directions, partition_mode):
    reference = ref.MultipleNegativesRankingLoss(None, directions=directions, partition_mode=partition_mode)
    ours = L.MultipleNegativesRankingLoss(None, directions=directions, partition_mode=partition_mode)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, None), lambda e: ours(e, None),
                  columns(1, 4))  # two hard negatives


@pytest.mark.parametrize("directions,partition_mode", [DIRECTION_CASES[4], DIRECTION_CASES[6]])
def test_mnrl_pairs_only(directions, partition_mode):
    reference = ref.MultipleNegativesRankingLoss(None, directions=directions, partition_mode=partition_mode)
    ours = L.MultipleNegativesRankingLoss(None, directions=directions, partition_mode=partition_mode)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, None), lambda e: ours(e, None),
                  columns(1, 2))


@pytest.mark.parametrize("hardness_mode,num_negatives", [
    ("in_batch_negatives", 0), ("in_batch_negatives", 2), ("hard_negatives", 2), ("all_negatives", 2)])
def test_mnrl_hardness(hardness_mode, num_negatives):
    kw = dict(hardness_mode=hardness_mode, hardness_strength=5.0, directions=ALL_DIRECTIONS)
    reference = ref.MultipleNegativesRankingLoss(None, **kw)
    ours = L.MultipleNegativesRankingLoss(None, **kw)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, None), lambda e: ours(e, None),
                  columns(2, 2 + num_negatives))


def test_mnrl_hardness_per_direction_and_dot_similarity():
    kw = dict(hardness_mode="all_negatives", hardness_strength=2.0, directions=("query_to_doc", "doc_to_query"),
              partition_mode="per_direction", scale=1.0)
    reference = ref.MultipleNegativesRankingLoss(None, similarity_fct=torch_dot_score, **kw)
    ours = L.MultipleNegativesRankingLoss(None, similarity_fct="dot_score", **kw)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, None), lambda e: ours(e, None),
                  columns(3, 3))


@pytest.mark.parametrize("num_negatives", [1])
def test_mnsrl(num_negatives):
    with pytest.warns(DeprecationWarning):
        reference = ref.MultipleNegativesSymmetricRankingLoss(None, scale=10.0)
    ours = L.MultipleNegativesSymmetricRankingLoss(None, scale=10.0)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, None), lambda e: ours(e, None),
                  columns(4, 2 + num_negatives))


@pytest.mark.parametrize("margin_strategy,margin,contrast,num_negatives", [
    ("absolute", 0.0, (True, True), 1), ("absolute", 0.1, (True, False), 0), ("relative", 0.05, (False, True), 1)])
def test_gist(monkeypatch, tiny_st_pair, num_negatives, margin_strategy, margin, contrast):
    # The reference GISTEmbedLoss has no compute_loss_from_embeddings: run its forward with
    # embed_columns patched to hand back our embeddings (for the model) and guide embeddings
    # (for the guide), which is exactly how its forward obtains them.
    model, guide = tiny_st_pair
    kw = dict(temperature=0.05, margin_strategy=margin_strategy, margin=margin, contrast_anchors=contrast[0],
              contrast_positives=contrast[1])
    reference = ref.GISTEmbedLoss(model, guide, **kw)
    ours = L.GISTEmbedLoss(model, guide, **kw)
    n = 2 + num_negatives
    arrays = columns(5, n)
    # A guide correlated with the model, so that some (not all) candidates get filtered.
    guide_arrays = [a + 0.7 * b for a, b in zip(arrays, columns(6, n))]

    def reference_fn(leaves):
        patch_embed_columns(monkeypatch, ref_gist, {
            id(model): leaves, id(guide): [torch.tensor(g) for g in guide_arrays]})
        return reference([{} for _ in range(n)], None)

    assert_parity(reference_fn, lambda e: ours(e, None, guide_embeddings=[jnp.asarray(g) for g in guide_arrays]),
                  arrays)


def test_gist_filters_something(tiny_st_pair):
    """Guard for the GIST test data above: the false-negative filter must actually fire."""
    arrays = columns(5, 2)
    guide = [a + 0.7 * b for a, b in zip(arrays, columns(6, 2))]
    unfiltered = L.gist_embed_loss(*arrays, guide=[jnp.zeros_like(jnp.asarray(g)) - 1 for g in guide],
                                   temperature=0.05, margin=-10.0)
    filtered = L.gist_embed_loss(*arrays, guide=guide, temperature=0.05)
    assert not np.isclose(float(unfiltered), float(filtered))


@pytest.mark.parametrize("margins", [(0.2, -0.1)])
def test_mega_batch_margin(margins):
    # calculate_loss is the reference's computation from embeddings (both of its forwards call it).
    reference = ref.MegaBatchMarginLoss(None, positive_margin=margins[0], negative_margin=margins[1],
                                        use_mini_batched_version=False)
    ours = L.MegaBatchMarginLoss(None, positive_margin=margins[0], negative_margin=margins[1])
    assert_parity(lambda e: reference.calculate_loss([[t] for t in e]), lambda e: ours(e, None), columns(7, 2))


def test_contrastive_tension_in_batch_negatives(tiny_st):
    # The reference forward embeds the single column with model1 (a copy) and model2; replace both
    # with modules that return our two embedding arrays.
    reference = ref.ContrastiveTensionLossInBatchNegatives(tiny_st, scale=15.0)
    ours = L.ContrastiveTensionLossInBatchNegatives(tiny_st, scale=15.0)

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.out = None

        def forward(self, features):
            return {"sentence_embedding": self.out}

    reference.model1, reference.model2 = Fixed(), Fixed()

    def reference_fn(leaves):
        reference.model1.out, reference.model2.out = leaves
        return reference([{}], None)

    assert_parity(reference_fn, lambda e: ours(e, None, params=ours.init_params(None)), columns(8, 2))


@pytest.mark.parametrize("num_columns,weights,aggregation", [(2, (1.0, 1.0), "mean"), (3, (0.5, 2.0), "sum"),
                                                              (1, (1.0, 0.0), "mean")])
def test_global_orthogonal_regularization(num_columns, weights, aggregation):
    kw = dict(mean_weight=weights[0], second_moment_weight=weights[1], aggregation=aggregation)
    reference = ref.GlobalOrthogonalRegularizationLoss(None, **kw)
    ours = L.GlobalOrthogonalRegularizationLoss(None, **kw)
    out = ours([jnp.asarray(a) for a in columns(9, num_columns)])
    assert set(out) == set(reference.compute_loss_from_embeddings(
        [torch.tensor(a) for a in columns(9, num_columns)]))
    assert_parity(lambda e: sum(reference.compute_loss_from_embeddings(e).values()),
                  lambda e: sum(ours(e).values()), columns(9, num_columns))


@pytest.mark.parametrize("directions,partition_mode", [DIRECTION_CASES[0], DIRECTION_CASES[6]])
def test_mnrl_row_blocks(monkeypatch, directions, partition_mode):
    """Large shards are scored in anchor row blocks (bounded memory); same value and gradients."""
    import stcore_jax.sentence_transformer.losses.mnrl as mnrl

    monkeypatch.setattr(mnrl, "ROW_BLOCK", 8)  # 32 rows -> 4 blocks of 8
    reference = ref.MultipleNegativesRankingLoss(None, directions=directions, partition_mode=partition_mode)
    ours = L.MultipleNegativesRankingLoss(None, directions=directions, partition_mode=partition_mode)
    assert_parity(lambda e: reference.compute_loss_from_embeddings(e, None), lambda e: ours(e, None),
                  columns(3, 3, batch=32))
