"""Helpers for parity tests against sentence-transformers 6.2 (PyTorch, float32)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import torch

DIM = 16  # embedding dimension used throughout the loss tests (= the tiny model's hidden size)
TOL = 1e-5


def build_tiny_sentence_transformer(path):
    """A random 2-layer BERT (hidden 16) + mean pooling, saved to ``path`` and loaded through
    ``sentence_transformers.SentenceTransformer(modules=[...])``. No network access."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path = os.fspath(path)
    if not os.path.exists(os.path.join(path, "config.json")):
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(20)]
        with open(os.path.join(path, "vocab.txt"), "w") as fh:
            fh.write("\n".join(vocab))
        BertTokenizerFast(vocab_file=os.path.join(path, "vocab.txt")).save_pretrained(path)
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(vocab), hidden_size=DIM, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=32)
        BertModel(config).save_pretrained(path)
    transformer = modules.Transformer(path)
    return SentenceTransformer(modules=[transformer, modules.Pooling(DIM, "mean")], device="cpu")


def randn(seed, *shape, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def columns(seed, n, batch=8, dim=DIM):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, dim)).astype(np.float32) for _ in range(n)]


def torch_value_and_grads(fn, arrays):
    """Run a reference loss ``fn(list[torch leaf tensors]) -> scalar`` and back-propagate."""
    leaves = [torch.tensor(a, requires_grad=True) for a in arrays]
    value = fn(leaves)
    value.backward()
    grads = [np.zeros_like(a) if t.grad is None else t.grad.numpy() for a, t in zip(arrays, leaves)]
    return float(value.item()), grads


def jax_value_and_grads(fn, arrays):
    value, grads = jax.jit(jax.value_and_grad(fn))([jnp.asarray(a) for a in arrays])
    return float(value), [np.asarray(g) for g in grads]


def assert_parity(ref_fn, jax_fn, arrays, tol=TOL):
    """Loss values and gradients w.r.t. every input array agree within ``tol`` (abs and rel). JAX runs first, so a
    test can replay random draws recorded from the (jitted) JAX run to the reference."""
    value, grads = jax_value_and_grads(jax_fn, arrays)
    ref_value, ref_grads = torch_value_and_grads(ref_fn, arrays)
    np.testing.assert_allclose(value, ref_value, rtol=tol, atol=tol, err_msg="loss value")
    for i, (g, rg) in enumerate(zip(grads, ref_grads)):
        np.testing.assert_allclose(g, rg, rtol=tol, atol=tol, err_msg=f"gradient of input {i}")
    return value


def patch_embed_columns(monkeypatch, module, outputs):
    """Make ``module.embed_columns(model, features)`` return ``outputs[id(model)]`` (a list of
    tensors), for reference losses whose forward embeds internally and has no
    ``compute_loss_from_embeddings``."""
    monkeypatch.setattr(module, "embed_columns", lambda model, features, *a, **k: outputs[id(model)])
