"""A training run in a fresh process, driven by the reliability tests (crash, preemption, multi-process).

``python worker.py CONFIG.json``; the config names the model, data, output_dir, whether to resume, where
to dump the final parameters and the log history, and optionally a multi-process coordinator. Prints
``STEP n`` after each step (so a test can time a signal; ``hold_at_step``: and then waits there for it)
and ``DONE`` at the end.

``runs`` (optional): a list of further trainings run one after the other in the same process (one
start-up and one ``jax.distributed`` initialisation for all of them), each a dict of keys that override
the config's: ``loss`` ("mnrl" | "cached_mnrl"), ``gather`` (``gather_across_devices``), ``optimizer``
("sgd" with ``lr``: plain SGD, so an update is ``-lr * gradient``), ``snapshot_step1`` (also dump the
parameters before and after step 1), ``mutate`` (see :func:`mutated`), ``out_dir``, ``dump``, ``max_steps``.
Optional everywhere: ``save_steps`` (default 4), ``save_total_limit`` (default none).
"""

import contextlib
import json
import os
import sys

CFG = json.load(open(sys.argv[1]))
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={CFG.get('local_devices', 8)}"

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")  # as tests/conftest.py
if CFG.get("num_processes", 1) > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=CFG["coordinator"], num_processes=CFG["num_processes"],
                               process_id=CFG["process_id"])

WRITES = []  # (event, path) this process wrote under output_dir (Python-level writes)


def _audit(event, args):
    out = CFG["out_dir"]
    if event == "open" and args[1] is not None and any(c in str(args[1]) for c in "wax+"):
        path = str(args[0])
    elif event in ("os.rename", "os.replace", "os.mkdir", "shutil.rmtree", "os.remove"):
        path = str(args[0])
    else:
        return
    if os.path.abspath(path).startswith(out):
        WRITES.append((event, os.path.relpath(os.path.abspath(path), out)))


sys.addaudithook(_audit)

import time  # noqa: E402

import numpy as np  # noqa: E402
import optax  # noqa: E402
from datasets import Dataset  # noqa: E402

import stcore_jax.sentence_transformer.task as step_module  # noqa: E402
from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: E402
from stcore_jax.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss  # noqa: E402
from stcore_jax.training import TrainerCallback  # noqa: E402
from stcore_jax.training.sharding import gather_to_host  # noqa: E402
from stcore_jax.util import read_sts  # noqa: E402


class Announce(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        sys.stdout.write(f"STEP {state.global_step}\n")  # one write: checkpoint.py's thread prints too
        sys.stdout.flush()
        if CFG.get("step_sleep"):
            time.sleep(CFG["step_sleep"])  # widen the window in which a signal lands mid-run
        if CFG.get("hold_at_step") == state.global_step:
            time.sleep(600)  # wait here for the test's kill, so that it lands after exactly this step


class SnapshotStep1(TrainerCallback):
    """The parameters after step 1 (gathered: a collective, so every process takes it)."""

    def __init__(self):
        self.trainer, self.params = None, None

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 1:
            self.params = flat_params(gather_to_host(self.trainer._train_state["trainable"]["model"]))


def flat_params(params) -> dict:
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]}


@contextlib.contextmanager
def mutated(kind):
    """A deliberate bug, patched in while the train step is traced, for the tests' mutation controls.
    ``"grad_x_processes"``: the loss value is unchanged but its gradient is ``jax.process_count()`` times
    too large (gradients summed over processes where they must be averaged)."""
    if not kind:
        yield
        return
    assert kind == "grad_x_processes", kind
    real = step_module.compute_loss

    def scaled(*a, **k):
        n = jax.process_count()
        return jax.tree_util.tree_map(lambda x: n * x - (n - 1) * jax.lax.stop_gradient(x), real(*a, **k))

    step_module.compute_loss = scaled
    try:
        yield
    finally:
        step_module.compute_loss = real


def make_loss(cfg, model):
    if cfg.get("loss", "mnrl") == "mnrl":
        return MultipleNegativesRankingLoss(model, gather_across_devices=cfg.get("gather", False))
    assert cfg["loss"] == "cached_mnrl", cfg["loss"]
    return CachedMultipleNegativesRankingLoss(model, mini_batch_size=8, gather_across_devices=cfg.get("gather", False))


def train_one(cfg, data):
    model = SentenceTransformer(cfg["model_dir"])
    args = SentenceTransformerTrainingArguments(
        output_dir=cfg["out_dir"], max_steps=cfg.get("max_steps", 10), per_device_train_batch_size=2,
        warmup_ratio=0.1, save_steps=cfg.get("save_steps", 4), logging_steps=1,
        disable_tqdm=True, save_final_model=cfg.get("save_final_model", False), seed=7, length_buckets=(32,),
        mesh_shape=cfg.get("mesh_shape"), fsdp_min_size=cfg.get("fsdp_min_size", 2**14),
        save_total_limit=cfg.get("save_total_limit"))
    optimizers = (optax.sgd(cfg["lr"]), None) if cfg.get("optimizer") == "sgd" else (None, None)
    snapshot = SnapshotStep1() if cfg.get("snapshot_step1") else None
    p0 = flat_params(model.params) if snapshot else None
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=make_loss(cfg, model),
                                         callbacks=[Announce()] + ([snapshot] if snapshot else []),
                                         optimizers=optimizers)
    if snapshot:
        snapshot.trainer = trainer
    with mutated(cfg.get("mutate")):
        trainer.train(resume_from_checkpoint=True if cfg.get("resume") else None)
    if cfg.get("dump"):
        prefix = f"{cfg['dump']}.{jax.process_index()}"
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        np.savez(f"{prefix}.npz", **flat_params(model.params))
        json.dump(trainer.state.log_history, open(f"{prefix}.log.json", "w"))
        json.dump(WRITES, open(f"{prefix}.writes.json", "w"))
        state = jax.tree_util.tree_flatten_with_path(trainer._train_state["trainable"]["model"])[0]
        sharded = [jax.tree_util.keystr(k) for k, v in state if not v.sharding.is_fully_replicated]
        json.dump(sharded, open(f"{prefix}.sharded.json", "w"))
        if snapshot:
            np.savez(f"{prefix}.step0.npz", **p0)
            np.savez(f"{prefix}.step1.npz", **snapshot.params)


def main():
    s1, s2, _ = read_sts(os.path.join(CFG["stsb"], "sts-train.csv"))
    data = Dataset.from_dict({"anchor": s1[:96], "positive": s2[:96]})
    base = {k: v for k, v in CFG.items() if k != "runs"}
    train_one(base, data)
    for run in CFG.get("runs", []):
        train_one({**base, "dump": None, "resume": False, "save_final_model": False, **run}, data)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
