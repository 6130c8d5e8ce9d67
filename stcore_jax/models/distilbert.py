"""DistilBERT encoder; names mirror Hugging Face's ``DistilBertModel`` (``transformer.layer.{i}.…``), and its
heads ``DistilBertForSequenceClassification`` (``pre_classifier`` / ``classifier``) and ``DistilBertForMaskedLM``
(``vocab_transform`` / ``vocab_layer_norm`` / ``vocab_projector``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from stcore_jax.models.architecture import Architecture
from stcore_jax.models.config import EncoderConfig
from stcore_jax.models.layers import (
    TiedDecoder,
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
)


def distilbert_config(hf: dict, dtype=jnp.float32) -> EncoderConfig:
    """DistilBERT's own key names (``dim``, ``n_layers``, ``hidden_dim``, ...) -> :class:`EncoderConfig`."""
    return EncoderConfig(
        model_type="distilbert",
        vocab_size=hf["vocab_size"],
        hidden_size=hf["dim"],
        num_hidden_layers=hf["n_layers"],
        num_attention_heads=hf["n_heads"],
        intermediate_size=hf["hidden_dim"],
        hidden_act=hf.get("activation", "gelu"),
        hidden_dropout_prob=hf.get("dropout", 0.1),
        attention_probs_dropout_prob=hf.get("attention_dropout", 0.1),
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        type_vocab_size=0,
        layer_norm_eps=1e-12,
        pad_token_id=hf.get("pad_token_id", 0) or 0,
        dtype=dtype,
        hf=dict(hf),
    )


class DistilBertEmbeddings(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.word_embeddings = embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
        self.position_embeddings = embed(cfg.max_position_embeddings, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
        self.LayerNorm = layer_norm(cfg.hidden_size, 1e-12, dtype=cfg.dtype, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, input_ids_bt, key, position_ids_bt=None):
        pos = (jnp.arange(input_ids_bt.shape[1], dtype=jnp.int32)[None, :] if position_ids_bt is None
               else position_ids_bt)
        x = self.word_embeddings(input_ids_bt) + self.position_embeddings(pos)
        return dropout(self.LayerNorm(x), self.rate, key)


class DistilBertSelfAttention(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.q_lin = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.k_lin = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.v_lin = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.out_lin = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.num_heads = cfg.num_attention_heads
        self.rate = cfg.attention_probs_dropout_prob

    def __call__(self, x_btd, mask_bt, key):
        h = self.num_heads
        q, k, v = (split_heads(f(x_btd), h) for f in (self.q_lin, self.k_lin, self.v_lin))
        return self.out_lin(merge_heads(attention(q, k, v, mask_bt, dropout_rate=self.rate, key=key)))


class DistilBertFFN(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.lin1 = linear(cfg.hidden_size, cfg.intermediate_size, dtype=cfg.dtype, rngs=rngs)
        self.lin2 = linear(cfg.intermediate_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
        self.act = activation(cfg.hidden_act)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, x, key):
        return dropout(self.lin2(self.act(self.lin1(x))), self.rate, key)


class DistilBertBlock(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.attention = DistilBertSelfAttention(cfg, rngs)
        self.sa_layer_norm = layer_norm(cfg.hidden_size, 1e-12, dtype=cfg.dtype, rngs=rngs)
        self.ffn = DistilBertFFN(cfg, rngs)
        self.output_layer_norm = layer_norm(cfg.hidden_size, 1e-12, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, x_btd, mask_bt, key):
        # HF DistilBERT has no dropout on the attention output before the residual.
        a = self.sa_layer_norm(self.attention(x_btd, mask_bt, fold(key, 0)) + x_btd)
        return self.output_layer_norm(self.ffn(a, fold(key, 1)) + a)


class DistilBertTransformer(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.layer = nnx.List([DistilBertBlock(cfg, rngs) for _ in range(cfg.num_hidden_layers)])


class DistilBertModel(nnx.Module):
    """DistilBERT encoder; same call signature and outputs as :class:`stcore_jax.models.bert.BertModel`."""

    supports_packing = True

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.gradient_checkpointing = False  # static: set via Transformer.set_gradient_checkpointing
        self.embeddings = DistilBertEmbeddings(cfg, rngs)
        self.transformer = DistilBertTransformer(cfg, rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None, output_hidden_states=False,
                 packing=None):
        x = self.embeddings(input_ids, fold(dropout_key, 0), None if packing is None else packing.position_ids)
        hidden = [x]
        x, outputs = run_layers(self.transformer.layer, self.gradient_checkpointing, x, attention_mask,
                                dropout_key=dropout_key, collect=output_hidden_states)
        hidden += outputs or []
        out = {"last_hidden_state": x}
        if output_hidden_states:
            out["hidden_states"] = tuple(hidden)
        return out


# -- heads ---------------------------------------------------------------------------------------------
class DistilBertForSequenceClassification(nnx.Module):
    """``distilbert`` -> first token -> ``pre_classifier`` -> ReLU -> dropout (``seq_classif_dropout``) ->
    ``classifier``: same call as :class:`stcore_jax.models.bert.BertForSequenceClassification`."""

    def __init__(self, cfg: EncoderConfig, num_labels: int, rngs: nnx.Rngs):
        d, std = cfg.hidden_size, cfg.initializer_range
        self.distilbert = DistilBertModel(cfg, rngs)
        self.pre_classifier = linear(d, d, dtype=cfg.dtype, rngs=rngs, std=std)
        self.classifier = linear(d, num_labels, dtype=cfg.dtype, rngs=rngs, std=std)
        self.rate = float(cfg.hf.get("seq_classif_dropout", 0.2))
        self.head_site = cfg.num_hidden_layers + 1

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.distilbert(input_ids, attention_mask, dropout_key=dropout_key)["last_hidden_state"]
        x = dropout(jax.nn.relu(self.pre_classifier(h[:, 0])), self.rate, fold(dropout_key, self.head_site))
        return self.classifier(x).astype(jnp.float32)


class DistilBertForMaskedLM(nnx.Module):
    """``distilbert`` -> ``vocab_transform`` -> ``activation`` -> ``vocab_layer_norm`` -> ``vocab_projector``
    (weight tied to ``distilbert.embeddings.word_embeddings``, its own bias): [B, T, V] float32."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.distilbert = DistilBertModel(cfg, rngs)
        self.vocab_transform = linear(d, d, dtype=cfg.dtype, rngs=rngs, std=cfg.initializer_range)
        self.act = activation(cfg.hidden_act)
        self.vocab_layer_norm = layer_norm(d, 1e-12, dtype=cfg.dtype, rngs=rngs)
        self.vocab_projector = TiedDecoder(cfg.vocab_size)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.distilbert(input_ids, attention_mask, dropout_key=dropout_key)["last_hidden_state"]
        x = self.vocab_layer_norm(self.act(self.vocab_transform(h)))
        return self.vocab_projector(x, self.distilbert.embeddings.word_embeddings.embedding[...])


ARCHITECTURE = Architecture(
    model_types={"distilbert": "DistilBert"},
    encoder=DistilBertModel,
    config=distilbert_config,
    lora_targets=("q_lin", "v_lin"),
    positions="absolute",
    prefix="distilbert",
    sequence_classification=DistilBertForSequenceClassification,
    masked_lm=DistilBertForMaskedLM,
    tied={"vocab_projector.weight": "distilbert.embeddings.word_embeddings.weight"},
)
