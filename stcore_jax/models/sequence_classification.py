"""SequenceClassificationTransformer: tokenizer + ``*ForSequenceClassification`` head model, the CrossEncoder's
input module (the reference's ``Transformer(transformer_task="sequence-classification")``, output ``scores``).

It tokenizes text *pairs* as the reference does (``tokenizer(firsts, seconds, truncation="longest_first",
max_length=max_seq_length)``, token type ids 0/1) and its pure ``apply`` adds ``features["scores"]`` (the
logits, float32 ``[B, num_labels]``), so the shared pipeline (``base/model.py``: params pytree, forward,
bucketed inference) runs a CrossEncoder unchanged.
"""

from __future__ import annotations

import copy
import os

import jax.numpy as jnp
import numpy as np

from stcore_jax.models.heads import HeadModel, load_head_model, num_labels_from
from stcore_jax.models.module import Module, ensure_dir, read_json, write_json
from stcore_jax.models.transformer import Transformer, check_max_seq_length, position_limit

KIND = "sequence_classification"


def _texts(pairs) -> tuple[list[str], list[str] | None]:
    """``[(a, b), ...]`` -> (firsts, seconds); plain strings -> (texts, None)."""
    if all(isinstance(p, str) for p in pairs):
        return list(pairs), None
    firsts, seconds = [], []
    for i, p in enumerate(pairs):
        if not isinstance(p, (list, tuple)) or len(p) != 2 or not all(isinstance(t, str) for t in p):
            raise TypeError(f"input {i} is {p!r}: a CrossEncoder takes pairs of two strings")
        firsts.append(p[0])
        seconds.append(p[1])
    return firsts, seconds


class SequenceClassificationTransformer(Module):
    """Tokenizer + encoder with a classification head; ``apply(params, features) -> features + "scores"``.

    Build with :meth:`from_pretrained` (a ``*ForSequenceClassification`` checkpoint, or any checkpoint of a
    supported architecture, whose head is then initialised afresh from ``seed``).
    """

    st_type = "sentence_transformers.base.modules.transformer.Transformer"
    peft_task_type = "SEQ_CLS"  # LoRA: LoraConfig(task_type="SEQ_CLS") trains the head (models/lora.py)

    def __init__(self, head: HeadModel, tokenizer, max_seq_length: int | None = None, source_path: str | None = None):
        self.head = head
        self.params = head.params
        self.tokenizer = tokenizer
        if max_seq_length is None:  # the tokenizer's length; a missing one (1e30) capped at the position table
            limit = position_limit(self.config)
            max_seq_length = min(tokenizer.model_max_length, limit or tokenizer.model_max_length)
        self.max_seq_length = max_seq_length
        self.source_path = source_path

    @classmethod
    def from_pretrained(cls, path, *, num_labels: int | None = None, max_seq_length: int | None = None,
                        processor_kwargs: dict | None = None, config_kwargs: dict | None = None,
                        compute_dtype=jnp.float32, seed: int = 0) -> SequenceClassificationTransformer:
        from transformers import AutoTokenizer

        path = str(path)
        head = load_head_model(path, KIND, num_labels=num_labels, config_kwargs=config_kwargs,
                               compute_dtype=compute_dtype, seed=seed)
        tokenizer = AutoTokenizer.from_pretrained(path, **(processor_kwargs or {}))
        return cls(head, tokenizer, max_seq_length, source_path=path)

    @property
    def config(self):
        """The encoder's :class:`EncoderConfig` (``config.hf``: the ``config.json`` the export writes)."""
        return self.head.config

    @property
    def num_labels(self) -> int:
        return num_labels_from(self.head.config.hf)

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value):
        self._max_seq_length = check_max_seq_length(value, self.config)

    # -- tokenization -------------------------------------------------------------------------
    def tokenize_ids(self, pairs) -> dict[str, list[list[int]]]:
        """Token ids per pair (or per text), truncated ``longest_first`` to ``max_seq_length``, unpadded."""
        firsts, seconds = _texts(pairs)
        enc = self.tokenizer(firsts, seconds, padding=False, truncation="longest_first",
                             max_length=self.max_seq_length, return_attention_mask=False)
        out = {"input_ids": enc["input_ids"]}
        if "token_type_ids" in enc:
            out["token_type_ids"] = enc["token_type_ids"]
        return out

    pad = Transformer.pad  # right padding to [batch_size, length]; it only reads self.tokenizer

    def tokenize(self, pairs, length: int | None = None) -> dict[str, np.ndarray]:
        """Tokenize and pad to the longest pair (or ``length``)."""
        ids = self.tokenize_ids(pairs)
        longest = max((len(r) for r in ids["input_ids"]), default=0)
        return self.pad(ids, length or longest, len(ids["input_ids"]))

    # -- forward ------------------------------------------------------------------------------
    def apply(self, params, features, *, dropout_key=None):
        """``features`` (``input_ids``/``attention_mask`` [B, T], optional ``token_type_ids``) plus ``scores``:
        float32 logits [B, num_labels]. No ``dropout_key``: inference (no dropout)."""
        scores = self.head.apply(params, features["input_ids"], features["attention_mask"],
                                 features.get("token_type_ids"), dropout_key=dropout_key)
        return {**features, "scores": scores}

    # -- training modes -----------------------------------------------------------------------
    def with_compute_dtype(self, dtype) -> SequenceClassificationTransformer:
        """A shallow copy whose encoder and head compute in ``dtype`` (e.g. ``jnp.bfloat16``); parameters,
        tokenizer and the gradient-checkpointing setting are shared/kept, ``self`` is unchanged. As torch
        autocast: matmuls in ``dtype`` on float32 master weights, softmax and the returned ``scores`` float32.
        The trainer runs its step on such a copy for ``bf16=True``."""
        if jnp.dtype(dtype) == jnp.dtype(self.config.dtype):
            return self
        out = copy.copy(self)
        out.head = self.head.with_graph(dtype=dtype)
        return out

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each encoder layer's activations in the backward pass (``jax.checkpoint`` per layer)."""
        self.head = self.head.with_graph(gradient_checkpointing=enabled)

    # -- save ---------------------------------------------------------------------------------
    def save(self, path, params=None) -> None:
        """``config.json`` + ``model.safetensors`` (transformers' ``*ForSequenceClassification``) + tokenizer."""
        ensure_dir(path)
        self.head.save(path, self.params if params is None else params)
        self.tokenizer.save_pretrained(path)
        tok_cfg_path = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(tok_cfg_path):  # the truncation length travels with the tokenizer, as the reference's
            write_json(tok_cfg_path, {**read_json(tok_cfg_path), "model_max_length": self.max_seq_length})

    def get_config_dict(self) -> dict:
        return {"architecture": self.config.hf["architectures"][0], "num_labels": self.num_labels,
                "max_seq_length": self.max_seq_length}
