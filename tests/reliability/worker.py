"""A training run in a fresh process, driven by the reliability tests (crash, preemption, multi-process).

``python worker.py CONFIG.json``; the config names the model, data, output_dir, whether to resume, where
to dump the final parameters, and optionally a multi-process coordinator. Prints ``STEP n`` after each
step (so a test can time a signal) and ``DONE`` at the end.
"""

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
from datasets import Dataset  # noqa: E402

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: E402
from stcore_jax.losses import MultipleNegativesRankingLoss  # noqa: E402
from stcore_jax.training import TrainerCallback  # noqa: E402
from stcore_jax.util import read_sts  # noqa: E402


class Announce(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        print(f"STEP {state.global_step}", flush=True)
        if CFG.get("step_sleep"):
            time.sleep(CFG["step_sleep"])  # widen the window in which a signal lands mid-run


def flat_params(params) -> dict:
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]}


def main():
    s1, s2, _ = read_sts(os.path.join(CFG["stsb"], "sts-train.csv"))
    data = Dataset.from_dict({"anchor": s1[:96], "positive": s2[:96]})
    model = SentenceTransformer(CFG["model_dir"])
    args = SentenceTransformerTrainingArguments(
        output_dir=CFG["out_dir"], max_steps=CFG.get("max_steps", 10), per_device_train_batch_size=2,
        warmup_ratio=0.1, save_steps=CFG.get("save_steps", 4), logging_steps=5,
        disable_tqdm=True, save_final_model=CFG.get("save_final_model", False), seed=7, length_buckets=(32,),
        mesh_shape=CFG.get("mesh_shape"), fsdp_min_size=CFG.get("fsdp_min_size", 2**14))
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                         loss=MultipleNegativesRankingLoss(model), callbacks=[Announce()])
    trainer.train(resume_from_checkpoint=True if CFG.get("resume") else None)
    if CFG.get("dump"):
        np.savez(f"{CFG['dump']}.{jax.process_index()}.npz", **flat_params(model.params))
        json.dump(WRITES, open(f"{CFG['dump']}.{jax.process_index()}.writes.json", "w"))
        state = jax.tree_util.tree_flatten_with_path(trainer._train_state["trainable"]["model"])[0]
        sharded = [jax.tree_util.keystr(k) for k, v in state if not v.sharding.is_fully_replicated]
        json.dump(sharded, open(f"{CFG['dump']}.{jax.process_index()}.sharded.json", "w"))
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
