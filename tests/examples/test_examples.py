"""Every example script runs in-process (``main(argv)``) on a tiny slice of the local STS benchmark.

Smoke checks: a few steps with a tiny random model, a finite final loss, and an export that loads.
"""

import importlib
import math
import os

import numpy as np
import pytest

# 8 simulated devices: --batch-size is per device, so 2 -> a global batch of 16. A max length of 8
# tokens leaves one length bucket, so each step and each encode compiles once.
COMMON = ["--max-steps", "2", "--max-rows", "48", "--batch-size", "2", "--max-seq-length", "8"]

CASES = {
    "training_stsb_cosent": [],
    "training_nli_mnrl": [],
    "training_multi_task": [],
    "training_matryoshka": ["--dims", "32", "16"],
    "training_cached_mnrl": ["--batch-size", "4", "--mini-batch-size", "8"],
    "training_distillation": [],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs(name, tiny_st, stsb_dir, examples_on_path, tmp_path):
    module = importlib.import_module(name)
    argv = ["--model", tiny_st, "--data-dir", str(stsb_dir), "--output-dir", str(tmp_path / "out"), *COMMON, *CASES[name]]
    if name == "training_distillation":
        argv += ["--teacher", tiny_st]
    result = module.main(argv)
    assert math.isfinite(result["loss"]), result
    assert os.path.isfile(os.path.join(result["export"], "modules.json"))
    assert os.path.isfile(os.path.join(result["export"], "README.md"))
    assert result["metrics"] and all(math.isfinite(v) for v in result["metrics"].values())
    from stcore_jax import SentenceTransformer

    emb = SentenceTransformer(result["export"]).encode(["A man is playing a flute."])
    assert emb.shape == (1, 32) and np.isfinite(emb).all()


def test_local_triplets_from_stsb(stsb_dir, examples_on_path):
    """The NLI examples' local stand-in: positives are high-scoring pairs, negatives low-scoring sentences."""
    from common import nli_triplets

    from stcore_jax.config.datasets import load_stsb

    trip = nli_triplets(str(stsb_dir), "train", 50)
    rows = load_stsb(str(stsb_dir), "train")
    score = {(a, b): s for a, b, s in zip(rows["sentence1"], rows["sentence2"], rows["score"])}
    low = {b for a, b, s in zip(rows["sentence1"], rows["sentence2"], rows["score"]) if s < 0.3}
    assert trip.column_names == ["anchor", "positive", "negative"] and len(trip) == 50
    assert all(score[(a, p)] >= 0.6 for a, p in zip(trip["anchor"], trip["positive"]))
    assert all(n in low for n in trip["negative"])


def test_missing_local_data_is_a_clear_error(examples_on_path, tmp_path):
    from common import nli_triplets

    with pytest.raises(FileNotFoundError, match="neither train.jsonl"):
        nli_triplets(str(tmp_path), "train")
