#!/usr/bin/env python
"""Run a stcore_jax config on a Cloud TPU VM: create -> install -> train on all workers -> copy results.

    python tpu_configs/launch.py v5e-8 --name my-tpu --project my-proj --dry-run
    python tpu_configs/launch.py v5p-64 --name my-pod --bucket gs://my-bucket/runs --dry-run

Single host (v4-8, v5e-8, v6e-8): one VM, one process; the output directory is on the VM's disk and is
copied back with ``gcloud ... scp`` from worker 0.
Pod (v5p-64: 8 hosts): every worker must start the same command at the same time (``--worker=all``);
``jax.distributed`` joins them from the TPU environment and each process feeds its share of the
global batch. Checkpoints are written by all processes, so the output directory must be shared:
``--bucket`` is required and is mounted with gcsfuse on every worker; results are copied from the
bucket. Everything else (config, mesh, batch) comes from ``tpu_configs/<topology>.yaml``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the repository's stcore_jax (for the topology table)

from stcore_jax.config.topology import TOPOLOGIES  # noqa: E402

REMOTE_DIR = "~/stcore_jax"
MOUNT = "/mnt/stcore"


def plan(args) -> list[list[str]]:
    """The gcloud commands, in order, for ``args`` (see ``build_parser``)."""
    topo = TOPOLOGIES[args.topology]
    if topo.accelerator_type is None:
        raise SystemExit(f"{args.topology} is not a Cloud TPU topology; TPU topologies: "
                         f"{sorted(n for n, t in TOPOLOGIES.items() if t.accelerator_type)}")
    pod = topo.hosts > 1
    if pod and not args.bucket:
        raise SystemExit(f"{args.topology} has {topo.hosts} hosts: pass --bucket gs://BUCKET/PATH so every worker "
                         "writes checkpoints to the same place")
    zone = args.zone or topo.zone
    loc = ["--zone", zone] + (["--project", args.project] if args.project else [])
    tpu = ["gcloud", "compute", "tpus", "tpu-vm"]
    config = f"tpu_configs/{args.topology}.yaml"
    run_name = args.run_name or f"{args.name}-{args.topology}"
    if args.bucket:
        bucket = args.bucket.rstrip("/")
        bucket_name, _, prefix = bucket[len("gs://"):].partition("/")
        output = f"{MOUNT}/{prefix + '/' if prefix else ''}{run_name}"
    else:
        output = f"output/{run_name}"  # relative to the checkout on the worker
    tarball = os.path.join(args.results, "stcore_jax.tar.gz")
    install = (f"mkdir -p {REMOTE_DIR} && tar xzf ~/stcore_jax.tar.gz -C {REMOTE_DIR} && cd {REMOTE_DIR} && "
               "python3 -m venv .venv && . .venv/bin/activate && pip install -q -e '.[tpu]'")
    if args.bucket:
        install += f" && sudo mkdir -p {MOUNT} && sudo chown $USER {MOUNT} && gcsfuse --implicit-dirs {bucket_name} {MOUNT}"
    train = (f"cd {REMOTE_DIR} && . .venv/bin/activate && stcore-jax train {config} "
             f"--set arguments.output_dir={output}" + "".join(f" --set {s}" for s in args.set))
    cmds = [
        tpu + ["create", args.name, *loc, "--accelerator-type", topo.accelerator_type, "--version", topo.runtime_version],
        ["mkdir", "-p", args.results],
        ["git", "-C", args.repo, "archive", "--format=tar.gz", "-o", tarball, "HEAD"],  # committed files only
        tpu + ["scp", tarball, f"{args.name}:~/stcore_jax.tar.gz", *loc, "--worker=all"],
        tpu + ["ssh", args.name, *loc, "--worker=all", "--command", install],
        tpu + ["ssh", args.name, *loc, "--worker=all", "--command", train],
    ]
    if args.bucket:
        cmds.append(["gcloud", "storage", "cp", "--recursive", f"{bucket}/{run_name}", args.results])
    else:
        cmds.append(tpu + ["scp", "--recurse", f"{args.name}:{REMOTE_DIR}/{output}", args.results, *loc, "--worker=0"])
    if args.delete:
        cmds.append(tpu + ["delete", args.name, *loc, "--quiet"])
    return cmds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("topology", choices=sorted(n for n, t in TOPOLOGIES.items() if t.accelerator_type))
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--project", default=None)
    p.add_argument("--zone", default=None, help="default: a zone that offers the topology")
    p.add_argument("--bucket", default=None, help="gs://BUCKET[/PATH] for the output (required for pods)")
    p.add_argument("--run-name", default=None)
    p.add_argument("--repo", default=os.path.dirname(HERE), help="local checkout to copy to the workers")
    p.add_argument("--results", default="./results", help="local directory for the copied results")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--delete", action="store_true", help="delete the TPU VM at the end")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for cmd in plan(args):
        print(shlex.join(cmd), flush=True)
        if not args.dry_run:
            subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
