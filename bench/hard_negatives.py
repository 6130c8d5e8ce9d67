"""Time the blocked, device-sharded top-k search behind ``util.mine_hard_negatives`` on a synthetic corpus.

A random ``[N, D]`` float32 corpus of unit vectors and ``Q`` queries are searched for the miner's window
(``k = range_max + max_positives``) with ``sharded_top_k_search``: corpus blocks of ``--block`` rows split
over all local devices, a running top-k per query chunk. Prints the search time (compilation excluded,
measured on a one-block warm-up), host peak RSS, the compiled block step's device footprint, and the
memory the full ``[Q, N]`` float32 score matrix would need; checks the first queries against numpy.

    python bench/hard_negatives.py                       # N=1,000,000, D=384, Q=1,000, k=5
    python bench/hard_negatives.py --n 200000 --k 32 --devices 8
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time


def _parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1_000_000, help="corpus rows")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=5, help="window: range_max + max_positives (miner default 3+1+1)")
    p.add_argument("--block", type=int, default=65536, help="corpus rows per block (all devices together)")
    p.add_argument("--query-chunk", type=int, default=1024)
    p.add_argument("--devices", type=int, default=None, help="simulated CPU devices (sets XLA_FLAGS)")
    p.add_argument("--check", type=int, default=8, help="queries checked against an exact numpy top-k")
    return p.parse_args(argv)


def _unit_rows(rng, n, dim, np):
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # fill in slices: no float64 copy of the whole corpus
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def main(argv=None):
    args = _parse(argv)
    if args.devices:
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    import jax
    import jax.numpy as jnp
    import numpy as np

    from stcore_jax.util.semantic_search import get_scorer, search_mesh, sharded_top_k_search, sharded_topk_step

    jax.config.update("jax_default_matmul_precision", "highest")
    rng = np.random.default_rng(0)
    corpus = _unit_rows(rng, args.n, args.dim, np)
    queries = _unit_rows(rng, args.queries, args.dim, np)
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # interpreter + JAX + the data
    mesh = search_mesh()
    kwargs = dict(score_function="cosine", query_chunk_size=args.query_chunk, corpus_chunk_size=args.block, mesh=mesh)

    t0 = time.perf_counter()
    sharded_top_k_search(queries, corpus[: args.block], args.k, **kwargs)  # compiles the block step
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores, idx = sharded_top_k_search(queries, corpus, args.k, **kwargs)
    took = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # before the numpy check below

    exact = queries[: args.check] @ corpus.T
    ref_idx = np.argsort(-exact, axis=1, kind="stable")[:, : args.k]
    assert (idx[: args.check] == ref_idx).all(), "search disagrees with numpy"
    assert np.abs(scores[: args.check] - np.take_along_axis(exact, ref_idx, 1)).max() < 1e-5

    q_chunk = min(args.queries, args.query_chunk)
    spec = jax.ShapeDtypeStruct
    compiled = sharded_topk_step.lower(
        spec((q_chunk, args.k), jnp.float32), spec((q_chunk, args.k), jnp.int32),
        spec((q_chunk, args.dim), jnp.float32), spec((args.block, args.dim), jnp.float32),
        spec((), jnp.int32), spec((), jnp.int32), k=args.k, scorer=get_scorer("cosine"), mesh=mesh,
    ).compile()
    mem = compiled.memory_analysis()
    step_bytes = None if mem is None else mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    gib = 2**30
    print(f"devices={jax.device_count()} ({jax.devices()[0].platform}) N={args.n:,} D={args.dim} Q={args.queries:,} "
          f"k={args.k} block={args.block:,} query_chunk={q_chunk}")
    print(f"search: {took:.2f} s ({args.queries * args.n / took / 1e9:.2f} G scores/s); compile+1 block warm-up "
          f"{warm:.2f} s")
    print(f"host peak RSS after the search: {rss / gib:.2f} GiB (before searching {rss_data / gib:.2f} GiB; "
          f"corpus itself {corpus.nbytes / gib:.2f} GiB)")
    if step_bytes is not None:
        print(f"block step device footprint (args+temps+outputs, whole mesh): {step_bytes / gib:.3f} GiB")
    print(f"full [Q, N] float32 score matrix would be: {args.queries * args.n * 4 / gib:.2f} GiB")
    print(f"exact on the first {args.check} queries: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
