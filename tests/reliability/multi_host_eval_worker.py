"""Evaluation and ``encode`` on every process, driven by test_multi_host_eval.py.

``python multi_host_eval_worker.py CONFIG.json`` (config: ``model_dir``, ``stsb``, ``out_dir``, ``dump``,
``local_devices``, and for a multi-process run ``num_processes``, ``process_id``, ``coordinator``). In one
start-up it: encodes 52 STS sentences (``batch_size=8``: 6 full global batches and one of 4 rows, which on
2 x 4 devices lies wholly in process 0's block); runs an EmbeddingSimilarityEvaluator and an
InformationRetrievalEvaluator; repeats the encode with a deliberate bug (every process feeds the rows of
process 0's block, the test's control); and makes the trainer's evaluation call (``run_evaluator``). It
writes ``{dump}.{process}.npz`` (embeddings) and ``{dump}.{process}.json`` (metrics, and how many rows this
process ran in each part: ``model.rows_run_here``) and prints ``DONE``.
"""

import json
import os
import sys
import time

T_START = time.perf_counter()

CFG = json.load(open(sys.argv[1]))
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={CFG.get('local_devices', 8)}"

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
if CFG.get("num_processes", 1) > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=CFG["coordinator"], num_processes=CFG["num_processes"],
                               process_id=CFG["process_id"])

import numpy as np  # noqa: E402

import stcore_jax.base.model as base_model  # noqa: E402
from stcore_jax import SentenceTransformer  # noqa: E402
from stcore_jax.evaluation import EmbeddingSimilarityEvaluator, InformationRetrievalEvaluator  # noqa: E402
from stcore_jax.training.evaluate import run_evaluator  # noqa: E402
from stcore_jax.util import read_sts  # noqa: E402

N_ENCODE = 52


class Recording:
    """An evaluator that records the metrics this process computed (before run_evaluator's broadcast)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, model, output_path=None, epoch=-1, steps=-1):
        out = self.inner(model, output_path=output_path, epoch=epoch, steps=steps)
        self.calls.append({k: float(v) for k, v in out.items()})
        return out

    def __getattr__(self, name):
        return getattr(self.inner, name)


SECONDS = {}  # wall time of each part (in the report: start-up and compiles dominate)


def counted(model, fn, part):
    """``(fn(), rows this process ran for it)``."""
    before, t0 = model.rows_run_here, time.perf_counter()
    out = fn()
    SECONDS[part] = round(time.perf_counter() - t0, 2)
    return out, model.rows_run_here - before


def first_block_everywhere():
    """The control's bug: every process feeds the rows of process 0's block of each batch."""
    real = base_model._local_rows

    def wrong(sharding, n):
        lo, hi = real(sharding, n)
        return 0, hi - lo

    return real, wrong


def main():
    s1, s2, scores = read_sts(os.path.join(CFG["stsb"], "sts-dev.csv"))
    model = SentenceTransformer(CFG["model_dir"])
    report = {"process": jax.process_index(), "mesh_devices": int(model._mesh().devices.size)}
    arrays = {}

    texts = s1[:N_ENCODE]
    arrays["embeddings"], report["rows_encode"] = counted(
        model, lambda: model.encode(texts, batch_size=8, normalize_embeddings=True), "encode")

    sts = EmbeddingSimilarityEvaluator(s1[:40], s2[:40], scores[:40], name="sts", batch_size=8)
    report["sts"], report["rows_sts"] = counted(model, lambda: sts(model), "sts")
    corpus = {f"d{i}": t for i, t in enumerate(dict.fromkeys(s2[:30]))}
    cid = {t: k for k, t in corpus.items()}
    queries = {f"q{i}": s for i, s in enumerate(s1[:30])}
    relevant = {f"q{i}": {cid[s2[i]]} for i in range(30)}
    ir = InformationRetrievalEvaluator(queries, corpus, relevant, name="ir", batch_size=8,
                                       mrr_at_k=[5], ndcg_at_k=[5], accuracy_at_k=[1, 5], precision_recall_at_k=[5],
                                       map_at_k=[5])
    report["ir"], report["rows_ir"] = counted(model, lambda: ir(model), "ir")

    if jax.process_count() > 1:
        real, wrong = first_block_everywhere()
        base_model._local_rows = wrong
        try:
            arrays["mutant_embeddings"] = model.encode(texts, batch_size=8, normalize_embeddings=True)
        finally:
            base_model._local_rows = real

    # The trainer's evaluation call (training/evaluate.py run_evaluator), as the loop makes it at an eval step:
    # every process runs the evaluator, and process 0's metrics come back to all of them.
    recording = Recording(EmbeddingSimilarityEvaluator(s1[:40], s2[:40], scores[:40], name="sts", batch_size=8))
    report["run_evaluator"], report["rows_run_evaluator"] = counted(
        model, lambda: run_evaluator(recording, model, output_path=CFG["out_dir"], epoch=0, steps=2,
                                     is_main=jax.process_index() == 0), "run_evaluator")
    report["run_evaluator_computed"] = recording.calls

    report["seconds"] = {**SECONDS, "total": round(time.perf_counter() - T_START, 2)}
    prefix = f"{CFG['dump']}.{jax.process_index()}"
    np.savez(f"{prefix}.npz", **arrays)
    json.dump(report, open(f"{prefix}.json", "w"))
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
