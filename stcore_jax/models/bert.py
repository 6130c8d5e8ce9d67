"""BERT-family encoder (BERT, MiniLM, BGE, E5, GTE-style; RoBERTa/XLM-R via ``roberta.py``).

Attribute names mirror the Hugging Face PyTorch module tree, so the parameter path *is* the weight
key: ``encoder.layer.{i}.attention.self.query.kernel`` <-> ``encoder.layer.{i}.attention.self.query.weight``
(see ``stcore_jax/io/hf_keys.py`` for the leaf renames). That naming is the key table, read in both
directions by the loader and the exporter; the heads' models name theirs like transformers'
``BertForSequenceClassification`` / ``BertForMaskedLM`` (``bert.*``, ``classifier.*``, ``cls.predictions.*``).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from stcore_jax.models.architecture import Architecture
from stcore_jax.models.config import EncoderConfig
from stcore_jax.models.layers import (
    activation,
    attention,
    dropout,
    embed,
    fold,
    layer_norm,
    linear,
    merge_heads,
    run_layers,
    split_heads,
    tied_logits,
)


def bert_config(hf: dict, dtype=jnp.float32) -> EncoderConfig:
    """``config.json`` (BERT's key names, shared by RoBERTa and MPNet) -> :class:`EncoderConfig`."""
    return EncoderConfig(
        model_type=hf.get("model_type"),
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        hidden_act=hf.get("hidden_act", "gelu"),
        hidden_dropout_prob=hf.get("hidden_dropout_prob", 0.1),
        attention_probs_dropout_prob=hf.get("attention_probs_dropout_prob", 0.1),
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        pad_token_id=hf.get("pad_token_id") or 0,
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        dtype=dtype,
        hf=dict(hf),
    )


class BertEmbeddings(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.word_embeddings = embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
        self.position_embeddings = embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
        if cfg.type_vocab_size > 0:
            self.token_type_embeddings = embed(cfg.type_vocab_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
        else:
            self.token_type_embeddings = None
        self.LayerNorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, input_ids_bt, position_ids_bt, token_type_ids_bt, key):
        x = self.word_embeddings(input_ids_bt) + self.position_embeddings(position_ids_bt)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids_bt)
        return dropout(self.LayerNorm(x), self.rate, key)


class BertSelfAttention(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.query = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.key = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.value = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.num_heads = cfg.num_attention_heads
        self.rate = cfg.attention_probs_dropout_prob

    def __call__(self, x_btd, mask_bt, key):
        h = self.num_heads
        q, k, v = (split_heads(f(x_btd), h) for f in (self.query, self.key, self.value))
        return merge_heads(attention(q, k, v, mask_bt, dropout_rate=self.rate, key=key))


class BertResidualOutput(nnx.Module):
    """``dense`` -> dropout -> ``LayerNorm(x + residual)``; HF's BertSelfOutput / BertOutput."""

    def __init__(self, din: int, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.dense = linear(din, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
        self.LayerNorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, x, residual, key):
        return self.LayerNorm(dropout(self.dense(x), self.rate, key) + residual)


class BertAttention(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.self = BertSelfAttention(cfg, rngs)
        self.output = BertResidualOutput(cfg.hidden_size, cfg, rngs)

    def __call__(self, x_btd, mask_bt, key):
        return self.output(self.self(x_btd, mask_bt, fold(key, 0)), x_btd, fold(key, 1))


class BertIntermediate(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.dense = linear(cfg.hidden_size, cfg.intermediate_size, dtype=cfg.dtype, rngs=rngs)
        self.act = activation(cfg.hidden_act)

    def __call__(self, x):
        return self.act(self.dense(x))


class BertLayer(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.attention = BertAttention(cfg, rngs)
        self.intermediate = BertIntermediate(cfg, rngs)
        self.output = BertResidualOutput(cfg.intermediate_size, cfg, rngs)

    def __call__(self, x_btd, mask_bt, key):
        a = self.attention(x_btd, mask_bt, fold(key, 0))
        return self.output(self.intermediate(a), a, fold(key, 1))


class BertEncoder(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.layer = nnx.List([BertLayer(cfg, rngs) for _ in range(cfg.num_hidden_layers)])


class BertModel(nnx.Module):
    """BERT encoder: ``(input_ids, attention_mask, token_type_ids) -> hidden states``.

    Call signature (shared by all our encoders):
        input_ids: [B, T] int32; attention_mask: [B, T] (1 = token, 0 = padding);
        token_type_ids: [B, T] or None; dropout_key: PRNG key or None (deterministic);
        output_hidden_states: also return every layer's output (embeddings first);
        packing: a :class:`stcore_jax.models.layers.Packing` when rows hold several sequences: tokens take
        their positions from it, and ``attention_mask`` is then ``Packing.attention_mask()``, [B, T, T].
    Returns a dict with ``last_hidden_state`` [B, T, H] (compute dtype) and optionally
    ``hidden_states`` (a tuple of num_layers + 1 arrays [B, T, H]).
    """

    roberta_positions = False
    supports_packing = True

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.gradient_checkpointing = False  # static: set via Transformer.set_gradient_checkpointing
        self.embeddings = BertEmbeddings(cfg, rngs)
        self.encoder = BertEncoder(cfg, rngs)
        self.pad_token_id = cfg.pad_token_id

    def position_ids(self, input_ids_bt, packing=None):
        if packing is not None:  # positions within each packed sequence; fairseq's start at padding_idx + 1
            return packing.position_ids + (self.pad_token_id + 1 if self.roberta_positions else 0)
        if self.roberta_positions:
            # fairseq positions: count real tokens from padding_idx + 1; padding keeps padding_idx.
            real = (input_ids_bt != self.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(real, axis=1) * real + self.pad_token_id
        return jnp.broadcast_to(jnp.arange(input_ids_bt.shape[1], dtype=jnp.int32), input_ids_bt.shape)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None, output_hidden_states=False,
                 packing=None):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, self.position_ids(input_ids, packing), token_type_ids, fold(dropout_key, 0))
        hidden = [x]
        x, outputs = run_layers(self.encoder.layer, self.gradient_checkpointing, x, attention_mask,
                                dropout_key=dropout_key, collect=output_hidden_states)
        hidden += outputs or []
        out = {"last_hidden_state": x}
        if output_hidden_states:
            out["hidden_states"] = tuple(hidden)
        return out


# -- heads (transformers' BertForSequenceClassification / BertForMaskedLM) ------------------------------
def classifier_dropout(cfg: EncoderConfig) -> float:
    """``classifier_dropout``, or ``hidden_dropout_prob`` when it is None (BERT's and RoBERTa's rule)."""
    rate = cfg.hf.get("classifier_dropout")
    return cfg.hidden_dropout_prob if rate is None else float(rate)


class BertPooler(nnx.Module):
    """``tanh(dense(h[:, 0]))``: [B, T, H] -> [B, H]."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.dense = linear(cfg.hidden_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs, std=cfg.initializer_range)

    def __call__(self, x_btd):
        return jnp.tanh(self.dense(x_btd[:, 0]))


class BertModelWithPooler(BertModel):
    """transformers' ``BertModel(add_pooling_layer=True)`` (keys ``pooler.dense.*``), under the classifier."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        super().__init__(cfg, rngs)
        self.pooler = BertPooler(cfg, rngs)


class BertForSequenceClassification(nnx.Module):
    """``bert`` -> pooler -> dropout -> ``classifier``: ``(input_ids, attention_mask, token_type_ids=None, *,
    dropout_key=None) -> [B, num_labels]`` float32. The head's dropout site follows the encoder's
    (``fold(key, num_hidden_layers + 1)``), so the encoder draws the masks it draws alone."""

    def __init__(self, cfg: EncoderConfig, num_labels: int, rngs: nnx.Rngs):
        self.bert = BertModelWithPooler(cfg, rngs)
        self.classifier = linear(cfg.hidden_size, num_labels, dtype=cfg.dtype, rngs=rngs, std=cfg.initializer_range)
        self.rate = classifier_dropout(cfg)
        self.head_site = cfg.num_hidden_layers + 1

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.bert(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)["last_hidden_state"]
        pooled = dropout(self.bert.pooler(h), self.rate, fold(dropout_key, self.head_site))
        return self.classifier(pooled).astype(jnp.float32)


class BertPredictionHeadTransform(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.dense = linear(cfg.hidden_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs, std=cfg.initializer_range)
        self.act = activation(cfg.hidden_act)
        self.LayerNorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class BertLMPredictionHead(nnx.Module):
    """``transform`` and the decoder's bias (``cls.predictions.bias``); the decoder weight is the word embeddings."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.transform = BertPredictionHeadTransform(cfg, rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))


class BertOnlyMLMHead(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.predictions = BertLMPredictionHead(cfg, rngs)


class BertForMaskedLM(nnx.Module):
    """``bert`` -> ``cls.predictions``: ``(input_ids, attention_mask, token_type_ids=None, *, dropout_key=None)
    -> [B, T, vocab_size]`` float32 logits, the decoder tied to ``bert.embeddings.word_embeddings``."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.bert = BertModel(cfg, rngs)
        self.cls = BertOnlyMLMHead(cfg, rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.bert(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)["last_hidden_state"]
        head = self.cls.predictions
        return tied_logits(head.transform(h), self.bert.embeddings.word_embeddings.embedding[...], head.bias[...])


ARCHITECTURE = Architecture(
    model_types={"bert": "Bert"},
    encoder=BertModel,
    config=bert_config,
    lora_targets=("query", "value"),  # PEFT's defaults: the attention query and value projections
    positions="absolute",
    prefix="bert",
    sequence_classification=BertForSequenceClassification,
    masked_lm=BertForMaskedLM,
    tied={"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
          "cls.predictions.decoder.bias": "cls.predictions.bias"},
)
