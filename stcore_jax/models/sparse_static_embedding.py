"""SparseStaticEmbedding: one learned weight per vocabulary token, the query side of inference-free SPLADE
(sentence-transformers' ``SparseStaticEmbedding``).

A text is tokenized without special tokens; its embedding is ``e_v = w_v * 1[token v occurs in the text]``
(``[B, V]``), e.g. IDF weights (:meth:`SparseStaticEmbedding.from_json`). With a ``sentence_embedding`` already in
the features, the two are multiplied elementwise, as in the reference. There is no encoder: a query costs a
tokenization and a lookup, while documents go through MLMTransformer + SpladePooling on the Router's other route.

Parameters: ``{"embedding": w [V]}``. The leaf is named ``embedding`` so that the trainer's conventions apply
unchanged: its export name (``optim.param_names``) is ``"{module path}.weight"``, e.g.
``0.query_0_SparseStaticEmbedding.weight`` inside a Router (a ``learning_rate_mapping`` pattern
``SparseStaticEmbedding`` finds it), and it gets weight decay like the reference's plain ``weight`` parameter
(the Hugging Face Trainer decays every parameter outside norms and biases). ``frozen=True``: the weight's
gradient is zero (``stop_gradient``, the reference's ``requires_grad=False``); the SparseEncoder lists the module's
parameter path in ``frozen_param_paths()`` so that an optimizer can also skip its weight decay.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax.io.safetensors_io import load_safetensors, save_safetensors
from stcore_jax.models.module import Module, ensure_dir, read_json, write_json
from stcore_jax.models.static_embedding import DEFAULT_MAX_TOKENS

WEIGHT_KEY = "weight"  # the safetensors key the reference writes
_NO_LIMIT = 10**6  # transformers' "no model_max_length" is 1e30; past this the tokenizer sets no real limit


def token_presence(input_ids_bt, mask_bt, vocab_size: int):
    """``[B, V]`` float32: 1 where token ``v`` occurs among the non-masked ids of row ``b``, else 0.

    (A scatter-max of the mask: a padding position, mask 0, never clears a token that also occurs unmasked.)
    """
    b = input_ids_bt.shape[0]
    rows = jnp.arange(b)[:, None]
    return jnp.zeros((b, vocab_size), jnp.float32).at[rows, input_ids_bt].max(mask_bt.astype(jnp.float32))


def sparse_static_embed(weight_v, input_ids_bt, mask_bt, sentence_embedding_bv=None):
    """``e = presence(ids, mask) * w`` (``[B, V]`` float32), times ``sentence_embedding_bv`` when given."""
    emb = token_presence(input_ids_bt, mask_bt, weight_v.shape[0]) * weight_v.astype(jnp.float32)
    return emb if sentence_embedding_bv is None else emb * sentence_embedding_bv


def _resolve_json(json_path: str, folder: str | None) -> str:
    for candidate in (json_path, os.path.join(folder, json_path) if folder else None):
        if candidate and os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"SparseStaticEmbedding: IDF JSON file {json_path!r} not found"
                            + (f" (also looked in {folder!r})" if folder else "")
                            + "; stcore_jax reads it from disk (download it first)")


class SparseStaticEmbedding(Module):
    """``SparseStaticEmbedding(tokenizer, weight=None, frozen=False)``.

    Args:
      tokenizer: a ``transformers`` tokenizer (its vocabulary gives ``V``; saved into the module folder).
      weight: ``[V]`` per-token weights (e.g. IDF); default ones.
      frozen: the weight gets no gradient (and, through the model's ``frozen_param_paths``, no update).
      max_seq_length: JAX addition, tokens kept per text; default the tokenizer's ``model_max_length``
        (as the reference truncates), else ``DEFAULT_MAX_TOKENS`` when the tokenizer sets no limit.
    """

    config_keys = ["frozen"]
    st_type = "sentence_transformers.sparse_encoder.models.SparseStaticEmbedding"  # v5 name: read by 5.0-6.2

    def __init__(self, tokenizer, weight=None, frozen: bool = False, *, max_seq_length: int | None = None):
        self.tokenizer = tokenizer
        vocab = len(tokenizer.get_vocab())
        w = np.ones(vocab, np.float32) if weight is None else np.asarray(weight, np.float32)
        if w.ndim != 1:
            raise ValueError(f"SparseStaticEmbedding: weight must be [vocab_size], got shape {w.shape}")
        if w.shape[0] < vocab:
            raise ValueError(f"SparseStaticEmbedding: weight has {w.shape[0]} entries but the tokenizer has {vocab} "
                             "tokens; every token id needs one")
        self.params = {"embedding": jnp.asarray(w)}
        self.frozen = bool(frozen)
        self.num_dimensions = int(w.shape[0])
        if max_seq_length is None:
            limit = getattr(tokenizer, "model_max_length", None) or _NO_LIMIT
            max_seq_length = int(limit) if limit < _NO_LIMIT else DEFAULT_MAX_TOKENS
        self.max_seq_length = int(max_seq_length)

    @classmethod
    def from_json(cls, json_path: str, tokenizer, *, folder: str | None = None, **config) -> SparseStaticEmbedding:
        """Weights from a ``{token: weight}`` JSON file (e.g. ``idf.json``); tokens absent from it weigh 0.

        As the reference, each token goes through ``tokenizer.convert_tokens_to_ids`` (an unknown token lands on
        the unknown-token id) and later entries overwrite earlier ones. ``folder``: also look for a relative
        ``json_path`` there (a module folder whose config names the file).
        """
        with open(_resolve_json(json_path, folder), encoding="utf-8") as f:
            idf = json.load(f)
        if not isinstance(idf, dict) or not idf:
            raise ValueError(f"SparseStaticEmbedding.from_json: {json_path!r} must hold a non-empty "
                             "{token: weight} object")
        ids = tokenizer.convert_tokens_to_ids(list(idf))
        weight = np.zeros(len(tokenizer.get_vocab()), np.float32)
        for token_id, w in zip(ids, idf.values()):
            weight[token_id] = w
        return cls(tokenizer, weight=weight, **config)

    # -- tokenization -------------------------------------------------------------------------
    def tokenize_ids(self, texts) -> dict[str, list[list[int]]]:
        """Token ids per text, without special tokens, at most ``max_seq_length`` of them, unpadded."""
        enc = self.tokenizer(list(texts), add_special_tokens=False, padding=False, truncation="longest_first",
                             max_length=self.max_seq_length, return_attention_mask=False)
        return {"input_ids": enc["input_ids"]}

    def pad(self, ids, length: int, batch_size: int) -> dict[str, np.ndarray]:
        """``[batch_size, length]`` ids and mask (right padding); rows past the inputs are all padding."""
        input_ids = np.full((batch_size, length), self.tokenizer.pad_token_id or 0, np.int32)
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
        """``features["sentence_embedding"]`` = ``[B, V]`` float32 (see :func:`sparse_static_embed`)."""
        weight = params["embedding"]
        if self.frozen:
            weight = jax.lax.stop_gradient(weight)
        features = dict(features)
        features["sentence_embedding"] = sparse_static_embed(weight, features["input_ids"], features["attention_mask"],
                                                             features.get("sentence_embedding"))
        return features

    def get_embedding_dimension(self) -> int:
        return self.num_dimensions

    # -- save / load --------------------------------------------------------------------------
    def save(self, path, params=None) -> None:
        """The reference's folder: tokenizer files, ``model.safetensors`` (``weight`` [V]), ``config.json``."""
        ensure_dir(path)
        self.tokenizer.save_pretrained(path)
        tok_cfg_path = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(tok_cfg_path) and self.max_seq_length != DEFAULT_MAX_TOKENS:
            # the reference truncates at the tokenizer's model_max_length: the length travels with it
            write_json(tok_cfg_path, {**read_json(tok_cfg_path), "model_max_length": self.max_seq_length})
        weight = np.asarray(jax.device_get((params or self.params)["embedding"]), np.float32)
        save_safetensors({WEIGHT_KEY: weight}, os.path.join(path, "model.safetensors"))
        write_json(os.path.join(path, "config.json"), {"frozen": self.frozen})

    @classmethod
    def load(cls, path, **kwargs) -> SparseStaticEmbedding:
        """A module folder: ``config.json`` (``frozen``; a ``path`` ending in ``.json`` loads through
        :meth:`from_json`), the tokenizer and ``model.safetensors`` (``weight``)."""
        from transformers import AutoTokenizer

        path = str(path)
        cfg_path = os.path.join(path, "config.json")
        config = read_json(cfg_path) if os.path.isfile(cfg_path) else {}
        unknown = set(config) - {"frozen", "path"}
        if unknown:
            raise ValueError(f"{cfg_path}: unknown SparseStaticEmbedding config keys {sorted(unknown)}")
        tokenizer = AutoTokenizer.from_pretrained(path, **(kwargs.get("processor_kwargs") or {}))
        json_path = config.pop("path", None)
        if json_path is not None and str(json_path).endswith(".json"):
            return cls.from_json(json_path, tokenizer, folder=path, **config)
        tensors = load_safetensors(path)
        if WEIGHT_KEY not in tensors:
            raise ValueError(f"SparseStaticEmbedding: {os.path.join(path, 'model.safetensors')} has no {WEIGHT_KEY!r} "
                             f"tensor; keys: {sorted(tensors)[:10]}")
        return cls(tokenizer, weight=tensors[WEIGHT_KEY], **config)

    def __repr__(self):
        return (f"SparseStaticEmbedding({{'frozen': {self.frozen}}}, dim={self.num_dimensions}, "
                f"tokenizer={type(self.tokenizer).__name__})")
