"""Evaluator in the loop: eval_-prefixed keys as sentence-transformers names them, best model restored at the end."""

import json
import os

import jax
import numpy as np

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.evaluation import EmbeddingSimilarityEvaluator
from stcore_jax.losses import CoSENTLoss
from stcore_jax.util import read_sts


def test_load_best_model_at_end(tiny_bert_dir, pairs, stsb_dir, tmp_path):
    d1, d2, dsc = read_sts(stsb_dir / "sts-dev.csv")
    evaluator = EmbeddingSimilarityEvaluator(d1[:64], d2[:64], [x / 5 for x in dsc[:64]], name="sts-dev")
    model = SentenceTransformer(tiny_bert_dir)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=8, per_device_train_batch_size=2, learning_rate=3e-3,
        eval_strategy="steps", eval_steps=2, save_steps=2, logging_steps=2, load_best_model_at_end=True,
        metric_for_best_model="sts-dev_spearman_cosine", disable_tqdm=True, save_final_model=False)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, eval_dataset=pairs,
                                         loss=CoSENTLoss(model), evaluator=evaluator)
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_sts-dev_spearman_cosine" in h]
    assert [h["step"] for h in evals] == [2, 4, 6, 8]
    assert {"eval_loss", "eval_sts-dev_pearson_cosine", "eval_sts-dev_spearman_cosine", "eval_runtime", "epoch"} <= set(evals[0])
    scores = [h["eval_sts-dev_spearman_cosine"] for h in evals]
    best_step = evals[int(np.argmax(scores))]["step"]
    assert trainer.state.best_metric == max(scores)
    assert trainer.state.best_model_checkpoint == os.path.join(args.output_dir, f"checkpoint-{best_step}")
    # The model now holds the best checkpoint's parameters (its export is the sentence-transformers layout).
    best = SentenceTransformer(trainer.state.best_model_checkpoint)
    for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(model.params)), jax.tree_util.tree_leaves(best.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert abs(evaluator(model)["sts-dev_spearman_cosine"] - max(scores)) < 1e-6
    rows = [json.loads(line) for line in open(os.path.join(args.output_dir, "logs.jsonl"))]
    assert any("eval_sts-dev_spearman_cosine" in r for r in rows)
