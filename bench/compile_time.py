"""Compile once: the quickstart run twice in fresh processes, before (no persistent cache, no ahead-of-time
compilation) and after (the cache in a fresh directory, the step shapes compiled in the background).

Each run is ``stcore-jax quickstart`` (all-MiniLM-L6-v2 on the help-desk pairs: evaluate, train one epoch,
evaluate, export, reload; ``--skip-torch``) in its own subprocess, reporting: time to the first train step (from
the process start, imports included), the seconds XLA spent compiling (JAX's
``/jax/core/compile/backend_compile_duration`` events, the background thread's included; a program loaded from the
persistent cache has none), the count of those compiles and of cache hits, the tracing+lowering seconds (done again
even when the cache hits), and the wall time.

  python bench/compile_time.py                 # before: 2 runs; after: 2 runs on one fresh cache directory
  python bench/compile_time.py --epochs 0.3    # shorter
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = textwrap.dedent("""
    import json, sys, time
    T0 = float(sys.argv[1])
    from jax import monitoring
    ev = {"compile_s": 0.0, "compiles": 0, "hits": 0, "trace_lower_s": 0.0}
    def on_duration(name, secs, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            ev["compile_s"] += secs
            ev["compiles"] += 1
        elif name in ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration"):
            ev["trace_lower_s"] += secs
    def on_event(name, **kw):
        if name == "/jax/compilation_cache/cache_hits":
            ev["hits"] += 1
    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    from stcore_jax.training import trainer as tr
    fire = tr.Trainer._fire
    def timed_fire(self, event, **kw):
        if event == "on_step_end" and "first_step_s" not in ev:
            ev["first_step_s"] = time.time() - T0
        return fire(self, event, **kw)
    tr.Trainer._fire = timed_fire
    if sys.argv[2] == "before":
        tr.Trainer._start_aot = lambda self, *a: None  # no ahead-of-time compilation
    import argparse
    from stcore_jax.quickstart.job import add_arguments, run
    p = argparse.ArgumentParser()
    add_arguments(p)
    rc = run(p.parse_args(sys.argv[3:]))
    ev["wall_s"] = time.time() - T0
    ev["rc"] = rc
    print("RESULT " + json.dumps(ev))
""")


def one_run(variant: str, cache_dir: str | None, out_dir: str, epochs: float) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    env["STCORE_JAX_COMPILATION_CACHE"] = cache_dir or "off"
    env["STCORE_JAX_TRAINING_PLOTS"] = "0"
    cmd = [sys.executable, "-c", CHILD, repr(time.time()), variant, "--output-dir", out_dir, "--skip-torch",
           "--min-improvement", "-1", "--epochs", str(epochs)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=os.path.join(HERE, ".."))
    if out.returncode != 0 or "RESULT " not in out.stdout:
        raise SystemExit(f"{variant} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.split("RESULT ", 1)[1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--only", choices=("before", "after"))
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="stcore-jax-compile-bench-") as tmp:
        cache = os.path.join(tmp, "xla")  # fresh: the first "after" run is cold
        for variant in ("before", "after"):
            if args.only and variant != args.only:
                continue
            for i in (1, 2):
                r = one_run(variant, cache if variant == "after" else None, os.path.join(tmp, f"{variant}{i}"),
                            args.epochs)
                rows.append((variant, i, r))
                print(json.dumps({"variant": variant, "run": i, **r}), flush=True)
    print("\n| variant | run | time to first step (s) | XLA compile s | compiles | cache hits | trace+lower s "
          "| wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, i, r in rows:
        print(f"| {variant} | {i} | {r['first_step_s']:.1f} | {r['compile_s']:.1f} | {r['compiles']} | {r['hits']} "
              f"| {r['trace_lower_s']:.1f} | {r['wall_s']:.1f} |")
    after = {i: r for v, i, r in rows if v == "after"}
    if len(after) == 2:
        print(f"\nafter: second run's compile seconds = {after[2]['compile_s'] / after[1]['compile_s']:.1%} of the "
              "first's (target <= 20%)")


if __name__ == "__main__":
    main()
