"""Listwise reranker training with LambdaLoss (port of sentence-transformers' training_ms_marco_lambdaloss.py).

Each training row is a query, a list of documents and one graded relevance label per document, the
shape of MS MARCO's passage lists. From STS-B: every sentence1 is a query; its sentence2s are documents
with their STS score (0-5) as relevance, and a bi-encoder adds the documents it ranks highest among the
other pairs' as relevance 0 (hard negatives). LambdaLoss with NDCGLoss2PPScheme learns to order each list
by relevance; a CrossEncoderRerankingEvaluator reranks each held-out query's 30 best documents by the
bi-encoder (positives: STS score >= 4).

    python examples/cross_encoder_listwise_lambdaloss.py --data-dir ../shared/data/stsb    # local STS-B
    python examples/cross_encoder_listwise_lambdaloss.py --model microsoft/MiniLM-L12-H384-uncased --bf16 \\
        --max-rows 0 --max-eval-queries 0 --min-score 0.2 --num-negatives 9 --max-docs 10 \\
        --eval-steps 1000                                                  # all of STS-B, longer lists

The defaults (MiniLM, the first 1500 rows of each split, lists of at most 4 documents, pairs scored >= 3 of 5,
100 held-out queries) keep a CPU run to minutes; every step scores batch x max_docs pairs. Measured on 2 shared
CPU cores with the defaults: 647 lists, 41 steps, 7 CPU-minutes, stsb-dev ndcg@10 0.06 -> 0.39 (the bi-encoder's
own ranking: 0.80).
"""

from __future__ import annotations

from datetime import datetime

from common import finish, mined_reranking_samples, model_path, parser, qa_pairs, stsb
from datasets import Dataset

from stcore_jax import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments, SentenceTransformer
from stcore_jax.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
from stcore_jax.cross_encoder.losses import LambdaLoss, NDCGLoss2PPScheme
from stcore_jax.util import mine_hard_negatives


def graded_lists(pairs: Dataset, mined: Dataset, max_docs: int | None) -> Dataset:
    """``query, docs, labels``: per query, its graded documents (highest relevance first, as the recipe sorts
    them) then its mined negatives at relevance 0, cut to ``max_docs``; queries without a relevant document
    are dropped.

    ``pairs``: ``query, answer, relevance``; ``mined``: ``mine_hard_negatives(..., output_format="labeled-list")``
    over those pairs (one row per pair: its answer, then negatives, which exclude every answer of the query).
    """
    graded: dict[str, dict[str, float]] = {}
    for q, a, r in zip(pairs["query"], pairs["answer"], pairs["relevance"]):
        graded.setdefault(q, {})[a] = max(r, graded.get(q, {}).get(a, 0.0))
    negatives: dict[str, dict[str, None]] = {q: {} for q in graded}
    for q, docs in zip(mined["query"], mined["answer"]):
        negatives[q].update(dict.fromkeys(d for d in docs if d not in graded[q]))
    out = {"query": [], "docs": [], "labels": []}
    for q, rel in graded.items():
        ranked = sorted(rel.items(), key=lambda kv: kv[1], reverse=True) + [(d, 0.0) for d in negatives[q]]
        ranked = ranked[:max_docs] if max_docs else ranked
        if ranked[0][1] <= 0:
            continue
        out["query"].append(q)
        out["docs"].append([d for d, _ in ranked])
        out["labels"].append([r for _, r in ranked])
    return Dataset.from_dict(out)


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0], "all-MiniLM-L6-v2", 16, max_seq_length=128)
    p.add_argument("--embedding-model", default="all-MiniLM-L6-v2", help="the bi-encoder that mines the negatives")
    p.add_argument("--num-negatives", type=int, default=3, help="mined relevance-0 documents per (query, document)")
    p.add_argument("--max-docs", type=int, default=4, help="documents per list (the recipe's max_docs; 0: all)")
    p.add_argument("--min-score", type=float, default=0.6, help="STS-B pairs scored >= this (0-1) are documents")
    p.add_argument("--eval-documents", type=int, default=30, help="documents reranked per held-out query")
    p.add_argument("--max-eval-queries", type=int, default=100, help="held-out queries (0: all)")
    p.set_defaults(max_rows=1500)  # a CPU-sized run: about 670 lists; --max-rows 0 uses every row
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--eval-steps", type=int, default=100)
    p.add_argument("--bf16", action="store_true", help="compute in bfloat16 (TPU, recent GPUs)")
    args = p.parse_args(argv)
    args.max_rows = args.max_rows or None
    run_name = "reranker-MiniLM-L6-stsb-lambdaloss"
    output_dir = args.output_dir or f"output/{run_name}_{datetime.now():%Y-%m-%d_%H-%M-%S}"

    # 1. The CrossEncoder: one relevance score per (query, document).
    model = CrossEncoder(model_path(args.model), num_labels=1, max_length=args.max_seq_length)
    print("Model max length:", model.max_seq_length, "num labels:", model.num_labels)

    # 2. Lists: (query: str, docs: list[str], labels: list[float]); docs vary in number per query.
    rows = stsb(args.data_dir, "train", args.max_rows)
    keep = [i for i, s in enumerate(rows["score"]) if s >= args.min_score]
    pairs = Dataset.from_dict({"query": [rows["sentence1"][i] for i in keep],
                               "answer": [rows["sentence2"][i] for i in keep],
                               "relevance": [round(5 * rows["score"][i], 2) for i in keep]})  # STS score, 0-5
    embedding_model = SentenceTransformer(model_path(args.embedding_model))
    mined = mine_hard_negatives(pairs.select_columns(["query", "answer"]), embedding_model,
                                num_negatives=args.num_negatives, range_max=100, sampling_strategy="top",
                                batch_size=256, output_format="labeled-list", verbose=False)
    train_dataset = graded_lists(pairs, mined, args.max_docs)
    print(train_dataset, "e.g.", train_dataset[0])

    # 3. The loss: LambdaLoss weighted by NDCGLoss2++ (its default, written out as the recipe does). The recipe's
    #    mini_batch_size is left out: each step scores its batch x max_docs pairs in one forward here.
    loss = LambdaLoss(model=model, weighting_scheme=NDCGLoss2PPScheme())

    # 4. The evaluator: rerank held-out queries' bi-encoder top documents.
    eval_pairs = qa_pairs(args.data_dir, "validation", 0.8, args.max_rows)
    eval_pairs = eval_pairs.select(range(min(args.max_eval_queries or len(eval_pairs), len(eval_pairs))))
    corpus = list(rows["sentence2"]) + list(stsb(args.data_dir, "validation", args.max_rows)["sentence2"])
    evaluator = CrossEncoderRerankingEvaluator(
        samples=mined_reranking_samples(eval_pairs, embedding_model, corpus, args.eval_documents),
        batch_size=args.batch_size, name="stsb-dev", always_rerank_positives=False)
    print("Before training:", evaluator(model))

    # 5. Training arguments (the recipe's).
    training_args = CrossEncoderTrainingArguments(
        output_dir=output_dir, num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=args.batch_size,
        learning_rate=args.learning_rate, warmup_ratio=0.1, bf16=args.bf16,
        load_best_model_at_end=True, metric_for_best_model="eval_stsb-dev_ndcg@10",
        eval_strategy="steps", eval_steps=args.eval_steps, save_strategy="steps", save_steps=args.eval_steps,
        save_total_limit=2, logging_steps=max(1, args.eval_steps // 4), logging_first_step=True, run_name=run_name,
        seed=12)

    # 6. Train: each step scores batch x max_docs (query, document) pairs in one static batch.
    trainer = CrossEncoderTrainer(model=model, args=training_args, train_dataset=train_dataset, loss=loss,
                                  evaluator=evaluator)
    trainer.train()

    # 7. Evaluate the final model, 8. export.
    metrics = evaluator(model)
    print("After training:", metrics)
    return finish(trainer, model, output_dir, metrics)


if __name__ == "__main__":
    main()
