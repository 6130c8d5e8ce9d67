"""STS benchmark with CoSENTLoss (port of sentence-transformers' training_stsbenchmark.py).

    python examples/training_stsb_cosent.py                                   # hub: sentence-transformers/stsb
    python examples/training_stsb_cosent.py --data-dir ../shared/data/stsb    # local STS-B files
"""

from __future__ import annotations

from datetime import datetime

from common import finish, model_path, parser, stsb

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.evaluation import EmbeddingSimilarityEvaluator, SimilarityFunction
from stcore_jax.losses import CoSENTLoss


def main(argv=None) -> dict:
    args = parser(__doc__.splitlines()[0], "distilbert/distilbert-base-uncased", 16).parse_args(argv)
    output_dir = args.output_dir or f"output/training_stsbenchmark_{datetime.now():%Y-%m-%d_%H-%M-%S}"

    # 1. A model: a plain Hugging Face checkpoint gets mean pooling.
    model = SentenceTransformer(model_path(args.model))
    model.max_seq_length = args.max_seq_length

    # 2. Data: sentence1, sentence2, score (normalised to 0-1).
    train_dataset = stsb(args.data_dir, "train", args.max_rows)
    eval_dataset = stsb(args.data_dir, "validation", args.max_rows)
    test_dataset = stsb(args.data_dir, "test", args.max_rows)

    # 3. Loss: CoSENT ranks pairs by score.
    train_loss = CoSENTLoss(model=model)

    # 4. Evaluator on the dev split.
    dev_evaluator = EmbeddingSimilarityEvaluator(
        sentences1=eval_dataset["sentence1"], sentences2=eval_dataset["sentence2"], scores=eval_dataset["score"],
        main_similarity=SimilarityFunction.COSINE, name="sts-dev")

    # 5. Training arguments (same names and defaults as sentence-transformers).
    training_args = SentenceTransformerTrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        warmup_ratio=0.1, bf16=False, eval_strategy="steps", eval_steps=100, save_strategy="steps",
        save_steps=100, save_total_limit=2, logging_steps=100, run_name="sts")

    # 6. Train.
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=train_dataset,
                                         eval_dataset=eval_dataset, loss=train_loss, evaluator=dev_evaluator)
    trainer.train()

    # 7. Test-set score, then export (loads in PyTorch sentence-transformers too).
    test_evaluator = EmbeddingSimilarityEvaluator(
        sentences1=test_dataset["sentence1"], sentences2=test_dataset["sentence2"], scores=test_dataset["score"],
        main_similarity=SimilarityFunction.COSINE, name="sts-test")
    metrics = test_evaluator(model)
    print(metrics)
    return finish(trainer, model, output_dir, metrics)


if __name__ == "__main__":
    main()
