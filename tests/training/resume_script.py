"""Run by test_resume.py in a fresh process: train a tiny model and dump parameters and batches."""

import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from datasets import Dataset  # noqa: E402

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: E402
from stcore_jax.losses import MultipleNegativesRankingLoss  # noqa: E402
from stcore_jax.training import TrainerCallback  # noqa: E402
from stcore_jax.util import read_sts  # noqa: E402


class Rec(TrainerCallback):
    """Records each step's batch rows; stops the run after ``stop_at`` steps (an interruption)."""

    def __init__(self, stop_at):
        self.rows, self.stop_at = [], stop_at

    def on_step_end(self, args, state, control, rows=None, **kw):
        self.rows.append([state.global_step, rows])
        if state.global_step == self.stop_at:
            control.should_training_stop = True


def main(model_dir, stsb, out_dir, stop_at, resume, dump):
    s1, s2, _ = read_sts(os.path.join(stsb, "sts-train.csv"))
    data = Dataset.from_dict({"anchor": s1[:96], "positive": s2[:96]})
    model = SentenceTransformer(model_dir)
    args = SentenceTransformerTrainingArguments(
        output_dir=out_dir, num_train_epochs=3, max_steps=20, per_device_train_batch_size=2, learning_rate=1e-3,
        warmup_ratio=0.1, save_steps=10, logging_steps=5, disable_tqdm=True, save_final_model=False, seed=7)
    rec = Rec(stop_at)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                         loss=MultipleNegativesRankingLoss(model), callbacks=[rec])
    trainer.train(resume_from_checkpoint=resume)
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(jax.device_get(model.params))[0]}
    np.savez(dump + ".npz", **flat)
    json.dump(rec.rows, open(dump + ".json", "w"))


if __name__ == "__main__":
    model_dir, stsb, out_dir, stop_at, resume, dump = sys.argv[1:7]
    resume = {"none": None, "true": True}.get(resume, resume)
    main(model_dir, stsb, out_dir, int(stop_at), resume, dump)
