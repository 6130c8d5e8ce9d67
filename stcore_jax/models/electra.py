"""ELECTRA: BERT's encoder under embeddings of their own width (``embedding_size``, projected to ``hidden_size`` by
``embeddings_project`` when the two differ), no pooler, and transformers' ``ElectraForSequenceClassification``
(``classifier.dense`` -> GELU -> ``classifier.out_proj`` on the first token) / ``ElectraForMaskedLM``
(``generator_predictions`` -> ``generator_lm_head`` tied to the word embeddings) heads. Key prefix ``electra``.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from stcore_jax.models.architecture import Architecture
from stcore_jax.models.bert import BertEmbeddings, BertModel, bert_config, classifier_dropout
from stcore_jax.models.config import EncoderConfig
from stcore_jax.models.layers import TiedDecoder, dropout, fold, gelu_erf, layer_norm, linear, run_layers


def embedding_size(cfg: EncoderConfig) -> int:
    """``config.json`` ``embedding_size`` (ElectraConfig's default 128 when absent)."""
    return int(cfg.hf.get("embedding_size") or 128)


class ElectraModel(BertModel):
    """:class:`stcore_jax.models.bert.BertModel`'s call; embeddings ``[B, T, E]`` -> ``embeddings_project`` ->
    ``[B, T, H]`` when ``E != H`` (transformers creates the projection only then)."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        super().__init__(cfg, rngs)
        e = embedding_size(cfg)
        # BERT's embedding block, only narrower: the same module at width E.
        self.embeddings = BertEmbeddings(dataclasses.replace(cfg, hidden_size=e), rngs)
        self.embeddings_project = (linear(e, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs, std=cfg.initializer_range)
                                   if e != cfg.hidden_size else None)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None, output_hidden_states=False,
                 packing=None):
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.embeddings(input_ids, self.position_ids(input_ids, packing), token_type_ids, fold(dropout_key, 0))
        if self.embeddings_project is not None:
            x = self.embeddings_project(x)
        hidden = [x]  # transformers' hidden_states[0] is the projected embedding output
        x, outputs = run_layers(self.encoder.layer, self.gradient_checkpointing, x, attention_mask,
                                dropout_key=dropout_key, collect=output_hidden_states)
        hidden += outputs or []
        out = {"last_hidden_state": x}
        if output_hidden_states:
            out["hidden_states"] = tuple(hidden)
        return out


class ElectraClassificationHead(nnx.Module):
    """First token -> dropout -> ``dense`` -> GELU (exact, whatever ``hidden_act`` says) -> dropout -> ``out_proj``:
    [B, T, H] -> [B, num_labels]."""

    def __init__(self, cfg: EncoderConfig, num_labels: int, rate: float, rngs: nnx.Rngs):
        std = cfg.initializer_range
        self.dense = linear(cfg.hidden_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs, std=std)
        self.out_proj = linear(cfg.hidden_size, num_labels, dtype=cfg.dtype, rngs=rngs, std=std)
        self.rate = rate

    def __call__(self, x_btd, key):
        x = gelu_erf(self.dense(dropout(x_btd[:, 0], self.rate, fold(key, 0))))
        return self.out_proj(dropout(x, self.rate, fold(key, 1)))


class ElectraForSequenceClassification(nnx.Module):
    """``electra`` -> ``classifier``: same call as :class:`stcore_jax.models.bert.BertForSequenceClassification`."""

    def __init__(self, cfg: EncoderConfig, num_labels: int, rngs: nnx.Rngs):
        self.electra = ElectraModel(cfg, rngs)
        self.classifier = ElectraClassificationHead(cfg, num_labels, classifier_dropout(cfg), rngs)
        self.head_site = cfg.num_hidden_layers + 1

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.electra(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)["last_hidden_state"]
        return self.classifier(h, fold(dropout_key, self.head_site)).astype(jnp.float32)


class ElectraGeneratorPredictions(nnx.Module):
    """``dense`` (H -> E) -> GELU (exact, as transformers hard-codes) -> ``LayerNorm``: [B, T, H] -> [B, T, E]."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        e = embedding_size(cfg)
        self.dense = linear(cfg.hidden_size, e, dtype=cfg.dtype, rngs=rngs, std=cfg.initializer_range)
        self.LayerNorm = layer_norm(e, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, x_btd):
        return self.LayerNorm(gelu_erf(self.dense(x_btd)))


class ElectraForMaskedLM(nnx.Module):
    """``electra`` -> ``generator_predictions`` -> ``generator_lm_head`` (tied to
    ``electra.embeddings.word_embeddings``): [B, T, vocab_size] float32."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.electra = ElectraModel(cfg, rngs)
        self.generator_predictions = ElectraGeneratorPredictions(cfg, rngs)
        self.generator_lm_head = TiedDecoder(cfg.vocab_size)  # own key: its bias

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.electra(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)["last_hidden_state"]
        table = self.electra.embeddings.word_embeddings.embedding[...]
        return self.generator_lm_head(self.generator_predictions(h), table)


ARCHITECTURE = Architecture(
    model_types={"electra": "Electra"},
    encoder=ElectraModel,
    config=bert_config,
    lora_targets=("query", "value"),
    positions="absolute",
    prefix="electra",
    sequence_classification=ElectraForSequenceClassification,
    masked_lm=ElectraForMaskedLM,
    tied={"generator_lm_head.weight": "electra.embeddings.word_embeddings.weight"},
)
