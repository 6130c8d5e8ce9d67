"""Faults during training (fresh processes, CPU, 8 devices): kill -9 at a random step, kill -9 inside a
checkpoint write (at two points of it), SIGTERM mid-epoch. After each, ``resume_from_checkpoint=True``
continues, and the final parameters equal an uninterrupted run's bitwise.

Checkpoints are written in the background (training/checkpoint.py ``start_checkpoint``), so the same run
checks that too: training goes on while a (slowed) write is in flight, the export inside a checkpoint is the
model of its step (not the live one of a later step), and a write stopped dead holds only the end of training.

One run survives the whole sequence: each fault is checked where it happens, and the bitwise equality
at the end holds only if every resume was exact. worker.py: 96 rows / global batch 16 = 6 steps per
epoch, 10 steps, a checkpoint every 4. The random step comes from ``STCORE_TEST_SEED`` (conftest.py
``test_rng``; a failure's report names the seed to replay it with).
"""

import os
import re
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from run_workers import load_dump
from stcore_jax import SentenceTransformer
from stcore_jax.training import checkpoint as ckpt

PAUSE, SLOW = "STCORE_JAX_TEST_CHECKPOINT_PAUSE", "STCORE_JAX_TEST_CHECKPOINT_SLOW"


def _dirs(out):
    return sorted(os.listdir(out)) if os.path.isdir(out) else []


def _assert_no_fake_checkpoint(out):
    """Every ``checkpoint-N`` directory is complete; anything incomplete is named ``.partial``."""
    for name in _dirs(out):
        if re.fullmatch(r"checkpoint-\d+", name):
            assert ckpt.is_checkpoint(os.path.join(out, name)), f"{name} looks complete but is not"
            assert os.path.isfile(os.path.join(out, name, "model.safetensors")), name


def _steps(lines):
    return [int(line.split()[1]) for line in lines if line.startswith("STEP ")]


def _resumed_from(worker):
    return _steps(worker.lines)[0] - 1


def _line(worker, text):
    """Index of the stdout line ``text`` (read on until it comes)."""
    if text not in worker.lines:
        worker.wait_for(text)
    return worker.lines.index(text)


def _norm(path: str) -> str:
    """A leaf's path with list indices written as dict keys (orbax restores a list of layers as a dict)."""
    return re.sub(r"\[(\d+)\]", r"['\1']", path)


def _flat(tree) -> dict:
    return {_norm(jax.tree_util.keystr(k)): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def _wait_for_checkpoints(out, steps, timeout=120.0):
    """Until the complete checkpoints in ``out`` are ``steps`` (a background write completes after its step)."""
    deadline = time.monotonic() + timeout
    while [s for s, _ in ckpt.list_checkpoints(out)] != steps and time.monotonic() < deadline:
        time.sleep(0.1)


def _kill9(worker):
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait()


def test_survives_kill9_checkpoint_kills_and_sigterm(launch, tmp_path, straight_run, test_rng):
    straight_params = straight_run.params
    out = str(tmp_path / "out")

    # 1. kill -9 at a random step between the first two checkpoints (4 and 8); the worker holds after step k,
    #    so the kill cannot land later (in checkpoint-8) on a slow machine. Checkpoint-4's write is slowed by 3 s:
    #    step 5 runs while it is written (the loop does not wait for it); the kill comes once it is complete.
    k = test_rng.randint(5, 7)
    w = launch("kill_random", out, hold_at_step=k, env={SLOW: "4:3"})
    four, _ = _line(w, "STEP 4"), _line(w, "CHECKPOINT_WRITE_BEGIN 4")  # STEP 4 is printed before the save
    end, _ = _line(w, "CHECKPOINT_WRITE_END 4"), _line(w, f"STEP {k}")
    assert 5 in _steps(w.lines[four + 1:end]), w.lines  # a step ran while checkpoint-4 was written
    _wait_for_checkpoints(out, [4])  # the rename comes after the END line
    _kill9(w)
    _assert_no_fake_checkpoint(out)
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [4], (k, _dirs(out))
    # The export in checkpoint-4 is the model at step 4 (a host snapshot), not the live model of step 5 on: equal
    # to checkpoint-4's orbax parameters; the control: they differ from the final ones.
    four_dir = os.path.join(out, "checkpoint-4")
    exported = _flat(SentenceTransformer(four_dir).params)
    state = _flat(ocp.StandardCheckpointer().restore(os.path.join(four_dir, "state"))["trainable"]["model"])
    final = {_norm(k): v for k, v in straight_params.items()}  # worker.py's flat_params
    assert exported.keys() == state.keys() == final.keys() and len(final) > 10
    for name in state:
        np.testing.assert_array_equal(exported[name], state[name], err_msg=name)
    assert any(not np.array_equal(exported[n], final[n]) for n in exported)

    # 2. kill -9 while checkpoint-8's orbax write is in flight (stopped dead in the background): training runs on
    #    to step 10 and waits there for the write; checkpoint-4 is what counts.
    w = launch("kill_in_state_write", out, resume=True, env={PAUSE: "8:state"})
    _line(w, "PAUSED_IN_CHECKPOINT 8:state"), _line(w, "STEP 10")
    assert _resumed_from(w) == 4
    time.sleep(1.0)
    assert w.proc.poll() is None and "DONE" not in w.lines  # the end of training waits for the write
    _kill9(w)
    assert "checkpoint-8.partial" in _dirs(out) and "checkpoint-8" not in _dirs(out)
    _assert_no_fake_checkpoint(out)

    # 3. kill -9 after everything is written, just before the rename. The next start finds a complete
    #    partial (trainer_state.json is written last) and promotes it.
    w = launch("kill_before_rename", out, resume=True, env={PAUSE: "8:rename"})
    w.wait_for("PAUSED_IN_CHECKPOINT")
    assert _resumed_from(w) == 4  # the partial left by stage 2 was incomplete: removed, not used
    _kill9(w)
    assert "checkpoint-8" not in _dirs(out)
    _assert_no_fake_checkpoint(out)

    # 4. SIGTERM mid-epoch (epoch 1 is steps 7-12), while step 9's callbacks run (they sleep 2 s):
    #    finish the step, checkpoint, exit 143.
    w = launch("sigterm", out, resume=True, step_sleep=2.0)
    w.wait_for("STEP 9")
    assert _resumed_from(w) == 8  # the promoted checkpoint
    t0 = time.monotonic()
    w.proc.send_signal(signal.SIGTERM)
    rc = w.finish(timeout=60)
    assert time.monotonic() - t0 < 60
    err = w.stderr()
    assert rc == 128 + signal.SIGTERM, err[-3000:]
    m = re.search(r"received SIGTERM; stopped after step (\d+) and wrote (\S+checkpoint-(\d+))\.", err)
    assert m, err[-3000:]
    stopped = int(m.group(1))
    assert stopped == 9 and int(m.group(3)) == stopped and "resume_from_checkpoint=True" in err
    assert ckpt.is_checkpoint(m.group(2)) and not any(n.endswith(".partial") for n in _dirs(out))
    _assert_no_fake_checkpoint(out)
    assert "DONE" not in w.lines

    # 5. Resume to the end: bitwise equal to the uninterrupted run.
    w = launch("final", out, resume=True, dump=str(tmp_path / "resumed"))
    assert w.finish() == 0, w.stderr()[-3000:]
    assert _resumed_from(w) == stopped
    resumed = load_dump(str(tmp_path / "resumed"))
    assert resumed.keys() == straight_params.keys()
    for name in straight_params:
        np.testing.assert_array_equal(resumed[name], straight_params[name], err_msg=f"{name} (random kill at {k})")
