"""The ``stcore-jax`` subcommands. Each validates everything it can before loading a model."""

from __future__ import annotations

import json
import os
import tempfile


class InputError(ValueError):
    """A bad command-line input (missing file, wrong extension, ...)."""


def _config_and_mesh(path, overrides):
    import jax

    from stcore_jax.config import check_devices, load_config
    from stcore_jax.distributed import maybe_initialize_distributed

    cfg = load_config(path, overrides)
    maybe_initialize_distributed()  # on a pod, before the first device query, or each host sees only its own chips
    return cfg, check_devices(cfg, jax.device_count())


def train(args) -> int:
    from stcore_jax.config import build

    cfg, mesh_shape = _config_and_mesh(args.config, args.overrides)  # every config error surfaces here
    from stcore_jax.compile_cache import enable_compilation_cache

    # before the model loads and encodes: programs compiled before the cache is set are not written to it
    enable_compilation_cache(cfg.arguments.compilation_cache_dir)
    if cfg.data.train is None:
        from stcore_jax.config import ConfigError

        raise ConfigError("config key 'data.train' is required for train (a file, an STS-B directory, 'quickstart' "
                          "or a hub dataset id)")
    train_ds, eval_ds = build.build_datasets(cfg)  # before the model: data errors (prompts keys) surface first
    model = build.build_model(cfg)
    trainer_class = build.trainer_class(cfg)  # SentenceTransformerTrainer or CrossEncoderTrainer (model.family)
    evaluator = build.build_evaluator(cfg, eval_ds)
    targs = build.training_arguments(cfg, mesh_shape)
    export = targs.save_final_model
    targs.save_final_model = False  # exported below, after the final evaluation, so the card reports it
    trainer = trainer_class(model=model, args=targs, train_dataset=train_ds,
                            eval_dataset=eval_ds if targs.eval_strategy != "no" else None,
                            loss=build.build_loss(cfg, model), evaluator=evaluator)
    result = trainer.train()
    if evaluator is not None:
        metrics = evaluator(model)
        print(json.dumps({k: round(float(v), 6) for k, v in metrics.items()}, indent=1))
    final = os.path.join(targs.output_dir, "final")
    if export and trainer.is_world_process_zero():
        model.save_pretrained(final)
    print(f"trained {result['global_step']} steps" + (f"; model exported to {final}" if export else ""))
    return 0


def _read_texts(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise InputError(f"--input {path!r} does not exist")
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            texts = json.load(f)
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InputError(f"--input {path!r}: a .json input must hold a list of strings")
        return texts
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\r\n") for line in f]
    while lines and not lines[-1].strip():  # blank lines at the end of the file are not rows
        lines.pop()
    blank = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if blank:  # skipping them would shift every later row against its input line
        raise InputError(f"--input {path!r}: line(s) {blank[:5]}{' ...' if len(blank) > 5 else ''} are blank; output "
                         f"row i is input line i, so remove or fill them")
    return lines


def _check_output(path: str, ext: str, flag: str) -> None:
    if not path.endswith(ext):
        raise InputError(f"{flag} {path!r} must end with {ext}")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"{flag} {path!r}: the directory {parent!r} does not exist")


def encode(args) -> int:
    import numpy as np

    from stcore_jax.config.build import resolve_model_name
    from stcore_jax.sentence_transformer import SentenceTransformer

    _check_output(args.output, ".npy", "--output")
    texts = _read_texts(args.input)
    if not texts:
        raise InputError(f"--input {args.input!r} has no non-empty lines")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    model = SentenceTransformer(resolve_model_name(args.model))
    emb = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=args.normalize,
                       prompt_name=args.prompt_name, show_progress_bar=True)
    # Write beside the target, then rename: an interrupted run leaves no half-written .npy.
    fd, tmp = tempfile.mkstemp(suffix=".npy", dir=os.path.dirname(os.path.abspath(args.output)))
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, emb)
        os.replace(tmp, args.output)
    except BaseException:
        os.unlink(tmp)
        raise
    print(f"wrote {args.output}: {emb.shape[0]} x {emb.shape[1]} {emb.dtype}")
    return 0


def evaluate(args) -> int:
    import dataclasses

    from stcore_jax.config import ConfigError, build
    from stcore_jax.config.catalogue import evaluator_columns

    cfg, _ = _config_and_mesh(args.config, args.overrides)
    if cfg.evaluator.name is None:
        raise ConfigError("config key 'evaluator.name' is required for evaluate; allowed values: "
                          f"{', '.join(evaluator_columns(cfg.model.family))}")
    if args.output:
        _check_output(args.output, ".json", "--output")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=args.model))
    evaluator = build.build_evaluator(cfg)
    model = build.build_model(cfg)
    metrics = {k: float(v) for k, v in evaluator(model).items()}
    text = json.dumps(metrics, indent=1)
    print(text)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


def plot(args) -> int:
    """Write the training curves of ``args.output_dir/logs.jsonl`` beside it (training/plots.py); print the paths."""
    from stcore_jax.training import plots

    path = os.path.join(args.output_dir, plots.LOGS_FILE)
    if not os.path.isfile(path):
        raise InputError(f"{path!r} does not exist; give the output_dir of a training run (the trainer writes "
                         f"{plots.LOGS_FILE} there)")
    records = plots.read_logs(path)
    if not records:
        raise InputError(f"{path!r} is empty: nothing was logged yet (see logging_steps)")
    try:
        written = plots.write_plots(args.output_dir, records)
    except ImportError as e:
        raise InputError(str(e)) from None
    if not written:
        raise InputError(f"{path!r} holds no loss, learning rate or eval metric to plot")
    for p in written:
        print(p)
    return 0


def quickstart(args) -> int:
    from stcore_jax.quickstart.job import run

    return run(args)


def info(args) -> int:
    import importlib.metadata as md

    import jax

    from stcore_jax.distributed import maybe_initialize_distributed

    maybe_initialize_distributed()
    devs = jax.devices()
    print(f"processes: {jax.process_count()} (this is process {jax.process_index()})")
    print(f"devices: {len(devs)} total, {jax.local_device_count()} local; platform {devs[0].platform}; "
          f"kind {getattr(devs[0], 'device_kind', '?')}")
    if args.config:
        cfg, shape = _config_and_mesh(args.config, [])
        print(f"mesh (from {args.config}): {shape}")
    else:
        print(f"mesh (default): {{'data': {len(devs)}}}")
    for pkg in ("stcore-jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "transformers", "tokenizers",
                "datasets", "sentence-transformers", "torch"):
        try:
            print(f"{pkg}: {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"{pkg}: not installed")
    return 0
