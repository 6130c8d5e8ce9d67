"""RoBERTa / XLM-RoBERTa / CamemBERT: BERT with fairseq position ids (offset by ``padding_idx``), and
transformers' ``RobertaForSequenceClassification`` / ``RobertaForMaskedLM`` heads (``classifier.dense`` /
``classifier.out_proj`` on ``<s>``; ``lm_head.*``), which MPNet's heads copy."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from stcore_jax.models.architecture import Architecture
from stcore_jax.models.bert import BertModel, bert_config, classifier_dropout
from stcore_jax.models.config import EncoderConfig
from stcore_jax.models.layers import dropout, fold, gelu_erf, layer_norm, linear, tied_logits


class RobertaModel(BertModel):
    roberta_positions = True


class RobertaClassificationHead(nnx.Module):
    """``<s>`` -> dropout -> ``dense`` -> tanh -> dropout -> ``out_proj``: [B, T, H] -> [B, num_labels]."""

    def __init__(self, cfg: EncoderConfig, num_labels: int, rate: float, rngs: nnx.Rngs):
        std = cfg.initializer_range
        self.dense = linear(cfg.hidden_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs, std=std)
        self.out_proj = linear(cfg.hidden_size, num_labels, dtype=cfg.dtype, rngs=rngs, std=std)
        self.rate = rate

    def __call__(self, x_btd, key):
        x = jnp.tanh(self.dense(dropout(x_btd[:, 0], self.rate, fold(key, 0))))
        return self.out_proj(dropout(x, self.rate, fold(key, 1)))


class RobertaLMHead(nnx.Module):
    """``dense`` -> GELU (exact, whatever ``hidden_act`` says) -> ``layer_norm`` -> the word embeddings + ``bias``."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.dense = linear(cfg.hidden_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs, std=cfg.initializer_range)
        self.layer_norm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))

    def __call__(self, x_btd, table_vd):
        """[B, T, H], the word-embedding table [V, H] -> [B, T, V] float32."""
        return tied_logits(self.layer_norm(gelu_erf(self.dense(x_btd))), table_vd, self.bias[...])


class RobertaForSequenceClassification(nnx.Module):
    """``roberta`` -> ``classifier``: same call as :class:`stcore_jax.models.bert.BertForSequenceClassification`."""

    def __init__(self, cfg: EncoderConfig, num_labels: int, rngs: nnx.Rngs):
        self.roberta = RobertaModel(cfg, rngs)
        self.classifier = RobertaClassificationHead(cfg, num_labels, classifier_dropout(cfg), rngs)
        self.head_site = cfg.num_hidden_layers + 1

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.roberta(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)["last_hidden_state"]
        return self.classifier(h, fold(dropout_key, self.head_site)).astype(jnp.float32)


class RobertaForMaskedLM(nnx.Module):
    """``roberta`` -> ``lm_head`` (decoder tied to ``roberta.embeddings.word_embeddings``): [B, T, V] float32."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.roberta = RobertaModel(cfg, rngs)
        self.lm_head = RobertaLMHead(cfg, rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.roberta(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)["last_hidden_state"]
        return self.lm_head(h, self.roberta.embeddings.word_embeddings.embedding[...])


ARCHITECTURE = Architecture(
    model_types={"roberta": "Roberta", "xlm-roberta": "XLMRoberta", "camembert": "Camembert"},
    encoder=RobertaModel,
    config=bert_config,
    lora_targets=("query", "value"),
    positions="padding",
    prefix="roberta",
    sequence_classification=RobertaForSequenceClassification,
    masked_lm=RobertaForMaskedLM,
    tied={"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
          "lm_head.decoder.bias": "lm_head.bias"},
)
