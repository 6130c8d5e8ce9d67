"""bf16=True: the compiled steps compute in bfloat16 on float32 master weights; the model keeps float32."""

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.losses import CoSENTLoss


def test_bf16_view_computes_in_bfloat16_and_leaves_model_alone(tiny_bert_dir):
    model = SentenceTransformer(tiny_bert_dir)
    view = model.with_compute_dtype(jnp.bfloat16)
    assert view is not model and model.input_module.config.dtype == jnp.float32
    feats = model.tokenize(["A man is playing a guitar.", "A woman slices an onion on a board."])
    jaxpr = str(jax.make_jaxpr(lambda p, f: view.forward(p, f)["sentence_embedding"])(model.params, feats))
    assert "bf16" in jaxpr  # activations really are bfloat16
    assert "bf16" not in str(jax.make_jaxpr(lambda p, f: model.forward(p, f)["sentence_embedding"])(model.params, feats))
    full = np.asarray(model.forward(model.params, feats)["sentence_embedding"])
    half = np.asarray(view.forward(model.params, feats)["sentence_embedding"], dtype=np.float32)
    err = np.abs(full - half).max() / np.abs(full).max()
    assert 0 < err < 5e-2  # bf16 rounding, not a different model


def test_trainer_bf16_trains_master_weights_in_float32(tiny_bert_dir, pairs, tmp_path):
    model = SentenceTransformer(tiny_bert_dir)
    before = jax.tree_util.tree_leaves(jax.device_get(model.params))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
        save_strategy="no", disable_tqdm=True, save_final_model=False, bf16=True)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=CoSENTLoss(model))
    assert trainer._compute_model().input_module.config.dtype == jnp.bfloat16
    trainer.train()
    after = jax.tree_util.tree_leaves(jax.device_get(model.params))
    assert all(a.dtype == np.float32 for a in after)
    assert max(np.abs(a - b).max() for a, b in zip(after, before)) > 1e-4
    assert model.input_module.config.dtype == jnp.float32  # encode/export stay float32
