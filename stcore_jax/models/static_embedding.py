"""StaticEmbedding: a token-embedding table averaged over a text's tokens (sentence-transformers
``StaticEmbedding``; the Model2Vec / static-retrieval models).

There is no attention and no special token: a text is tokenized by a ``tokenizers.Tokenizer`` with
``add_special_tokens=False`` (its own truncation setting, if any, still applies, as in the
reference), and its embedding is the mean of its tokens' rows, zeros for a text with no tokens
(``torch.nn.EmbeddingBag(mode="mean")`` on an empty bag). The reference feeds EmbeddingBag a flat
id list with offsets; here the ids are padded to ``[B, T]`` like every other input module, with the
padding masked out of the mean, so the trainer's length buckets and sharding apply unchanged.

Parameters: ``{"embedding": {"embedding": [vocab, dim]}}`` (exported as ``embedding.weight``).
Distillation from a transformer (Model2Vec's recipe) lives in :mod:`stcore_jax.distill`.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from stcore_jax.io.safetensors_io import load_safetensors, save_safetensors
from stcore_jax.models.module import Module, ensure_dir, read_json

# XLA needs static shapes, so unlike the reference (no length limit) texts are cut at some length.
# When the tokenizer sets no truncation, the cut is this many tokens (buckets keep short batches short).
DEFAULT_MAX_TOKENS = 8192


def _as_tokenizer(tokenizer):
    """A private copy of the Rust ``tokenizers.Tokenizer`` behind ``tokenizer`` (no padding)."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)  # transformers' PreTrainedTokenizerFast
    if backend is not None:
        tokenizer = backend
    if not isinstance(tokenizer, Tokenizer):
        raise ValueError(f"StaticEmbedding needs a fast tokenizer (tokenizers.Tokenizer or PreTrainedTokenizerFast), "
                         f"got {type(tokenizer).__name__}; load one with "
                         "tokenizers.Tokenizer.from_file('tokenizer.json')")
    tok = Tokenizer.from_str(tokenizer.to_str())  # a copy: no_padding() must not change the caller's tokenizer
    tok.no_padding()
    return tok


def mean_embed(table_vd, input_ids_bt, mask_bt):
    """Masked mean of token rows: ``[V, D]``, ``[B, T]`` ids, ``[B, T]`` mask -> ``[B, D]`` float32.

    Rows with no tokens give zeros (the reference's EmbeddingBag on an empty bag).
    """
    mask = mask_bt.astype(jnp.float32)
    rows_btd = jnp.take(table_vd, input_ids_bt, axis=0).astype(jnp.float32)
    total = jnp.einsum("btd,bt->bd", rows_btd, mask)
    return total / jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0)


def fold_model2vec_weights(embeddings, mapping=None, weights=None) -> np.ndarray:
    """One row per token id from a Model2Vec file: ``embeddings[mapping[id]] * weights[id]``.

    Model2Vec stores vocabulary-quantized models as shared rows plus a token -> row ``mapping`` and
    per-token ``weights``; its encoder averages exactly these products.
    """
    emb = np.asarray(embeddings, np.float32)
    if mapping is not None:
        emb = emb[np.asarray(mapping, np.int64)]
    if weights is not None:
        emb = emb * np.asarray(weights, np.float32)[:, None]
    return np.ascontiguousarray(emb)


class StaticEmbedding(Module):
    """``StaticEmbedding(tokenizer, embedding_weights=None, embedding_dim=None)``.

    Args:
      tokenizer: a ``tokenizers.Tokenizer`` or ``transformers.PreTrainedTokenizerFast``.
      embedding_weights: ``[vocab, dim]`` array; else a table of ``embedding_dim`` columns drawn from
        N(0, 1) (EmbeddingBag's init) with ``seed``.
      max_seq_length: JAX addition, tokens kept per text; default the tokenizer's truncation length,
        else ``DEFAULT_MAX_TOKENS``.
    """

    st_type = "sentence_transformers.models.StaticEmbedding"
    config_keys = ["embedding_dim"]

    def __init__(self, tokenizer, embedding_weights=None, embedding_dim: int | None = None, *,
                 max_seq_length: int | None = None, seed: int = 0, base_model: str | None = None, **unused):
        self.tokenizer = _as_tokenizer(tokenizer)
        vocab = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if embedding_weights is not None:
            table = np.asarray(embedding_weights, dtype=np.float32)
            if table.ndim != 2:
                raise ValueError(f"StaticEmbedding: embedding_weights must be [vocab, dim], got shape {table.shape}")
            if table.shape[0] < vocab:
                raise ValueError(f"StaticEmbedding: embedding_weights has {table.shape[0]} rows but the tokenizer has "
                                 f"{vocab} tokens; every token id needs a row")
        elif embedding_dim is not None:
            if int(embedding_dim) < 1:
                raise ValueError(f"StaticEmbedding: embedding_dim must be positive, got {embedding_dim}")
            table = np.random.default_rng(seed).standard_normal((vocab, int(embedding_dim))).astype(np.float32)
        else:
            raise ValueError("StaticEmbedding needs embedding_weights or embedding_dim")
        self.params = {"embedding": {"embedding": jnp.asarray(table)}}
        self.num_embeddings, self.embedding_dim = int(table.shape[0]), int(table.shape[1])
        if max_seq_length is None:
            trunc = self.tokenizer.truncation
            max_seq_length = trunc["max_length"] if trunc else DEFAULT_MAX_TOKENS
        self.max_seq_length = int(max_seq_length)
        self.base_model = base_model

    # -- tokenization -------------------------------------------------------------------------
    def tokenize_ids(self, texts) -> dict[str, list[list[int]]]:
        """Token ids per text, without special tokens, at most ``max_seq_length`` of them."""
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return {"input_ids": [e.ids[: self.max_seq_length] for e in encodings]}

    def pad(self, ids, length: int, batch_size: int) -> dict[str, np.ndarray]:
        """``[batch_size, length]`` ids and mask; rows past the inputs are all padding."""
        input_ids = np.zeros((batch_size, length), np.int32)
        mask = np.zeros((batch_size, length), np.int32)
        for i, row in enumerate(ids["input_ids"]):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def tokenize(self, texts, length: int | None = None) -> dict[str, np.ndarray]:
        ids = self.tokenize_ids(texts)
        longest = max((len(r) for r in ids["input_ids"]), default=0)
        return self.pad(ids, length or max(longest, 1), len(ids["input_ids"]))

    # -- forward ------------------------------------------------------------------------------
    def apply(self, params, features, *, dropout_key=None):
        features = dict(features)
        features["sentence_embedding"] = mean_embed(params["embedding"]["embedding"], features["input_ids"],
                                                    features["attention_mask"])
        return features

    def get_embedding_dimension(self) -> int:
        return self.embedding_dim

    # -- save / load --------------------------------------------------------------------------
    def save(self, path, params=None):
        ensure_dir(path)
        table = np.asarray((params or self.params)["embedding"]["embedding"], np.float32)
        save_safetensors({"embedding.weight": table}, os.path.join(path, "model.safetensors"))
        self.tokenizer.save(os.path.join(path, "tokenizer.json"))

    @classmethod
    def load(cls, path, **kwargs):
        """A sentence-transformers folder (``embedding.weight``) or a Model2Vec one (``embeddings``,
        optionally ``mapping`` and ``weights``), each with ``tokenizer.json``."""
        from tokenizers import Tokenizer

        tok_path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tok_path):
            raise FileNotFoundError(f"StaticEmbedding: no tokenizer.json in {path!r}")
        tensors = load_safetensors(path)
        if "embedding.weight" in tensors:
            table = tensors["embedding.weight"]
        elif "embeddings" in tensors:
            table = fold_model2vec_weights(tensors["embeddings"], tensors.get("mapping"), tensors.get("weights"))
        else:
            raise ValueError(f"StaticEmbedding: {os.path.join(path, 'model.safetensors')} has neither "
                             f"'embedding.weight' (sentence-transformers) nor 'embeddings' (Model2Vec); keys: "
                             f"{sorted(tensors)[:10]}")
        kept = {k: v for k, v in kwargs.items() if k in ("max_seq_length",)}
        return cls(Tokenizer.from_file(tok_path), embedding_weights=table, **kept)

    @classmethod
    def from_model2vec(cls, model_id_or_path: str) -> StaticEmbedding:
        """A local Model2Vec directory (``config.json``, ``model.safetensors``, ``tokenizer.json``)."""
        if not os.path.isdir(str(model_id_or_path)):
            raise FileNotFoundError(f"from_model2vec: {model_id_or_path!r} is not a local directory (stcore_jax reads "
                                    "Model2Vec models from disk; download it first)")
        module = cls.load(str(model_id_or_path))
        module.base_model = str(model_id_or_path)
        return module

    @classmethod
    def from_distillation(cls, model_name: str, vocabulary=None, device=None, pca_dims=256, apply_zipf=True,
                          sif_coefficient=1e-4, token_remove_pattern=r"\[unused\d+\]", quantize_to="float32",
                          use_subword=True, batch_size: int = 1024, **kwargs) -> StaticEmbedding:
        """Distill a transformer's vocabulary into a static table (Model2Vec's recipe, natively in JAX):
        see :func:`stcore_jax.distill.distill`."""
        from stcore_jax.distill import distill
        from stcore_jax.io.hub import resolve_model_path
        from stcore_jax.models.transformer import Transformer

        tokenizer, table = distill(model_name, vocabulary=vocabulary, pca_dims=pca_dims, apply_zipf=apply_zipf,
                                   sif_coefficient=sif_coefficient, token_remove_pattern=token_remove_pattern,
                                   quantize_to=quantize_to, use_subword=use_subword, batch_size=batch_size,
                                   load_transformer=lambda name: Transformer(resolve_model_path(name)))
        return cls(tokenizer, embedding_weights=table, base_model=str(model_name))

    def __repr__(self):
        return f"StaticEmbedding(num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim})"


def is_model2vec_dir(path: str) -> bool:
    """A Model2Vec directory without ``modules.json``: ``config.json`` says ``model_type: model2vec``."""
    cfg = os.path.join(path, "config.json")
    return os.path.isfile(cfg) and read_json(cfg).get("model_type") == "model2vec"
