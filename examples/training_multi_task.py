"""Several datasets, one loss each, in one run (port of sentence-transformers' training_multi-task.py).

Batches come from one dataset at a time (``multi_dataset_batch_sampler``, proportional by default);
each dataset is trained with its own loss.

    python examples/training_multi_task.py --data-dir ../shared/data/stsb
"""

from __future__ import annotations

from datetime import datetime

from common import finish, model_path, nli_pairs, nli_triplets, parser, stsb

from stcore_jax import (
    MultiDatasetBatchSamplers,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from stcore_jax.evaluation import EmbeddingSimilarityEvaluator
from stcore_jax.losses import CoSENTLoss, MultipleNegativesRankingLoss


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0], "bert-base-uncased", 16).parse_args(argv)
    output_dir = args.output_dir or f"output/training_multi-task_{datetime.now():%Y-%m-%d_%H-%M-%S}"

    model = SentenceTransformer(model_path(args.model))
    model.max_seq_length = args.max_seq_length

    train_dataset = {
        "all-nli-pair": nli_pairs(args.data_dir, "train", args.max_rows),
        "all-nli-triplet": nli_triplets(args.data_dir, "train", args.max_rows),
        "stsb": stsb(args.data_dir, "train", args.max_rows),
    }
    mnrl = MultipleNegativesRankingLoss(model)
    losses = {"all-nli-pair": mnrl, "all-nli-triplet": mnrl, "stsb": CoSENTLoss(model)}

    stsb_dev = stsb(args.data_dir, "validation", args.max_rows)
    dev_evaluator = EmbeddingSimilarityEvaluator(stsb_dev["sentence1"], stsb_dev["sentence2"], stsb_dev["score"],
                                                 name="sts-dev")
    training_args = SentenceTransformerTrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, warmup_ratio=0.1,
        multi_dataset_batch_sampler=MultiDatasetBatchSamplers.PROPORTIONAL,
        eval_strategy="steps", eval_steps=100, save_strategy="steps", save_steps=100, save_total_limit=2,
        logging_steps=100, run_name="multi-task")
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train_dataset, loss=losses,
                                         evaluator=dev_evaluator)
    trainer.train()
    return finish(trainer, model, output_dir, dev_evaluator(model))


if __name__ == "__main__":
    main()
