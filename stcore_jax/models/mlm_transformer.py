"""MLMTransformer: tokenizer + ``*ForMaskedLM`` head model, the SparseEncoder's input module (sentence-transformers'
``MLMTransformer`` of 5.x, ``Transformer(transformer_task="fill-mask")`` of 6.x), output ``token_embeddings`` =
the masked-LM logits float32 ``[B, T, V]``, the decoder tied to the word embeddings.

The model is ``models/heads.py``'s :class:`~stcore_jax.models.heads.HeadModel` (``kind="masked_lm"``), wrapped as
a pipeline module the way :class:`~stcore_jax.models.sequence_classification.SequenceClassificationTransformer`
wraps the classification head for the CrossEncoder: the shared pipeline (params pytree, pure forward, bucketed
inference, bf16 view, gradient checkpointing) runs it unchanged.

Besides the logits, ``apply`` passes the decoder's operands (``features["mlm_decoder_inputs"]``: the head's
transformed hidden states, the word-embedding table, the bias; :class:`~stcore_jax.models.splade_pooling.
DecoderInputs`) so that SpladePooling can compute decoder and pooling chunk by chunk without the ``[B, T, V]``
logits; under ``jax.jit`` the logits are then dead code. The split of each architecture's head into "hidden
states before the decoder" and "the decoder" is :data:`DECODER_SPLITS` below (tested to give the head's own
logits exactly); an architecture without an entry runs the head as is and SpladePooling pools its logits.
"""

from __future__ import annotations

import copy
import os

import jax.numpy as jnp
from flax import nnx

from stcore_jax.models.bert import BertForMaskedLM
from stcore_jax.models.distilbert import DistilBertForMaskedLM
from stcore_jax.models.electra import ElectraForMaskedLM
from stcore_jax.models.heads import HeadModel, load_head_model
from stcore_jax.models.layers import gelu_erf, tied_logits
from stcore_jax.models.modernbert import ModernBertForMaskedLM
from stcore_jax.models.module import Module, ensure_dir, read_json, write_json
from stcore_jax.models.mpnet import MPNetForMaskedLM
from stcore_jax.models.roberta import RobertaForMaskedLM
from stcore_jax.models.splade_pooling import DECODER_INPUTS, DecoderInputs
from stcore_jax.models.transformer import (
    ST_CONFIG_NAMES,
    Transformer,
    _lowercase_tokenizer,
    check_max_seq_length,
    position_limit,
)

KIND = "masked_lm"
FILL_MASK = "fill-mask"


# -- each head split before its decoder: (model, ids, mask, types, key) -> (hidden [B,T,H'], table [V,H'], bias) --
# Each line mirrors the head's ``__call__`` in its architecture file minus the final ``tied_logits``.
def _bert(m, ids, mask, types, key):
    h = m.bert(ids, mask, types, dropout_key=key)["last_hidden_state"]
    head = m.cls.predictions
    return head.transform(h), m.bert.embeddings.word_embeddings.embedding[...], head.bias[...]


def _roberta_head(lm_head, h):
    return lm_head.layer_norm(gelu_erf(lm_head.dense(h))), lm_head.bias[...]


def _roberta(m, ids, mask, types, key):
    x, bias = _roberta_head(m.lm_head, m.roberta(ids, mask, types, dropout_key=key)["last_hidden_state"])
    return x, m.roberta.embeddings.word_embeddings.embedding[...], bias


def _mpnet(m, ids, mask, types, key):
    x, bias = _roberta_head(m.lm_head, m.mpnet(ids, mask, dropout_key=key)["last_hidden_state"])
    return x, m.mpnet.embeddings.word_embeddings.embedding[...], bias


def _decoder_bias(decoder):
    return None if decoder.bias is None else decoder.bias[...]


def _distilbert(m, ids, mask, types, key):
    h = m.distilbert(ids, mask, dropout_key=key)["last_hidden_state"]
    x = m.vocab_layer_norm(m.act(m.vocab_transform(h)))
    return x, m.distilbert.embeddings.word_embeddings.embedding[...], _decoder_bias(m.vocab_projector)


def _modernbert(m, ids, mask, types, key):
    h = m.model(ids, mask, dropout_key=key)["last_hidden_state"]
    return m.head(h), m.model.embeddings.tok_embeddings.embedding[...], _decoder_bias(m.decoder)


def _electra(m, ids, mask, types, key):
    h = m.electra(ids, mask, types, dropout_key=key)["last_hidden_state"]
    table = m.electra.embeddings.word_embeddings.embedding[...]
    return m.generator_predictions(h), table, _decoder_bias(m.generator_lm_head)


DECODER_SPLITS = {BertForMaskedLM: _bert, RobertaForMaskedLM: _roberta, MPNetForMaskedLM: _mpnet,
                  DistilBertForMaskedLM: _distilbert, ModernBertForMaskedLM: _modernbert,
                  ElectraForMaskedLM: _electra}


def _sentence_config(path: str) -> tuple[dict, str | None]:
    for name in ST_CONFIG_NAMES:
        p = os.path.join(path, name)
        if os.path.isfile(p):
            return read_json(p), p
    return {}, None


class MLMTransformer(Module):
    """Tokenizer + encoder with the masked-LM head; ``apply(params, features) -> features + "token_embeddings"``
    (logits float32 [B, T, V]) + ``"mlm_decoder_inputs"``.

    Build with :meth:`from_pretrained` (a ``*ForMaskedLM`` checkpoint, or any checkpoint of a supported
    architecture, whose head is then initialised afresh from ``seed``) or :meth:`load` (a sentence-transformers
    module directory of either layout). Tokenizes single texts as ``Transformer`` does.
    """

    config_keys = ["max_seq_length", "do_lower_case"]
    st_type = "sentence_transformers.sparse_encoder.models.MLMTransformer"  # v5 layout: read by 5.0-6.2

    def __init__(self, head: HeadModel, tokenizer, max_seq_length: int | None = None, do_lower_case: bool = False,
                 source_path: str | None = None):
        if head.kind != KIND:
            raise ValueError(f"MLMTransformer needs a masked_lm head model, got kind={head.kind!r}")
        self.head = head
        self.params = head.params
        self.tokenizer = tokenizer
        if max_seq_length is None:  # the tokenizer's length; a missing one (1e30) capped at the position table
            if tokenizer is None:
                raise ValueError("MLMTransformer needs max_seq_length when it has no tokenizer")
            limit = position_limit(self.config)
            max_seq_length = min(tokenizer.model_max_length, limit or tokenizer.model_max_length)
        self.max_seq_length = max_seq_length
        self.do_lower_case = bool(do_lower_case)
        if self.do_lower_case:
            _lowercase_tokenizer(self.tokenizer)
        self.source_path = source_path

    @classmethod
    def from_pretrained(cls, path, *, max_seq_length: int | None = None, do_lower_case: bool = False,
                        processor_kwargs: dict | None = None, config_kwargs: dict | None = None,
                        compute_dtype=jnp.float32, seed: int = 0, **unused) -> MLMTransformer:
        """A Hugging Face checkpoint directory (``config.json``, ``model.safetensors``, tokenizer files)."""
        from transformers import AutoTokenizer

        path = str(path)
        head = load_head_model(path, KIND, config_kwargs=config_kwargs, compute_dtype=compute_dtype, seed=seed)
        tokenizer = AutoTokenizer.from_pretrained(path, **(processor_kwargs or {}))
        return cls(head, tokenizer, max_seq_length, do_lower_case, source_path=path)

    @classmethod
    def load(cls, path, **kwargs) -> MLMTransformer:
        """A module directory: v5 (``sentence_bert_config.json`` = ``{max_seq_length, do_lower_case}``) or 6.x
        (``{"transformer_task": "fill-mask", ...}``, the length then from the tokenizer's ``model_max_length``)."""
        st_cfg, st_cfg_path = _sentence_config(str(path))
        task = st_cfg.get("transformer_task", FILL_MASK)
        if task != FILL_MASK:
            raise ValueError(f"{st_cfg_path}: transformer_task={task!r}; an MLMTransformer needs {FILL_MASK!r}")
        args = {k: st_cfg[k] for k in ("max_seq_length", "do_lower_case", "processor_kwargs", "config_kwargs")
                if st_cfg.get(k) is not None}
        if "tokenizer_args" in st_cfg:
            args.setdefault("processor_kwargs", st_cfg["tokenizer_args"])
        if "config_args" in st_cfg:
            args.setdefault("config_kwargs", st_cfg["config_args"])
        args.update({k: v for k, v in kwargs.items() if v is not None})
        saved_length = args.pop("max_seq_length", None) if "max_seq_length" not in kwargs else None
        module = cls.from_pretrained(path, **args)
        if saved_length is not None:
            try:  # a saved length past the position table: an error naming the file, not NaN embeddings
                module.max_seq_length = saved_length
            except ValueError as e:
                raise ValueError(f"{st_cfg_path}: {e}") from None
        return module

    @property
    def config(self):
        """The encoder's :class:`EncoderConfig` (``config.hf``: the ``config.json`` the export writes)."""
        return self.head.config

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def max_seq_length(self) -> int:
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value):
        self._max_seq_length = check_max_seq_length(value, self.config)

    # -- tokenization (single texts, as Transformer: these read only tokenizer and max_seq_length) -------------
    tokenize_ids = Transformer.tokenize_ids
    pad = Transformer.pad
    tokenize = Transformer.tokenize

    # -- forward ------------------------------------------------------------------------------
    def apply(self, params, features, *, dropout_key=None):
        """``features`` (``input_ids``/``attention_mask`` [B, T], optional ``token_type_ids``) plus
        ``token_embeddings``: float32 logits [B, T, V], and ``mlm_decoder_inputs`` (their unevaluated operands).
        No ``dropout_key``: inference (no dropout)."""
        ids, mask, types = features["input_ids"], features["attention_mask"], features.get("token_type_ids")
        split = DECODER_SPLITS.get(self.head.architecture.masked_lm)
        if split is None:
            logits = self.head.apply(params, ids, mask, types, dropout_key=dropout_key)
            return {**features, "token_embeddings": logits}
        hidden, table, bias = split(nnx.merge(self.head.graphdef, params), ids, mask, types, dropout_key)
        logits = tied_logits(hidden, table, bias)
        return {**features, "token_embeddings": logits, DECODER_INPUTS: DecoderInputs(hidden, table, bias, logits)}

    def get_embedding_dimension(self) -> int:
        return self.vocab_size

    # -- training modes -----------------------------------------------------------------------
    def with_compute_dtype(self, dtype) -> MLMTransformer:
        """A shallow copy whose encoder and head compute in ``dtype`` (e.g. ``jnp.bfloat16``); parameters,
        tokenizer and the gradient-checkpointing setting are shared/kept, ``self`` is unchanged. The logits
        (and so SpladePooling's activation and pooling) stay float32."""
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
        """``config.json`` + ``model.safetensors`` (transformers' ``*ForMaskedLM``, tied decoder not stored) +
        tokenizer + the v5 ``sentence_bert_config.json`` (``max_seq_length``, ``do_lower_case``)."""
        ensure_dir(path)
        self.head.save(path, self.params if params is None else params)
        self.tokenizer.save_pretrained(path)
        tok_cfg_path = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(tok_cfg_path):  # the truncation length travels with the tokenizer, as the reference's
            write_json(tok_cfg_path, {**read_json(tok_cfg_path), "model_max_length": self.max_seq_length})
        write_json(os.path.join(path, "sentence_bert_config.json"),
                   {"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case})

    def get_config_dict(self) -> dict:
        return {"architecture": self.config.hf["architectures"][0], "max_seq_length": self.max_seq_length,
                "do_lower_case": self.do_lower_case}
