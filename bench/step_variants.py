"""Where the training step's time goes: encoder forward+backward under controlled variants.

Times ``jit(value_and_grad(sum(sentence_embedding^2)))`` of a sentence-transformers pipeline
(Transformer + mean pooling) on ``[batch, seq]`` full-length inputs, one variant at a time:
compute dtype, dropout keys (none / one key / one key per row, threefry or rbg), and attention
(ours vs ``jax.nn.dot_product_attention``, which has no dropout: attention-prob dropout is off in
those variants). Prints compile seconds and the median step time of ``--iters`` runs.

  python bench/step_variants.py --model-dir DIR --batch 512 --seq 128 --variants bf16-rows bf16-none
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

VARIANTS = ("bf16-rows", "bf16-none", "bf16-none-fused", "bf16-none-cudnn", "bf16-one", "bf16-rows-threefry",
            "bf16-rows-attnonly", "bf16-rows-hiddenonly", "f32-rows")


def threefry_dropout(x, rate, key):
    """The previous dropout: ``jax.random.bernoulli`` per row key (vmapped threefry)."""
    from stcore_jax.models.layers import _key_batched

    if key is None or rate == 0.0:
        return x
    if _key_batched(key):
        keep = jax.vmap(lambda k, row: jax.random.bernoulli(k, 1.0 - rate, row.shape))(key, x)
    else:
        keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def fused_attention(q_bhtd, k_bhtd, v_bhtd, mask_bt, *, bias_bhtt=None, dropout_rate=0.0, key=None):
    t = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [B, H, T, Dh] <-> [B, T, H, Dh]
    out = jax.nn.dot_product_attention(t(q_bhtd), t(k_bhtd), t(v_bhtd), mask=mask_bt[:, None, None, :].astype(bool))
    return t(out)


def cudnn_attention(q_bhtd, k_bhtd, v_bhtd, mask_bt, *, bias_bhtt=None, dropout_rate=0.0, key=None):
    """cuDNN flash attention; padding given as per-row key lengths (right-padded rows)."""
    t = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731
    lengths = mask_bt.astype(jnp.int32).sum(-1)
    out = jax.nn.dot_product_attention(t(q_bhtd), t(k_bhtd), t(v_bhtd), key_value_seq_lengths=lengths,
                                       implementation="cudnn")
    return t(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    a = p.parse_args()

    import stcore_jax.models.bert as bert
    import stcore_jax.models.layers as layers
    from stcore_jax import SentenceTransformer
    from stcore_jax.sentence_transformer.losses.embed import row_keys

    own_attention, own_dropout = bert.attention, layers.dropout
    base = SentenceTransformer(a.model_dir)
    rng = np.random.default_rng(0)
    feats = {"input_ids": jnp.asarray(rng.integers(1000, 30000, (a.batch, a.seq)), jnp.int32),
             "attention_mask": jnp.ones((a.batch, a.seq), jnp.int32),
             "token_type_ids": jnp.zeros((a.batch, a.seq), jnp.int32)}
    params = jax.device_put(base.params)
    print(f"device={jax.devices()[0].device_kind} batch={a.batch} seq={a.seq}", flush=True)
    for name in a.variants:
        dtype = jnp.bfloat16 if name.startswith("bf16") else jnp.float32
        bert.attention = (fused_attention if "fused" in name else cudnn_attention if "cudnn" in name
                          else own_attention)
        model = base.with_compute_dtype(dtype)
        layers.dropout = threefry_dropout if "threefry" in name else own_dropout
        bert.dropout = (lambda x, r, k: x) if "attnonly" in name else layers.dropout  # hidden-state sites
        if "hiddenonly" in name:
            layers.dropout = lambda x, r, k: x  # attention-prob site (layers.attention looks it up here)
        key = jax.random.key(0)
        keys = {"none": None, "one": key}.get(name.split("-")[1], None)
        if "rows" in name:
            keys = row_keys(key, 0, np.arange(a.batch))

        def loss(params, keys):
            out = model.forward(params, feats, dropout_key=keys)["sentence_embedding"]
            return jnp.sum(out.astype(jnp.float32) ** 2)

        fn = jax.jit(jax.value_and_grad(loss))
        t0 = time.perf_counter()
        try:
            jax.block_until_ready(fn(params, keys))
        except Exception as e:  # noqa: BLE001
            print(f"{name:18} FAILED: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(a.iters):
            t = time.perf_counter()
            jax.block_until_ready(fn(params, keys))
            times.append(time.perf_counter() - t)
        ms = statistics.median(times) * 1e3
        print(f"{name:18} compile {compile_s:6.1f} s   step {ms:8.1f} ms   {a.batch / ms * 1e3:8.0f} seq/s", flush=True)
    bert.attention, layers.dropout, bert.dropout = own_attention, own_dropout, own_dropout


if __name__ == "__main__":
    main()
