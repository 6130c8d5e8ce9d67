"""Each loss class states its input columns and label; wrong column counts and missing or extra
labels are rejected with a ValueError that names the loss and what it expects."""

import re

import pytest

import stcore_jax.losses as L

MNRL = L.MultipleNegativesRankingLoss(None)

# factory, minimum and maximum (None = unbounded) number of input columns, label rule
# ("required", "none", "optional", or a dict {num_columns: rule}).
CATALOGUE = {
    "MultipleNegativesRankingLoss": (lambda: L.MultipleNegativesRankingLoss(None), 2, None, "none"),
    "MultipleNegativesSymmetricRankingLoss": (lambda: L.MultipleNegativesSymmetricRankingLoss(None), 2, None, "none"),
    "GISTEmbedLoss": (lambda: L.GISTEmbedLoss(None, guide=object()), 2, 3, "none"),
    "CoSENTLoss": (lambda: L.CoSENTLoss(None), 2, 2, "required"),
    "AnglELoss": (lambda: L.AnglELoss(None), 2, None, {2: "required", 3: "optional", 4: "optional"}),
    "CosineSimilarityLoss": (lambda: L.CosineSimilarityLoss(None), 2, 2, "required"),
    "SoftmaxLoss": (lambda: L.SoftmaxLoss(None, 16, 3), 2, 2, "required"),
    "ContrastiveLoss": (lambda: L.ContrastiveLoss(None), 2, 2, "required"),
    "OnlineContrastiveLoss": (lambda: L.OnlineContrastiveLoss(None), 2, 2, "required"),
    "TripletLoss": (lambda: L.TripletLoss(None), 3, 3, "none"),
    "BatchAllTripletLoss": (lambda: L.BatchAllTripletLoss(None), 1, 1, "required"),
    "BatchHardTripletLoss": (lambda: L.BatchHardTripletLoss(None), 1, 1, "required"),
    "BatchSemiHardTripletLoss": (lambda: L.BatchSemiHardTripletLoss(None), 1, 1, "required"),
    "BatchHardSoftMarginTripletLoss": (lambda: L.BatchHardSoftMarginTripletLoss(None), 1, 1, "required"),
    "MSELoss": (lambda: L.MSELoss(None), 1, None, "required"),
    "EmbedDistillLoss": (lambda: L.EmbedDistillLoss(None), 1, None, "required"),
    "MarginMSELoss": (lambda: L.MarginMSELoss(None), 3, None, "required"),
    "DistillKLDivLoss": (lambda: L.DistillKLDivLoss(None), 3, None, "required"),
    "MegaBatchMarginLoss": (lambda: L.MegaBatchMarginLoss(None), 2, 2, "none"),
    "ContrastiveTensionLossInBatchNegatives": (lambda: L.ContrastiveTensionLossInBatchNegatives(None), 1, 1, "none"),
    "GlobalOrthogonalRegularizationLoss": (lambda: L.GlobalOrthogonalRegularizationLoss(None), 1, None, "optional"),
    "MatryoshkaLoss": (lambda: L.MatryoshkaLoss(None, L.CoSENTLoss(None), [16, 8]), 2, 2, "required"),
    "AdaptiveLayerLoss": (lambda: L.AdaptiveLayerLoss(None, MNRL), 2, None, "none"),
    "Matryoshka2dLoss": (lambda: L.Matryoshka2dLoss(None, L.TripletLoss(None), [16, 8]), 3, 3, "none"),
    "CachedMultipleNegativesRankingLoss": (lambda: L.CachedMultipleNegativesRankingLoss(None), 2, None, "none"),
    "CachedMultipleNegativesSymmetricRankingLoss": (
        lambda: L.CachedMultipleNegativesSymmetricRankingLoss(None), 2, None, "none"),
    "CachedGISTEmbedLoss": (lambda: L.CachedGISTEmbedLoss(None, guide=object()), 2, None, "none"),
}


def test_catalogue_is_complete():
    exported = {name for name in L.__all__ if isinstance(getattr(L, name), type)
                and issubclass(getattr(L, name), L.Loss) and name != "Loss"}
    assert exported == set(CATALOGUE)


def _rule(rule, n):
    return rule[n] if isinstance(rule, dict) else rule


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_accepts_its_columns(name):
    factory, lo, hi, rule = CATALOGUE[name]
    loss = factory()
    for n in range(lo, (hi if hi is not None else lo + 2) + 1):
        r = _rule(rule, n)
        loss.validate_columns(n, has_label=r != "none")
        if r == "optional":
            loss.validate_columns(n, has_label=False)


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_rejects_wrong_column_count(name):
    factory, lo, hi, rule = CATALOGUE[name]
    loss = factory()
    wrong = [n for n in (lo - 1, (hi + 1) if hi is not None else None) if n is not None and n >= 0]
    for n in wrong:
        has_label = _rule(rule, max(lo, min(n, hi or n))) != "none"
        with pytest.raises(ValueError, match=re.escape(name) + r" .*expects .*input column") as err:
            loss.validate_columns(n, has_label=has_label)
        assert f"has {n}" in str(err.value)


@pytest.mark.parametrize("name", sorted(CATALOGUE))
def test_rejects_missing_or_extra_label(name):
    factory, lo, hi, rule = CATALOGUE[name]
    loss = factory()
    r = _rule(rule, lo)
    if r == "required":
        with pytest.raises(ValueError, match=re.escape(name) + " .*needs .*label"):
            loss.validate_columns(lo, has_label=False)
    elif r == "none":
        with pytest.raises(ValueError, match=re.escape(name) + " .*takes no label"):
            loss.validate_columns(lo, has_label=True)


def test_error_messages_read_well():
    with pytest.raises(ValueError) as err:
        L.TripletLoss(None).validate_columns(2, has_label=False)
    assert str(err.value) == ("TripletLoss expects exactly 3 input columns (anchor, positive, negative), "
                              "but the dataset has 2.")
    with pytest.raises(ValueError) as err:
        L.CoSENTLoss(None).validate_columns(2, has_label=False)
    assert "CoSENTLoss needs a float similarity score label" in str(err.value)


def test_constructor_checks():
    with pytest.raises(ValueError, match="query_to_doc"):
        L.MultipleNegativesRankingLoss(None, directions=("doc_to_query",))
    with pytest.raises(ValueError, match="per_direction"):
        L.MultipleNegativesRankingLoss(None, directions=("query_to_doc", "doc_to_doc"), partition_mode="per_direction")
    with pytest.raises(ValueError, match="hardness_mode"):
        L.MultipleNegativesRankingLoss(None, hardness_mode="bogus")
    with pytest.raises(ValueError, match="Scale"):
        L.MultipleNegativesRankingLoss(None, scale=0)
    with pytest.raises(ValueError, match="margin_strategy"):
        L.GISTEmbedLoss(None, guide=object(), margin_strategy="bogus")
    with pytest.raises(ValueError, match="guide"):
        L.GISTEmbedLoss(None)
    with pytest.raises(ValueError, match="matryoshka_weights"):
        L.MatryoshkaLoss(None, MNRL, [8, 4], matryoshka_weights=[1.0])
    with pytest.raises(ValueError, match="layer_weighting"):
        L.AdaptiveLayerLoss(None, MNRL, layer_weighting="cubic")
    with pytest.raises(ValueError, match="temperature"):
        L.DistillKLDivLoss(None, temperature=0.0)
    with pytest.raises(ValueError, match="Unknown similarity"):
        L.MultipleNegativesRankingLoss(None, similarity_fct="cosine_similarity")
    with pytest.raises(ValueError, match=r"loss_fct must be one of .*'hinge'"):
        L.CosineSimilarityLoss(None, loss_fct="hinge")


def test_similarity_by_name_and_config():
    from stcore_jax.similarity import SimilarityFunction, dot_score, pairwise_dot_score

    assert L.MultipleNegativesRankingLoss(None, similarity_fct="dot_score").similarity_fct is dot_score
    assert L.MultipleNegativesRankingLoss(None, similarity_fct=SimilarityFunction.DOT).similarity_fct is dot_score
    assert L.CoSENTLoss(None, similarity_fct="dot").similarity_fct is pairwise_dot_score
    assert L.MultipleNegativesRankingLoss(None).get_config_dict()["similarity_fct"] == "cos_sim"


def test_unknown_context_keyword_is_an_error():
    with pytest.raises(TypeError, match="maks"):
        MNRL([], None, maks=None)
