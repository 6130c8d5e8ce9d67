"""Reranker on mined hard negatives with BinaryCrossEntropyLoss (port of sentence-transformers' training_gooaq_bce).

A bi-encoder mines, for every (query, answer) pair, the 5 answers it ranks highest among the other pairs'
answers; the CrossEncoder learns to score the true answer (label 1) above them (label 0), with
``pos_weight=5`` balancing the 1:5 ratio. The evaluator reranks each held-out query's 30 best documents by
the bi-encoder (the ``base_*`` metrics are the bi-encoder's ranking). The data is STS-B's pairs scored
>= 4 of 5 as (query, answer), standing in for sentence-transformers/gooaq. The defaults (MiniLM, the first
1500 rows of each split: 316 training pairs, 100 held-out queries) keep a CPU run to minutes; ``--max-rows 0
--max-eval-queries 0`` uses all of STS-B (1406 pairs, 8284 labeled rows, 264 held-out queries). Measured on
2 shared CPU cores: defaults, 58 steps, 5 CPU-minutes, stsb-dev ndcg@10 0.06 -> 0.51 (the bi-encoder's own
ranking: 0.85); all of STS-B, 259 steps, 28 CPU-minutes, 0.09 -> 0.93 (bi-encoder: 0.92).

    python examples/cross_encoder_hard_negatives_bce.py --data-dir ../shared/data/stsb   # local STS-B
    python examples/cross_encoder_hard_negatives_bce.py                   # hub: sentence-transformers/stsb
    python examples/cross_encoder_hard_negatives_bce.py --data-dir ../shared/data/stsb --max-rows 0 \\
        --max-eval-queries 0                                              # all of STS-B
    python examples/cross_encoder_hard_negatives_bce.py --model answerdotai/ModernBERT-base --batch-size 64 \\
        --bf16 --max-rows 0 --max-eval-queries 0 --eval-steps 1000       # the recipe's settings
"""

from __future__ import annotations

from datetime import datetime

from common import finish, mined_reranking_samples, model_path, parser, qa_pairs, stsb

from stcore_jax import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments, SentenceTransformer
from stcore_jax.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
from stcore_jax.cross_encoder.losses import BinaryCrossEntropyLoss
from stcore_jax.util import mine_hard_negatives


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], "all-MiniLM-L6-v2", 32, max_seq_length=128)
    p.add_argument("--embedding-model", default="all-MiniLM-L6-v2", help="the bi-encoder that mines the negatives")
    p.add_argument("--num-negatives", type=int, default=5, help="hard negatives mined per (query, answer) pair")
    p.add_argument("--eval-documents", type=int, default=30, help="documents reranked per held-out query")
    p.add_argument("--max-eval-queries", type=int, default=100, help="held-out queries (0: all)")
    p.set_defaults(max_rows=1500)  # a CPU-sized run: 316 (query, answer) pairs; --max-rows 0 uses every row
    p.add_argument("--min-score", type=float, default=0.8, help="STS-B pairs scored >= this (0-1) are (query, answer)")
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--eval-steps", type=int, default=100)
    p.add_argument("--bf16", action="store_true", help="compute in bfloat16 (TPU, recent GPUs)")
    args = p.parse_args(argv)
    args.max_rows = args.max_rows or None
    run_name = "reranker-MiniLM-L6-stsb-bce"
    output_dir = args.output_dir or f"output/{run_name}_{datetime.now():%Y-%m-%d_%H-%M-%S}"

    # 1. The CrossEncoder: a plain encoder (or a bi-encoder's directory) gets a fresh 1-label head.
    model = CrossEncoder(model_path(args.model), max_length=args.max_seq_length)
    print("Model max length:", model.max_seq_length, "num labels:", model.num_labels)

    # 2a. (query, answer) pairs: training from the train split, held-out queries from the validation split.
    train_pairs = qa_pairs(args.data_dir, "train", args.min_score, args.max_rows)
    eval_pairs = qa_pairs(args.data_dir, "validation", args.min_score, args.max_rows)
    eval_pairs = eval_pairs.select(range(min(args.max_eval_queries or len(eval_pairs), len(eval_pairs))))

    # 2b. Hard negatives from a bi-encoder: (query, doc, label) rows, 1 positive and 5 negatives per pair.
    embedding_model = SentenceTransformer(model_path(args.embedding_model))
    hard_train_dataset = mine_hard_negatives(
        train_pairs, embedding_model,
        num_negatives=args.num_negatives,  # how many negatives per question-answer pair
        range_min=0,  # skip the x most similar samples
        range_max=100,  # consider only the x most similar samples
        sampling_strategy="top",  # take the top negatives from the range
        batch_size=256,
        output_format="labeled-pair",  # (query, passage, label), as BinaryCrossEntropyLoss needs
    )
    print(hard_train_dataset)

    # 3. The loss: pos_weight = negatives per positive, so both classes weigh the same.
    loss = BinaryCrossEntropyLoss(model=model, pos_weight=args.num_negatives)

    # 4. A reranking evaluator over mined documents (the positive among them where the bi-encoder found it);
    #    the corpus is every answer of both splits.
    corpus = list(train_pairs["answer"]) + list(stsb(args.data_dir, "validation", args.max_rows)["sentence2"])
    reranking_evaluator = CrossEncoderRerankingEvaluator(
        samples=mined_reranking_samples(eval_pairs, embedding_model, corpus, args.eval_documents),
        batch_size=args.batch_size, name="stsb-dev",
        always_rerank_positives=False,  # realistic: rerank only the positives the retriever found
    )
    print("Before training:", reranking_evaluator(model))

    # 5. Training arguments (the recipe's, with bf16 optional).
    training_args = CrossEncoderTrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate, warmup_ratio=0.1, bf16=args.bf16,
        load_best_model_at_end=True, metric_for_best_model="eval_stsb-dev_ndcg@10",
        eval_strategy="steps", eval_steps=args.eval_steps, save_strategy="steps", save_steps=args.eval_steps,
        save_total_limit=2, logging_steps=max(1, args.eval_steps // 5), logging_first_step=True, run_name=run_name,
        seed=12)

    # 6. Train.
    trainer = CrossEncoderTrainer(model=model, args=training_args, train_dataset=hard_train_dataset, loss=loss,
                                  evaluator=reranking_evaluator)
    trainer.train()

    # 7. Evaluate the final model, 8. export (loads in PyTorch sentence-transformers 4.0-6.2).
    metrics = reranking_evaluator(model)
    print("After training:", metrics)
    return finish(trainer, model, output_dir, metrics)


if __name__ == "__main__":
    main()
