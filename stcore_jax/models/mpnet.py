"""MPNet encoder: BERT-like layers with T5-style relative position buckets shared across layers.

Names mirror Hugging Face's ``MPNetModel`` (``encoder.layer.{i}.attention.attn.{q,k,v,o}``,
``encoder.relative_attention_bias``) so parameter paths are the weight keys. Its heads are RoBERTa's
(``classifier.dense`` / ``classifier.out_proj``, ``lm_head.*``) over ``mpnet.*``.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
from flax import nnx

from stcore_jax.models.architecture import Architecture
from stcore_jax.models.bert import BertEmbeddings, BertIntermediate, BertResidualOutput, bert_config
from stcore_jax.models.config import EncoderConfig
from stcore_jax.models.layers import (
    attention,
    dropout,
    embed,
    fold,
    layer_norm,
    linear,
    merge_heads,
    run_layers,
    split_heads,
)
from stcore_jax.models.roberta import RobertaClassificationHead, RobertaLMHead

# Hugging Face computes the bias with the default 32 buckets whatever the config says.
_NUM_BUCKETS = 32
_MAX_DISTANCE = 128


def mpnet_config(hf: dict, dtype=jnp.float32) -> EncoderConfig:
    """BERT's key names; no token types unless ``type_vocab_size`` says so, and padding id 1 whatever the
    config says (transformers' ``MPNetEmbeddings`` hard-codes ``padding_idx = 1``)."""
    return dataclasses.replace(bert_config(hf, dtype), type_vocab_size=hf.get("type_vocab_size", 0), pad_token_id=1)


def relative_position_bucket(relative_position_tt, num_buckets=_NUM_BUCKETS, max_distance=_MAX_DISTANCE):
    """Map key - query offsets to bucket ids (MPNet/T5 bidirectional scheme), int32 [Tq, Tk]."""
    n = -relative_position_tt
    half = num_buckets // 2
    ret = (n < 0).astype(jnp.int32) * half
    n = jnp.abs(n)
    max_exact = half // 2
    is_small = n < max_exact
    # log(0) for n == 0 is masked by is_small; clamp to keep the discarded branch finite.
    n_f = jnp.maximum(n, 1).astype(jnp.float32)
    large = max_exact + (jnp.log(n_f / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)).astype(
        jnp.int32
    )
    large = jnp.minimum(large, half - 1)
    return ret + jnp.where(is_small, n, large)


class MPNetSelfAttention(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.q = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.k = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.v = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.o = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.num_heads = cfg.num_attention_heads
        self.rate = cfg.attention_probs_dropout_prob

    def __call__(self, x_btd, mask_bt, bias_htt, key):
        h = self.num_heads
        q, k, v = (split_heads(f(x_btd), h) for f in (self.q, self.k, self.v))
        c = attention(q, k, v, mask_bt, bias_bhtt=bias_htt[None], dropout_rate=self.rate, key=key)
        return self.o(merge_heads(c))


class MPNetAttention(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.attn = MPNetSelfAttention(cfg, rngs)
        self.LayerNorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, x_btd, mask_bt, bias_htt, key):
        a = self.attn(x_btd, mask_bt, bias_htt, fold(key, 0))
        return self.LayerNorm(dropout(a, self.rate, fold(key, 1)) + x_btd)


class MPNetLayer(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.attention = MPNetAttention(cfg, rngs)
        self.intermediate = BertIntermediate(cfg, rngs)
        self.output = BertResidualOutput(cfg.intermediate_size, cfg, rngs)

    def __call__(self, x_btd, mask_bt, bias_htt, key):
        a = self.attention(x_btd, mask_bt, bias_htt, fold(key, 0))
        return self.output(self.intermediate(a), a, fold(key, 1))


class MPNetEncoder(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.layer = nnx.List([MPNetLayer(cfg, rngs) for _ in range(cfg.num_hidden_layers)])
        self.relative_attention_bias = embed(cfg.relative_attention_num_buckets, cfg.num_attention_heads,
                                             dtype=cfg.dtype, rngs=rngs)

    def position_bias(self, seq_len: int):
        """[H, T, T] additive attention bias from relative positions."""
        pos = jnp.arange(seq_len, dtype=jnp.int32)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None])
        return self.relative_attention_bias(buckets).transpose(2, 0, 1)


class MPNetModel(nnx.Module):
    """MPNet encoder; same call signature and outputs as :class:`stcore_jax.models.bert.BertModel`."""

    supports_packing = True

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.gradient_checkpointing = False  # static: set via Transformer.set_gradient_checkpointing
        self.embeddings = BertEmbeddings(cfg, rngs)  # no token_type table: type_vocab_size is 0
        self.encoder = MPNetEncoder(cfg, rngs)
        self.pad_token_id = cfg.pad_token_id

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None, output_hidden_states=False,
                 packing=None):
        if packing is None:
            real = (input_ids != self.pad_token_id).astype(jnp.int32)
            position_ids = jnp.cumsum(real, axis=1) * real + self.pad_token_id
        else:  # the relative bias below depends on index differences only, which packing keeps within a sequence
            position_ids = packing.position_ids + self.pad_token_id + 1
        x = self.embeddings(input_ids, position_ids, None, fold(dropout_key, 0))
        bias = self.encoder.position_bias(input_ids.shape[1])
        hidden = [x]
        x, outputs = run_layers(self.encoder.layer, self.gradient_checkpointing, x, attention_mask, bias,
                                dropout_key=dropout_key, collect=output_hidden_states)
        hidden += outputs or []
        out = {"last_hidden_state": x}
        if output_hidden_states:
            out["hidden_states"] = tuple(hidden)
        return out


# -- heads (transformers' MPNetForSequenceClassification / MPNetForMaskedLM: RoBERTa's heads) -----------
class MPNetForSequenceClassification(nnx.Module):
    """``mpnet`` -> ``classifier`` (dropout ``hidden_dropout_prob``; ``classifier_dropout`` is not read):
    same call as :class:`stcore_jax.models.bert.BertForSequenceClassification`."""

    def __init__(self, cfg: EncoderConfig, num_labels: int, rngs: nnx.Rngs):
        self.mpnet = MPNetModel(cfg, rngs)
        self.classifier = RobertaClassificationHead(cfg, num_labels, cfg.hidden_dropout_prob, rngs)
        self.head_site = cfg.num_hidden_layers + 1

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.mpnet(input_ids, attention_mask, dropout_key=dropout_key)["last_hidden_state"]
        return self.classifier(h, fold(dropout_key, self.head_site)).astype(jnp.float32)


class MPNetForMaskedLM(nnx.Module):
    """``mpnet`` -> ``lm_head`` (decoder tied to ``mpnet.embeddings.word_embeddings``): [B, T, V] float32."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.mpnet = MPNetModel(cfg, rngs)
        self.lm_head = RobertaLMHead(cfg, rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.mpnet(input_ids, attention_mask, dropout_key=dropout_key)["last_hidden_state"]
        return self.lm_head(h, self.mpnet.embeddings.word_embeddings.embedding[...])


ARCHITECTURE = Architecture(
    model_types={"mpnet": "MPNet"},
    encoder=MPNetModel,
    config=mpnet_config,
    lora_targets=("q", "v"),
    positions="padding",
    prefix="mpnet",
    sequence_classification=MPNetForSequenceClassification,
    masked_lm=MPNetForMaskedLM,
    tied={"lm_head.decoder.weight": "mpnet.embeddings.word_embeddings.weight",
          "lm_head.decoder.bias": "lm_head.bias"},
)
