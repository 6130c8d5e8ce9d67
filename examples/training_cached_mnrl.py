"""MNRL with a very large batch through GradCache (port of the CachedMultipleNegativesRankingLoss recipe).

Larger batches give MNRL more in-batch negatives; CachedMultipleNegativesRankingLoss embeds the batch
in ``--mini-batch-size`` chunks without gradients, computes the loss and its gradient with respect
to the embeddings, then replays each chunk with gradients: memory of a mini-batch, result of the
full batch.

    python examples/training_cached_mnrl.py --data-dir ../shared/data/stsb --batch-size 1024
"""

from __future__ import annotations

from datetime import datetime

from common import finish, model_path, nli_pairs, parser, stsb

from stcore_jax import (
    BatchSamplers,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from stcore_jax.evaluation import EmbeddingSimilarityEvaluator
from stcore_jax.losses import CachedMultipleNegativesRankingLoss


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], "microsoft/mpnet-base", 1024)
    p.add_argument("--mini-batch-size", type=int, default=32)
    args = p.parse_args(argv)
    output_dir = args.output_dir or f"output/cached_mnrl_{datetime.now():%Y-%m-%d_%H-%M-%S}"

    model = SentenceTransformer(model_path(args.model))
    model.max_seq_length = args.max_seq_length
    train_dataset = nli_pairs(args.data_dir, "train", args.max_rows)
    train_loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=args.mini_batch_size)

    stsb_dev = stsb(args.data_dir, "validation", args.max_rows)
    dev_evaluator = EmbeddingSimilarityEvaluator(stsb_dev["sentence1"], stsb_dev["sentence2"], stsb_dev["score"],
                                                 name="sts-dev")
    training_args = SentenceTransformerTrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, warmup_ratio=0.1, batch_sampler=BatchSamplers.NO_DUPLICATES,
        eval_strategy="steps", eval_steps=100, save_strategy="steps", save_steps=100, save_total_limit=2,
        logging_steps=100, run_name="cached-mnrl")
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train_dataset, loss=train_loss,
                                         evaluator=dev_evaluator)
    trainer.train()
    return finish(trainer, model, output_dir, dev_evaluator(model))


if __name__ == "__main__":
    main()
