"""Sequence packing in the trainer: when it is on, that one step changes nothing but speed, its shapes.
Whole packed runs against padded ones (losses, gradients, Adam moments, weights) are in
test_trainer_equalities.py."""

import jax
import numpy as np
import pytest
from datasets import Dataset

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.losses import CachedMultipleNegativesRankingLoss, CoSENTLoss, MultipleNegativesRankingLoss
from stcore_jax.sentence_transformer.data import collate
from stcore_jax.sentence_transformer.losses.embed import compute_loss


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=2,
                learning_rate=1e-3, logging_steps=100, save_strategy="no", disable_tqdm=True, save_final_model=False)
    base.update(kw)
    return SentenceTransformerTrainingArguments(**base)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


def test_packing_is_chosen_where_it_keeps_the_results(tiny_bert_dir, pairs, tmp_path):
    model = SentenceTransformer(tiny_bert_dir)
    mnrl = Dataset.from_dict({"anchor": pairs["sentence1"], "positive": pairs["sentence2"]})
    auto = SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset=mnrl,
                                      loss=MultipleNegativesRankingLoss(model))
    assert auto.packing and auto.pack_length % 8 == 0 and auto.row_buckets == tuple(sorted(auto.row_buckets))
    cached = CachedMultipleNegativesRankingLoss(model, mini_batch_size=4)
    off = SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset=mnrl, loss=cached)
    assert not off.packing  # GradCache embeds its own chunks
    with pytest.raises(ValueError, match="sequence_packing=True, but loss CachedMultipleNegativesRankingLoss of "
                                         "dataset 'train' embeds its columns itself"):
        SentenceTransformerTrainer(model=model, args=_args(tmp_path, sequence_packing=True), train_dataset=mnrl,
                                   loss=cached)
    assert not SentenceTransformerTrainer(model=model, args=_args(tmp_path, sequence_packing=False),
                                          train_dataset=mnrl, loss=MultipleNegativesRankingLoss(model)).packing
    with pytest.raises(ValueError, match="sequence_packing must be True, False or None"):
        _args(tmp_path, sequence_packing="yes")


def test_packed_step_loss_and_gradient_equal_padded(tiny_bert_dir, pairs, tmp_path):
    """On 8 data shards with prompts and dropout, a packed batch gives the loss and gradient of the padded
    batch at the same length (same per-sentence dropout masks)."""
    model = SentenceTransformer(tiny_bert_dir)
    loss = CoSENTLoss(model)
    args = _args(tmp_path, prompts={"sentence1": "query: "})
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=loss)
    assert trainer.packing and trainer.data_parallel == 8
    name, rows = trainer.epoch_plan(0)[0]
    ds = trainer.train_prepared[name]
    packed = trainer._collate_packed(ds, [rows], trainer.global_batch)
    assert packed["packed"]["packed_input_ids"].shape[0] == 8
    assert "prompt_length" in packed["columns"][1]  # zero-filled, so the columns stack into one forward
    padded = collate(ds, rows, trainer.global_batch, trainer.pack_length, model.input_module.pad)
    np.testing.assert_array_equal(packed["columns"][0]["attention_mask"], padded["columns"][0]["attention_mask"])
    key = jax.random.key(0)

    def value_and_grad(batch):
        fn = lambda p: compute_loss(loss, model.forward, p, batch["columns"], batch["label"], dropout_key=key,  # noqa: E731
                                    mask=batch["mask"], num_shards=8, packed=batch.get("packed"))
        return jax.jit(jax.value_and_grad(fn))(model.params)

    (lp, gp), (lq, gq) = value_and_grad(packed), value_and_grad(padded)
    np.testing.assert_allclose(lp, lq, rtol=1e-5)
    for a, b in zip(_leaves(gp), _leaves(gq)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
