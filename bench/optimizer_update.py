"""The optimizer part of a train step on all-MiniLM-L6-v2-shaped parameters (22.6 M floats), by variant.

  adamw        optax.adamw alone (weight decay masked to matrices), donated state
  before       session-3 step: optax.clip_by_global_norm + adamw, then ``where(finite, new, old)`` per leaf
  now          the trainer's step: ``clip_grad_norm`` (torch's rule, one scalar multiply) + adamw inside
               ``lax.cond(finite, update, keep)``
  torch        (``--torch``) what the reference's Hugging Face Trainer runs: ``clip_grad_norm_`` then
               ``torch.optim.AdamW(fused=True)`` (its default ``optim="adamw_torch_fused"``)

Variants run interleaved in rounds (this machine's speed drifts by 2x over minutes); medians per variant.

  python bench/optimizer_update.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stcore_jax.training.optim import clip_grad_norm

SHAPES = [(30522, 384), (512, 384), (2, 384)] + [(384, 384), (384,)] * 24 \
    + [(384, 1536), (1536,), (1536, 384), (384,)] * 6 + [(384,)] * 30


def variants():
    mask = lambda t: jax.tree_util.tree_map(lambda p: p.ndim == 2, t)  # noqa: E731
    sched = lambda c: 2e-5 * jnp.minimum(1.0, c / 10.0)  # noqa: E731
    adamw = optax.adamw(sched, weight_decay=0.01, mask=mask)
    old_tx = optax.chain(optax.clip_by_global_norm(1.0), adamw)
    new_tx = optax.chain(clip_grad_norm(1.0), adamw)

    def plain(state, g):
        p, o = state
        u, o = adamw.update(g, o, p)
        return optax.apply_updates(p, u), o

    def before(state, g):
        p, o = state
        ok = jnp.isfinite(optax.tree.norm(g))
        u, o2 = old_tx.update(g, o, p)
        keep = lambda n, old: jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), n, old)  # noqa: E731
        return keep(optax.apply_updates(p, u), p), keep(o2, o)

    def now(state, g):
        p, o = state
        ok = jnp.isfinite(optax.tree.norm(g))

        def update(p, o):
            u, o = new_tx.update(g, o, p)
            return optax.apply_updates(p, u), o

        return jax.lax.cond(ok, update, lambda p, o: (p, o), p, o)

    return {"adamw": (plain, adamw), "before": (before, old_tx), "now": (now, new_tx)}


def torch_step(params):
    import torch

    ps = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params.values()]
    for p in ps:
        p.grad = p.detach() * 0.01
    opt = torch.optim.AdamW(ps, lr=2e-5, weight_decay=0.01, fused=True)

    def step(_state, _grads):
        torch.nn.utils.clip_grad_norm_(ps, 1.0)
        opt.step()

    step(None, None)
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--torch", action="store_true", help="also time the reference's clip + fused AdamW")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    params = {f"p{i}": rng.random(s, dtype=np.float32) for i, s in enumerate(SHAPES)}
    grads = jax.tree_util.tree_map(lambda p: jnp.asarray(p * 0.01), params)
    print(f"{sum(p.size for p in params.values()) / 1e6:.1f} M parameters, device {jax.devices()[0].device_kind}")
    runs = {}
    for name, (fn, tx) in variants().items():
        p = jax.tree_util.tree_map(jnp.asarray, params)
        step = jax.jit(fn, donate_argnums=0)
        state = step((p, tx.init(p)), grads)
        jax.block_until_ready(state)
        runs[name] = [step, state, []]
    if a.torch:
        runs["torch"] = [torch_step(params), None, []]
    for _ in range(a.rounds):
        for run in runs.values():
            for _ in range(a.iters):
                t = time.perf_counter()
                run[1] = run[0](run[1], grads)
                jax.block_until_ready(run[1])
                run[2].append(time.perf_counter() - t)
    for name, (_, _, times) in runs.items():
        print(f"{name:8} median {statistics.median(times) * 1e3:7.1f} ms   min {min(times) * 1e3:7.1f} ms")


if __name__ == "__main__":
    main()
