"""``stcore-jax`` commands in-process (``main(argv)``) on a tiny model and slices of STS-B."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from stcore_jax.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(tmp_path, model, stsb_dir, **extra):
    text = f"""
model: {{name_or_path: {model}, max_seq_length: 8}}
data: {{train: {stsb_dir}, eval: {stsb_dir}, max_train_rows: 64, max_eval_rows: 40}}
loss: {{name: CoSENTLoss, kwargs: {{scale: 20.0}}}}
arguments:
  output_dir: {tmp_path / 'run'}
  max_steps: 2
  per_device_train_batch_size: 2
  learning_rate: 1.0e-4
  save_strategy: "no"
  logging_steps: 1
  length_buckets: [8]
evaluator: {{name: EmbeddingSimilarityEvaluator, kwargs: {{name: sts-dev}}}}
"""
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return str(p)


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "devices: 8 total" in out and "processes: 1" in out and "mesh (default): {'data': 8}" in out
    assert "jax: " in out and "stcore-jax: " in out


def test_train_evaluate_encode(tmp_path, tiny_cli_model, stsb_dir, capsys):
    cfg = _config(tmp_path, tiny_cli_model, stsb_dir)
    assert main(["train", cfg, "--set", "mesh.data=4"]) == 0
    out = capsys.readouterr().out
    final = tmp_path / "run" / "final"
    assert (final / "modules.json").is_file() and (final / "README.md").is_file()
    trained = json.loads(out[out.index("{"): out.index("}") + 1])
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "logs.jsonl") if '"loss"' in line]
    assert len(losses) >= 2 and np.isfinite(losses).all()
    # The trainer filled the model card: data, loss, non-default arguments, evaluator results, logs.
    card = (final / "README.md").read_text()
    assert "* Size: 64 training samples" in card and "<code>CoSENTLoss</code>" in card
    assert "- `max_steps`: 2" in card and "- `learning_rate`: 0.0001" in card
    assert f"| spearman_cosine | {trained['sts-dev_spearman_cosine']:.4f} |" in card
    assert "### Training Logs" in card

    # evaluate: the same evaluator on the exported model gives the numbers train printed.
    assert main(["evaluate", str(final), cfg, "--output", str(tmp_path / "m.json")]) == 0
    evaluated = json.loads((tmp_path / "m.json").read_text())
    assert evaluated.keys() == trained.keys()
    np.testing.assert_allclose([evaluated[k] for k in trained], list(trained.values()), atol=1e-5)

    # encode: a .npy equal to SentenceTransformer.encode.
    texts = ["A man is playing a flute.", "A girl is styling her hair.", "Hi"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n\n")
    assert main(["encode", str(final), "--input", str(tmp_path / "in.txt"), "--output", str(tmp_path / "e.npy")]) == 0
    from stcore_jax import SentenceTransformer

    np.testing.assert_allclose(np.load(tmp_path / "e.npy"), SentenceTransformer(str(final)).encode(texts), atol=1e-6)


@pytest.mark.parametrize("argv, match", [
    (["encode", "m", "--input", "missing.txt", "--output", "x.npy"], "--input 'missing.txt' does not exist"),
    (["encode", "m", "--input", "in.txt", "--output", "x.txt"], "--output 'x.txt' must end with .npy"),
    (["encode", "m", "--input", "in.txt", "--output", "no_dir/x.npy"], "the directory .* does not exist"),
    (["train", "missing.yaml"], "config file 'missing.yaml' does not exist"),
    (["train", "cfg", "--set", "loss.name=Nope"], "config key 'loss.name': unknown loss 'Nope'; allowed values"),
    (["train", "cfg", "--set", "mesh.data=16"], "config key 'mesh': data=16 x fsdp=1 needs 16 devices but only 8"),
    (["train", "cfg", "--set", "arguments.per_device_train_batch_size=two"], "'arguments.per_device_train_batch_size' must be int"),
    (["evaluate", "m", "cfg", "--set", "evaluator.name=null"], "'evaluator.name' is required for evaluate"),
    (["train", "cfg", "--set", "nonsense"], "expected key=value"),
])
def test_bad_input_fails_before_loading(argv, match, tmp_path, stsb_dir, monkeypatch, capsys):
    """Exit status 2 and a message naming the problem; no model is loaded and nothing is written."""
    import stcore_jax.config.build as build
    import stcore_jax.sentence_transformer as st

    def forbidden(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(build, "build_model", forbidden)
    monkeypatch.setattr(st.SentenceTransformer, "__init__", forbidden)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.txt").write_text("hello\n")
    cfg = _config(tmp_path, "some/model", stsb_dir)
    argv = [cfg if a == "cfg" else a for a in argv]
    assert main(argv) == 2
    assert __import__("re").search(match, capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


def test_launch_dry_run_single_host_and_pod():
    def dry(*args):
        out = subprocess.run([sys.executable, os.path.join(ROOT, "tpu_configs", "launch.py"), *args, "--dry-run"],
                             capture_output=True, text=True, check=False)
        return out.returncode, out.stdout.splitlines(), out.stderr

    rc, lines, _ = dry("v5e-8", "--name", "t1", "--project", "p")
    assert rc == 0
    loc = "--zone us-west4-a --project p"
    assert lines[0] == f"gcloud compute tpus tpu-vm create t1 {loc} --accelerator-type v5litepod-8 --version v2-alpha-tpuv5-lite"
    assert any(line.startswith("git -C ") and "archive" in line for line in lines)
    install = next(line for line in lines if "pip install" in line)
    assert "--worker=all" in install and ".[tpu]" in install and "gcsfuse" not in install
    train = next(line for line in lines if "stcore-jax train" in line)
    assert "--worker=all" in train and "tpu_configs/v5e-8.yaml" in train and "output_dir=output/t1-v5e-8" in train
    assert lines[-1] == f"gcloud compute tpus tpu-vm scp --recurse 't1:~/stcore_jax/output/t1-v5e-8' ./results {loc} --worker=0"

    rc, lines, _ = dry("v5p-64", "--name", "pod", "--bucket", "gs://bkt/runs", "--delete")
    assert rc == 0
    assert "--accelerator-type v5p-64 --version v2-alpha-tpuv5" in lines[0]
    install = next(line for line in lines if "pip install" in line)
    assert "gcsfuse --implicit-dirs bkt /mnt/stcore" in install
    train = next(line for line in lines if "stcore-jax train" in line)
    assert "--worker=all" in train and "tpu_configs/v5p-64.yaml" in train and "output_dir=/mnt/stcore/runs/pod-v5p-64" in train
    assert lines[-2] == "gcloud storage cp --recursive gs://bkt/runs/pod-v5p-64 ./results"
    assert lines[-1].startswith("gcloud compute tpus tpu-vm delete pod")

    rc, lines, err = dry("v5p-64", "--name", "pod")
    assert rc != 0 and "8 hosts: pass --bucket" in err and not lines
