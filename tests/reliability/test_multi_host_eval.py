"""Evaluation and ``encode`` on every host: 2 processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo)
against 1 process x 8 devices, the same tiny BERT and inputs.

Across processes ``encode`` cuts every global batch (same rows, bucket and padded size as on one process) into
the processes' contiguous blocks; each process pads and runs only its block and the output is all-gathered.
So the embeddings equal the 1-process ones, an EmbeddingSimilarityEvaluator's and an
InformationRetrievalEvaluator's metrics equal them within 1e-6 on both processes, and each process ran only its
block's rows (``model.rows_run_here``). The trainer's evaluation call (``run_evaluator``) runs the evaluator
on both processes (no longer process 0 alone), and both compute and return the same metrics.

Control: the same encode with a deliberate bug (every process feeds process 0's block) gives other embeddings,
so the comparison sees a wrong row assignment.

One launch (the two processes and the 1-process reference side by side) does everything: start-up and
compiles dominate.
"""

import json
import os
import socket

import numpy as np
import pytest

from run_workers import Worker

SCRIPT = os.path.join(os.path.dirname(__file__), "multi_host_eval_worker.py")
N_ENCODE, BATCH, LOCAL = 52, 8, 4  # as multi_host_eval_worker.py; LOCAL: devices per process


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _share(n_rows: int, process: int) -> int:
    """Rows of ``n_rows`` inputs that ``process`` runs: its block ``[4p, 4p + 4)`` of every global batch of 8."""
    return sum(min(max(min(BATCH, n_rows - s) - LOCAL * process, 0), LOCAL) for s in range(0, n_rows, BATCH))


@pytest.fixture(scope="module")
def runs(tiny_bert, stsb_dir, compile_cache, tmp_path_factory):
    """``{"one": [report], "two": [report0, report1]}`` and the embeddings (``..._npz``) of the three processes."""
    tmp = tmp_path_factory.mktemp("multi_host_eval")
    coord = f"127.0.0.1:{_free_port()}"
    base = {"model_dir": tiny_bert, "stsb": str(stsb_dir)}
    cfgs = {"one.0": dict(base, local_devices=8, out_dir=str(tmp / "out1"), dump=str(tmp / "one"))}
    for i in range(2):
        cfgs[f"two.{i}"] = dict(base, local_devices=LOCAL, num_processes=2, process_id=i, coordinator=coord,
                                out_dir=str(tmp / "out2"), dump=str(tmp / "two"))
    workers = {n: Worker(c, str(tmp), compile_cache, n, script=SCRIPT) for n, c in cfgs.items()}
    try:
        for n, w in workers.items():
            assert w.finish(timeout=600) == 0, f"{n}: {w.stderr()[-3000:]}"
    finally:
        for w in workers.values():
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
    out = {n: json.load(open(tmp / f"{n}.json")) for n in cfgs}
    for n in cfgs:
        out[n + "_npz"] = dict(np.load(tmp / f"{n}.npz"))
    print("seconds:", {n: out[n]["seconds"] for n in cfgs})
    return out


def _assert_metrics_equal(got, want, what, atol=1e-6):
    assert got.keys() == want.keys(), what
    for k in want:
        assert abs(got[k] - want[k]) <= atol, f"{what}: {k} {got[k]} vs {want[k]}"


def test_encode_across_processes_equals_one_process(runs):
    want = runs["one.0_npz"]["embeddings"]
    assert want.shape[0] == N_ENCODE
    for p in range(2):
        assert runs[f"two.{p}"]["mesh_devices"] == 8
        np.testing.assert_allclose(runs[f"two.{p}_npz"]["embeddings"], want, rtol=0, atol=1e-6,
                                   err_msg=f"process {p}")


def test_each_process_encodes_only_its_share(runs):
    assert runs["one.0"]["rows_encode"] == N_ENCODE
    shares = [runs[f"two.{p}"]["rows_encode"] for p in range(2)]
    assert shares == [_share(N_ENCODE, 0), _share(N_ENCODE, 1)] == [28, 24]  # the last batch of 4: process 0's block
    for part in ("rows_sts", "rows_ir", "rows_run_evaluator"):
        rows = [runs[f"two.{p}"][part] for p in range(2)]
        assert sum(rows) == runs["one.0"][part] and min(rows) > 0, (part, rows, runs["one.0"][part])
        assert max(rows) <= (runs["one.0"][part] + BATCH) // 2 + LOCAL, (part, rows)  # about half each


def test_evaluator_metrics_equal_one_process(runs):
    for name in ("sts", "ir"):
        want = runs["one.0"][name]
        assert len(want) >= 2, want
        for p in range(2):
            _assert_metrics_equal(runs[f"two.{p}"][name], want, f"{name}, process {p}")


def test_evaluator_runs_on_every_process_in_the_trainers_call(runs):
    """``run_evaluator`` (what the trainer calls at an eval step): both processes ran the evaluator (each its share
    of the rows, above) and computed the same metrics, and both got process 0's back; equal to 1 process."""
    computed = [runs[f"two.{p}"]["run_evaluator_computed"] for p in range(2)]
    assert len(computed[0]) == len(computed[1]) == 1, computed
    _assert_metrics_equal(computed[1][0], computed[0][0], "process 1 vs process 0")
    for p in range(2):
        _assert_metrics_equal(runs[f"two.{p}"]["run_evaluator"], computed[0][0], f"returned, process {p}")
    _assert_metrics_equal(computed[0][0], runs["one.0"]["run_evaluator_computed"][0], "vs 1 process")


def test_control_wrong_row_assignment_is_seen(runs):
    want = runs["one.0_npz"]["embeddings"]
    for p in range(2):
        wrong = runs[f"two.{p}_npz"]["mutant_embeddings"]
        off = np.abs(wrong - want).max(axis=1) > 1e-3
        assert off.sum() == _share(N_ENCODE, 1), off.sum()  # every row of process 1's blocks is another row's
