"""Matryoshka embeddings: MNRL at several truncated dimensions (port of matryoshka_nli.py).

The first ``d`` dimensions of every embedding are trained to work on their own, so embeddings can be
truncated (``truncate_dim``) with little loss.

    python examples/training_matryoshka.py --data-dir ../shared/data/stsb
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
from stcore_jax.evaluation import EmbeddingSimilarityEvaluator, SequentialEvaluator
from stcore_jax.losses import MatryoshkaLoss, MultipleNegativesRankingLoss


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], "microsoft/mpnet-base", 128)
    p.add_argument("--dims", type=int, nargs="+", default=[768, 512, 256, 128, 64])
    args = p.parse_args(argv)
    output_dir = args.output_dir or f"output/matryoshka_nli_{datetime.now():%Y-%m-%d_%H-%M-%S}"

    model = SentenceTransformer(model_path(args.model))
    model.max_seq_length = args.max_seq_length
    dims = [d for d in args.dims if d <= model.get_embedding_dimension()]
    if not dims:
        raise ValueError(f"--dims {args.dims}: all are larger than the model's "
                         f"{model.get_embedding_dimension()} dimensions")

    train_dataset = nli_triplets(args.data_dir, "train", args.max_rows)
    inner = MultipleNegativesRankingLoss(model)
    train_loss = MatryoshkaLoss(model, inner, matryoshka_dims=dims)

    stsb_dev = stsb(args.data_dir, "validation", args.max_rows)
    dev_evaluator = SequentialEvaluator([
        EmbeddingSimilarityEvaluator(stsb_dev["sentence1"], stsb_dev["sentence2"], stsb_dev["score"],
                                     name=f"sts-dev-{d}", truncate_dim=d) for d in dims])
    training_args = SentenceTransformerTrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, warmup_ratio=0.1, batch_sampler=BatchSamplers.NO_DUPLICATES,
        eval_strategy="steps", eval_steps=100, save_strategy="steps", save_steps=100, save_total_limit=2,
        logging_steps=100, run_name="matryoshka-nli")
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train_dataset, loss=train_loss,
                                         evaluator=dev_evaluator)
    trainer.train()
    metrics = dev_evaluator(model)
    for d in dims:
        print(f"dim {d:4d}: spearman {metrics[f'sts-dev-{d}_spearman_cosine']:.4f}")
    return finish(trainer, model, output_dir, metrics)


if __name__ == "__main__":
    main()
