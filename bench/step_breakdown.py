"""Break the trainer's step time into parts, on the trainer's own compiled pieces and batches.

Builds a SentenceTransformerTrainer (MNRL on fixed-length pairs, as bench/train_perf.py), then
times with real device batches passed as arguments:
  step        the trainer's jitted train step (donated state, optimizer, non-finite guard)
  grad        value_and_grad of the loss over both columns (no optimizer)
  grad-nodrop the same without dropout
  col0        forward + backward of one column only (per-row dropout keys)
  fwd         forward of both columns, no gradient

  python bench/step_breakdown.py --model-dir DIR --batch 256 --seq 128 --bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def timed(name, fn, *args, iters=10, donate=False):
    t0 = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        if donate:
            args = (out[0],) + args[1:]
        t = time.perf_counter()
        out = fn(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
    print(f"{name:12} first {compile_s:6.1f} s   median {statistics.median(times) * 1e3:8.1f} ms", flush=True)
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--iters", type=int, default=10)
    a = p.parse_args()

    import train_perf
    from datasets import Dataset

    from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from stcore_jax.losses import MultipleNegativesRankingLoss
    from stcore_jax.sentence_transformer.losses.embed import compute_loss, row_keys

    model = SentenceTransformer(a.model_dir)
    model.max_seq_length = a.seq
    data = Dataset.from_dict(train_perf.dataset_columns("mnrl", a.batch * 2, a.seq))
    loss = MultipleNegativesRankingLoss(model)
    args = SentenceTransformerTrainingArguments(
        output_dir="/tmp/breakdown", max_steps=2, per_device_train_batch_size=a.batch, save_strategy="no",
        disable_tqdm=True, save_final_model=False, bf16=a.bf16, length_buckets=(a.seq,))
    tr = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    tx, state = tr._init_state(10)
    step = tr._build_steps(tx)["_"] if "_" in tr.loss else next(iter(tr._build_steps(tx).values()))
    name, rows = tr.epoch_plan(0)[0]
    batch = tr._to_device(tr._collate_step(name, [rows], tr.global_batch), leading_accum=False, local=True)
    forward = tr._compute_model().forward
    params = state["trainable"]["model"]
    key = jax.random.key(0)
    print(f"device={jax.devices()[0].device_kind} batch={a.batch} seq={a.seq} bf16={a.bf16}", flush=True)

    def objective(params, batch, key):
        return compute_loss(loss, forward, params, batch["columns"], batch.get("label"), dropout_key=key,
                            mask=batch["mask"], num_shards=1)

    def col0(params, feats, key):
        keys = row_keys(key, 0, jnp.arange(feats["input_ids"].shape[0]))
        return jnp.sum(forward(params, feats, dropout_key=keys)["sentence_embedding"].astype(jnp.float32) ** 2)

    def fwd(params, batch):
        return [forward(params, f)["sentence_embedding"] for f in batch["columns"]]

    timed("fwd", jax.jit(fwd), params, batch, iters=a.iters)
    timed("col0", jax.jit(jax.value_and_grad(col0)), params, batch["columns"][0], key, iters=a.iters)
    timed("grad-nodrop", jax.jit(jax.value_and_grad(lambda p, b: objective(p, b, None))), params, batch, iters=a.iters)
    timed("grad", jax.jit(jax.value_and_grad(objective)), params, batch, key, iters=a.iters)
    timed("step", step, state, batch, iters=a.iters, donate=True)


if __name__ == "__main__":
    main()
