"""Exact resume: 20 steps straight == a run stopped after 10 steps, then a fresh process resuming (bitwise)."""

import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = os.path.join(os.path.dirname(__file__), "resume_script.py")


def _run(model_dir, stsb_dir, out_dir, stop_at, resume, dump):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    subprocess.run([sys.executable, SCRIPT, model_dir, str(stsb_dir), out_dir, str(stop_at), resume, dump],
                   check=True, env=env, capture_output=True, text=True)
    return dict(np.load(dump + ".npz")), json.load(open(dump + ".json"))


def test_resume_is_bitwise_exact(tiny_bert_dir, stsb_dir, tmp_path):
    # 96 rows / global batch 16 = 6 steps per epoch, so step 10 is mid-epoch (epoch 1, batch 4).
    straight, straight_rows = _run(tiny_bert_dir, stsb_dir, str(tmp_path / "a"), 20, "none", str(tmp_path / "a_dump"))
    _, first_rows = _run(tiny_bert_dir, stsb_dir, str(tmp_path / "b"), 10, "none", str(tmp_path / "b1"))
    assert os.path.isdir(tmp_path / "b" / "checkpoint-10")
    resumed, resumed_rows = _run(tiny_bert_dir, stsb_dir, str(tmp_path / "b"), 20, "true", str(tmp_path / "b2"))
    assert first_rows + resumed_rows == straight_rows  # the same batches, in the same order
    assert [s for s, _ in resumed_rows] == list(range(11, 21))
    assert straight.keys() == resumed.keys()
    for k in straight:
        np.testing.assert_array_equal(straight[k], resumed[k], err_msg=k)
