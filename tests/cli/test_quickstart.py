"""``stcore-jax quickstart`` end to end, as a user runs it: one process, the default device count.

The job itself exits non-zero unless the held-out Spearman rises by --min-improvement and both the
stcore_jax reload and the PyTorch sentence-transformers load reproduce the embeddings; the test also
reads the numbers it prints.
"""

import os
import re
import subprocess
import sys

# The README's promise, measured (CPU, default --seed 42): 0.7628 -> 0.8718 held-out Spearman, +0.1090; the same
# to 4 decimals on 1, 2 and 8 devices (other reduction orders). Seeds 0/1/2/3 gain +0.120/+0.111/+0.098/+0.122.
# The threshold leaves 0.014 under the default seed's gain for other platforms' rounding.
BEFORE, MIN_GAIN = 0.763, 0.095


def test_quickstart_end_to_end(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the user's device count, not the suite's 8
    proc = subprocess.run([sys.executable, "-m", "stcore_jax.cli", "quickstart", "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=900)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    before = float(re.search(r"before training: \S+ = ([\d.]+)", out).group(1))
    after = float(re.search(r"after training:  \S+ = ([\d.]+)", out).group(1))
    assert abs(before - BEFORE) < 0.002, before  # the pretrained model, evaluated: no training involved
    assert after - before >= MIN_GAIN, (before, after)
    assert float(re.search(r"reloaded with stcore_jax: max abs embedding difference (\S+)", out).group(1)) <= 1e-4
    assert float(re.search(r"PyTorch sentence-transformers: max abs embedding difference (\S+)", out).group(1)) <= 1e-4
    assert "Training: 100%" in proc.stderr  # the progress bar
    card = (tmp_path / "model" / "README.md").read_text()
    assert "base_model: sentence-transformers/all-MiniLM-L6-v2" in card and "helpdesk-heldout" in card


def test_embedded_data_is_held_out():
    """Evaluation sentences never appear in training, and every score level is present in both splits."""
    from stcore_jax.quickstart.data import pairs

    train, held_out = pairs("train"), pairs("eval")
    train_sentences = {s for a, b, _ in train for s in (a, b)}
    assert not train_sentences & {s for a, b, _ in held_out for s in (a, b)}
    assert {s for *_, s in train} == {s for *_, s in held_out} == {0.0, 0.2, 1.0}
    assert len(train) > 300 and len(held_out) > 200
