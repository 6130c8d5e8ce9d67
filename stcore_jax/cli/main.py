"""``stcore-jax``: train / encode / evaluate / plot / quickstart / info.

Every command checks its inputs (config keys, files, the mesh against the devices) before a model is
loaded or anything is compiled; a bad input prints ``error: ...`` and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from stcore_jax.cli import commands

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stcore-jax", description="Sentence Transformers training in JAX/Flax.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train from a YAML config (model, data, loss, arguments, evaluator, mesh)")
    t.add_argument("config", help="YAML file, e.g. tpu_configs/v5e-8.yaml")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set arguments.max_steps=100 (repeatable)")
    t.set_defaults(func=commands.train)

    e = sub.add_parser("encode", help="embed the lines of a text file into a .npy array [N, D]")
    e.add_argument("model", help="model directory or hub id")
    e.add_argument("--input", required=True, help="text file, one sentence per line (.txt), or a JSON list (.json)")
    e.add_argument("--output", required=True, help="output .npy file")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--normalize", action="store_true", help="L2-normalise the embeddings")
    e.add_argument("--prompt-name", default=None)
    e.set_defaults(func=commands.encode)

    v = sub.add_parser("evaluate", help="run a config's evaluator on a model and print the metrics as JSON")
    v.add_argument("model", help="model directory or hub id")
    v.add_argument("config", help="YAML config with an evaluator section (and data.eval or evaluator.data)")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--output", default=None, help="also write the metrics to this JSON file")
    v.set_defaults(func=commands.evaluate)

    g = sub.add_parser("plot", help="write PNG plots of a training run's loss, learning rate and eval metrics "
                                    "(from OUTPUT_DIR/logs.jsonl) into OUTPUT_DIR")
    g.add_argument("output_dir", metavar="OUTPUT_DIR", help="a training run's output_dir (holding logs.jsonl)")
    g.set_defaults(func=commands.plot)

    q = sub.add_parser("quickstart", help="fine-tune all-MiniLM-L6-v2 on the embedded help-desk pairs, export, reload")
    from stcore_jax.quickstart.job import add_arguments

    add_arguments(q)
    q.set_defaults(func=commands.quickstart)

    i = sub.add_parser("info", help="devices, processes, the default mesh and package versions")
    i.add_argument("--config", default=None, help="also show the mesh this config would use here")
    i.set_defaults(func=commands.info)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from stcore_jax.config import ConfigError

    try:
        return int(args.func(args) or 0)
    except (ConfigError, commands.InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
