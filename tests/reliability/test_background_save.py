"""Checkpoints written in the background (training/checkpoint.py ``start_checkpoint``): training goes on
while a checkpoint is written, its export is the model of its step, a ``kill -9`` during the write leaves only
complete checkpoints, and resuming gives exactly the parameters of the uninterrupted run (bitwise).

worker.py: 96 rows / global batch 16 = 6 steps per epoch, 10 steps, a checkpoint every 4. The write of a
checkpoint is slowed (``STCORE_JAX_TEST_CHECKPOINT_SLOW``) or stopped dead (``..._PAUSE``) by the test hooks
of checkpoint.py, so the kill lands mid-write deterministically.
"""

import os
import re
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from run_workers import load_dump
from stcore_jax import SentenceTransformer
from stcore_jax.training import checkpoint as ckpt

PAUSE, SLOW = "STCORE_JAX_TEST_CHECKPOINT_PAUSE", "STCORE_JAX_TEST_CHECKPOINT_SLOW"


def _line(worker, text, timeout=300.0):
    """Index of the stdout line ``text`` (read on until it comes)."""
    if text not in worker.lines:
        worker.wait_for(text, timeout)
    return worker.lines.index(text)


def _steps(lines):
    return [int(x.split()[1]) for x in lines if x.startswith("STEP ")]


def _kill9(worker):
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait()


def _dirs(out):
    return sorted(os.listdir(out))


def _norm(path: str) -> str:
    """A leaf's path with list indices written as dict keys (orbax restores a list of layers as a dict)."""
    return re.sub(r"\[(\d+)\]", r"['\1']", path)


def _flat(tree) -> dict:
    return {_norm(jax.tree_util.keystr(k)): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def test_background_save_survives_kill9_and_resumes_bitwise(launch, tmp_path, straight_run):
    out = str(tmp_path / "out")

    # 1. checkpoint-4's write takes 3 s more: the steps after it run during the write (the loop does not
    #    wait); the worker then holds after step 7 and is killed once checkpoint-4 is complete.
    w = launch("slow_write", out, hold_at_step=7, env={SLOW: "4:3"})
    four, _ = _line(w, "STEP 4"), _line(w, "CHECKPOINT_WRITE_BEGIN 4")  # STEP 4 is printed before the save
    end = _line(w, "CHECKPOINT_WRITE_END 4")
    _line(w, "STEP 7")
    assert _steps(w.lines[four + 1:end])[:2] == [5, 6], w.lines  # they ran while checkpoint-4 was written
    deadline = time.monotonic() + 60
    while [s for s, _ in ckpt.list_checkpoints(out)] != [4] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [4], _dirs(out)
    _kill9(w)
    # The export in checkpoint-4 is the model at step 4 (a host snapshot), not the live model of a later step:
    # equal to checkpoint-4's orbax parameters; the control: they differ from the final ones.
    four_dir = os.path.join(out, "checkpoint-4")
    exported = _flat(SentenceTransformer(four_dir).params)
    state = _flat(ocp.StandardCheckpointer().restore(os.path.join(four_dir, "state"))["trainable"]["model"])
    final = {_norm(k): v for k, v in straight_run.params.items()}  # worker.py's flat_params
    assert exported.keys() == state.keys() == final.keys() and len(final) > 10
    for name in state:
        np.testing.assert_array_equal(exported[name], state[name], err_msg=name)
    assert any(not np.array_equal(exported[n], final[n]) for n in exported)

    # 2. kill -9 while checkpoint-8 is being written: training ran on to step 10 and waits there for the
    #    write (it never ends: the hook stops it dead); the half-written checkpoint is not visible.
    w = launch("kill_in_background_write", out, resume=True, env={PAUSE: "8:state"})
    _line(w, "PAUSED_IN_CHECKPOINT 8:state")
    _line(w, "STEP 10")
    assert _steps(w.lines)[0] == 5  # resumed from checkpoint-4
    time.sleep(1.0)
    assert w.proc.poll() is None and "DONE" not in w.lines  # the end of training waits for the write
    _kill9(w)
    names = _dirs(out)
    assert "checkpoint-8" not in names and "checkpoint-8.partial" in names, names
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [4], names

    # 3. Resume to the end with save_total_limit=1: from checkpoint-4 (the partial is tidied away), the final
    #    parameters bitwise equal to the uninterrupted run's; rotation removed checkpoint-4 only once
    #    checkpoint-8 was complete.
    w = launch("final", out, resume=True, save_total_limit=1, dump=str(tmp_path / "resumed"))
    assert w.finish() == 0, w.stderr()[-3000:]
    assert _steps(w.lines)[0] == 5
    assert _dirs(out) == ["checkpoint-8", "logs.jsonl"], _dirs(out)
    resumed = load_dump(str(tmp_path / "resumed"))
    assert resumed.keys() == straight_run.params.keys()
    for name in resumed:
        np.testing.assert_array_equal(resumed[name], straight_run.params[name], err_msg=name)


def test_a_failed_background_write_raises_at_the_wait_and_leaves_no_checkpoint(tmp_path):
    out = str(tmp_path)

    def export(directory):
        raise OSError("disk full")

    pending = ckpt.start_checkpoint(out, 3, {"w": jnp.arange(4.0)}, {"global_step": 3}, export=export)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"checkpoint-3 \(step 3\).*OSError: disk full"):
        pending.wait()
    assert ckpt.list_checkpoints(out) == [] and "checkpoint-3" not in _dirs(out), _dirs(out)
    ckpt.clean_partials(out)  # the next start removes the leftovers (the partial, orbax's staged state)
    assert _dirs(out) == []
