"""NLI triplets with MultipleNegativesRankingLoss (port of sentence-transformers' training_nli_v2.py).

    python examples/training_nli_mnrl.py                                  # hub: sentence-transformers/all-nli
    python examples/training_nli_mnrl.py --data-dir ../shared/data/stsb   # local: triplets derived from STS-B
"""

from __future__ import annotations

from datetime import datetime

from common import finish, model_path, nli_triplets, parser, stsb

from stcore_jax import (
    BatchSamplers,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from stcore_jax.evaluation import EmbeddingSimilarityEvaluator, TripletEvaluator
from stcore_jax.losses import MultipleNegativesRankingLoss


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0], "distilbert/distilbert-base-uncased", 128).parse_args(argv)
    output_dir = args.output_dir or f"output/training_nli_v2_{datetime.now():%Y-%m-%d_%H-%M-%S}"

    model = SentenceTransformer(model_path(args.model))
    model.max_seq_length = args.max_seq_length

    # (anchor, positive, negative): every other row's positive and negative are in-batch negatives too.
    train_dataset = nli_triplets(args.data_dir, "train", args.max_rows)
    eval_dataset = nli_triplets(args.data_dir, "dev", args.max_rows)
    train_loss = MultipleNegativesRankingLoss(model)

    stsb_eval = stsb(args.data_dir, "validation", args.max_rows)
    dev_evaluator = EmbeddingSimilarityEvaluator(stsb_eval["sentence1"], stsb_eval["sentence2"], stsb_eval["score"],
                                                 name="sts-dev")
    training_args = SentenceTransformerTrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        warmup_ratio=0.1, batch_sampler=BatchSamplers.NO_DUPLICATES,  # MNRL: no duplicate texts in a batch
        eval_strategy="steps", eval_steps=100, save_strategy="steps", save_steps=100, save_total_limit=2,
        logging_steps=100, run_name="nli-v2")
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train_dataset,
                                         eval_dataset=eval_dataset, loss=train_loss, evaluator=dev_evaluator)
    trainer.train()

    test = nli_triplets(args.data_dir, "test", args.max_rows)
    metrics = TripletEvaluator(test["anchor"], test["positive"], test["negative"], name="nli-test")(model)
    print(metrics)
    return finish(trainer, model, output_dir, metrics)


if __name__ == "__main__":
    main()
