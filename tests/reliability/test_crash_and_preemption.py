"""Faults during training (fresh processes, CPU, 8 devices): kill -9 at a random step, kill -9 inside a
checkpoint write (at two points of it), SIGTERM mid-epoch. After each, ``resume_from_checkpoint=True``
continues, and the final parameters equal an uninterrupted run's bitwise.

One run survives the whole sequence: each fault is checked where it happens, and the bitwise equality
at the end holds only if every resume was exact. worker.py: 96 rows / global batch 16 = 6 steps per
epoch, 10 steps, a checkpoint every 4. The random step comes from ``STCORE_TEST_SEED`` (conftest.py
``test_rng``; a failure's report names the seed to replay it with).
"""

import os
import re
import signal
import time

import numpy as np

from run_workers import load_dump
from stcore_jax.training import checkpoint as ckpt

PAUSE = "STCORE_JAX_TEST_CHECKPOINT_PAUSE"


def _dirs(out):
    return sorted(os.listdir(out)) if os.path.isdir(out) else []


def _assert_no_fake_checkpoint(out):
    """Every ``checkpoint-N`` directory is complete; anything incomplete is named ``.partial``."""
    for name in _dirs(out):
        if re.fullmatch(r"checkpoint-\d+", name):
            assert ckpt.is_checkpoint(os.path.join(out, name)), f"{name} looks complete but is not"
            assert os.path.isfile(os.path.join(out, name, "model.safetensors")), name


def _resumed_from(worker):
    steps = [int(line.split()[1]) for line in worker.lines if line.startswith("STEP ")]
    return steps[0] - 1


def _kill9(worker):
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait()


def test_survives_kill9_checkpoint_kills_and_sigterm(launch, tmp_path, straight_run, test_rng):
    straight_params = straight_run.params
    out = str(tmp_path / "out")

    # 1. kill -9 at a random step between the first two checkpoints (4 and 8); the worker holds after step k,
    #    so the kill cannot land later (in checkpoint-8) on a slow machine.
    k = test_rng.randint(5, 7)
    w = launch("kill_random", out, hold_at_step=k)
    w.wait_for(f"STEP {k}")
    _kill9(w)
    _assert_no_fake_checkpoint(out)
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [4], (k, _dirs(out))

    # 2. kill -9 while checkpoint-8's orbax write is in flight: checkpoint-4 is what counts.
    w = launch("kill_in_state_write", out, resume=True, env={PAUSE: "8:state"})
    w.wait_for("PAUSED_IN_CHECKPOINT")
    assert _resumed_from(w) == 4
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
