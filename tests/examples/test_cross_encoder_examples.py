"""The CrossEncoder example scripts run in-process (``main(argv)``) on a tiny slice of the local STS benchmark.

Smoke checks: 2 steps with a tiny random model (the bi-encoder directory doubles as the CrossEncoder's
backbone, converted with a fresh head as all-MiniLM-L6-v2 is by default), a finite loss, reranking metrics,
and an export whose predictions in PyTorch sentence-transformers equal ours. The data builders are checked
against the STS-B rows they come from.
"""

import importlib
import math

import numpy as np
import pytest
from datasets import Dataset

# 8 simulated devices: --batch-size is per device, so 2 -> a global batch of 16. A max length of 8 tokens
# leaves one length bucket; --eval-steps 100 keeps evaluation and checkpoints out of the 2 steps.
COMMON = ["--max-steps", "2", "--max-rows", "48", "--batch-size", "2", "--max-seq-length", "8", "--eval-steps", "100",
          "--eval-documents", "5"]
CASES = {
    "cross_encoder_hard_negatives_bce": ["--num-negatives", "3"],
    "cross_encoder_listwise_lambdaloss": ["--num-negatives", "3", "--max-docs", "4"],
}
PAIRS = [["A man is playing a flute.", "A man plays the flute."], ["A plane is taking off.", "A cat sleeps."]]


@pytest.mark.parametrize("name", sorted(CASES))
def test_cross_encoder_example_runs(name, tiny_st, stsb_dir, examples_on_path, tmp_path):
    import torch
    from sentence_transformers import CrossEncoder as RefCrossEncoder

    from stcore_jax import CrossEncoder

    module = importlib.import_module(name)
    argv = ["--model", tiny_st, "--embedding-model", tiny_st, "--data-dir", str(stsb_dir),
            "--output-dir", str(tmp_path / "out"), *COMMON, *CASES[name]]
    result = module.main(argv)
    assert math.isfinite(result["loss"]), result
    metrics = result["metrics"]
    assert {"stsb-dev_ndcg@10", "stsb-dev_mrr@10", "stsb-dev_map", "stsb-dev_base_ndcg@10"} <= set(metrics)
    assert all(0.0 <= v <= 1.0 for v in metrics.values()), metrics
    assert isinstance(result["model"], CrossEncoder)
    # logits (Identity): the trained model in memory (a reload would compile its predict again) vs the export in
    # PyTorch; the two pairs' logits differ by far more than the tolerance, so a wrong export would show
    ours = result["model"].predict(PAIRS, activation_fn=torch.nn.Identity())
    ref = RefCrossEncoder(result["export"], device="cpu")
    theirs = ref.predict(PAIRS, activation_fn=torch.nn.Identity())
    assert ours.shape == (2,) and float(np.abs(ours - theirs).max()) <= 1e-6, (ours, theirs)
    assert abs(float(theirs[0] - theirs[1])) > 1e-4, theirs
    assert type(ref.activation_fn).__name__ == "Sigmoid"  # the default for one label, saved with the export


def test_qa_pairs_are_the_high_scoring_stsb_pairs(stsb_dir, examples_on_path):
    from common import qa_pairs

    from stcore_jax.config.datasets import load_stsb

    rows = load_stsb(str(stsb_dir), "train", 300)
    qa = qa_pairs(str(stsb_dir), "train", 0.8, 300)
    expected = [(a, b) for a, b, s in zip(rows["sentence1"], rows["sentence2"], rows["score"]) if s >= 0.8]
    assert qa.column_names == ["query", "answer"] and list(zip(qa["query"], qa["answer"])) == expected
    assert 10 < len(expected) < 300  # the filter keeps some rows and drops others


def test_graded_lists(examples_on_path):
    """Per query: its graded documents (STS score 0-5) first, best first, then mined negatives at 0, cut to
    max_docs; a query whose documents all score 0 is dropped."""
    from cross_encoder_listwise_lambdaloss import graded_lists

    pairs = Dataset.from_dict({"query": ["q1", "q1", "q2", "q3"], "answer": ["a", "b", "c", "d"],
                               "relevance": [2.0, 4.6, 3.0, 0.0]})
    mined = Dataset.from_dict({"query": ["q1", "q1", "q2", "q3"],
                               "answer": [["a", "x", "y"], ["b", "y", "z"], ["c", "a", "x"], ["d", "x", "z"]],
                               "labels": [[1, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]]})
    out = graded_lists(pairs, mined, max_docs=4)
    assert out.to_dict() == {"query": ["q1", "q2"], "docs": [["b", "a", "x", "y"], ["c", "a", "x"]],
                             "labels": [[4.6, 2.0, 0.0, 0.0], [3.0, 0.0, 0.0]]}
    assert graded_lists(pairs, mined, max_docs=None)["docs"][0] == ["b", "a", "x", "y", "z"]
