"""DeBERTa-v2 / v3 (transformers ``DebertaV2Model``, model_type ``deberta-v2``); names mirror its module tree
(``encoder.layer.{i}.attention.self.query_proj.…``, key prefix ``deberta``).

What sets it apart from BERT (transformers ``models/deberta_v2/modeling_deberta_v2.py``):
  * disentangled attention: content-to-content scores plus content-to-position (``c2p``: queries against
    projected relative-position embeddings) and position-to-content (``p2c``: keys against them) terms,
    as ``pos_att_type`` lists, all divided by ``sqrt(head_dim * (1 + len(pos_att_type)))``;
  * one relative-position table for all layers (``encoder.rel_embeddings``, ``2 * span`` rows, span =
    ``position_buckets`` or ``max_relative_positions``), optionally layer-normed (``norm_rel_ebd``),
    projected by the layer's own query/key projections (``share_att_key``) or by ``pos_query_proj`` /
    ``pos_key_proj``; distances beyond ``position_buckets / 2`` fall into log-spaced buckets;
  * absolute positions only with ``position_biased_input`` (v3: none), no token types when
    ``type_vocab_size`` is 0, ``embedding_size`` projected to ``hidden_size`` (``embed_proj``, no bias)
    before the embedding LayerNorm, and the embeddings zeroed at padding;
  * an optional convolution after layer 0 (``conv_kernel_size`` > 0, v2-xlarge): conv over the embeddings,
    ``conv_act``, added to layer 0's output, LayerNorm, zeroed at padding;
  * padding masks queries as well as keys (transformers' ``mask_q * mask_k``), so padding rows equal
    transformers' too, and a real token's output never depends on the padding.

Relative positions depend only on the (static) sequence length, so they are numpy constants at trace time.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stcore_jax.models.architecture import Architecture
from stcore_jax.models.bert import BertIntermediate, BertResidualOutput
from stcore_jax.models.config import EncoderConfig
from stcore_jax.models.layers import (
    activation,
    attention_dropout,
    call_layer,
    dropout,
    embed,
    fold,
    layer_norm,
    linear,
    merge_heads,
    split_heads,
    tied_logits,
)

POS_ATT_TYPES = ("c2p", "p2c")


@dataclasses.dataclass(frozen=True)
class DebertaSettings:
    """The DeBERTa-v2 fields of ``config.json``, with transformers' defaults and effective values."""

    embedding_size: int
    position_biased_input: bool
    relative_attention: bool
    max_relative_positions: int  # effective: max_position_embeddings when config.json says < 1
    position_buckets: int  # <= 0: no log buckets
    pos_att_type: tuple[str, ...]
    share_att_key: bool
    norm_rel_layer_norm: bool
    conv_kernel_size: int  # 0: no conv layer
    conv_groups: int
    conv_act: str
    pooler_hidden_act: str
    pooler_dropout: float
    legacy: bool  # masked LM: transformers' legacy ``cls.predictions`` head, else ``lm_predictions.lm_head``

    @property
    def span(self) -> int:
        """Half the rows of the relative-position table (transformers' ``att_span`` / ``pos_ebd_size``)."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions

    @property
    def scale_factor(self) -> int:
        return 1 + len(self.pos_att_type)


def _pos_att_type(value) -> tuple[str, ...]:
    """``["p2c", "c2p"]`` or the legacy ``"p2c|c2p"`` -> ("c2p", "p2c") as present."""
    if value is None:
        return ()
    names = [x.strip().lower() for x in value.split("|")] if isinstance(value, str) else [str(x) for x in value]
    unknown = [x for x in names if x not in POS_ATT_TYPES]
    if unknown:
        raise ValueError(f"config.json: DeBERTa-v2 pos_att_type {value!r} has {unknown}; supported: "
                         f"{list(POS_ATT_TYPES)} (transformers' DebertaV2 uses only these)")
    return tuple(x for x in POS_ATT_TYPES if x in names)


def deberta_settings(hf: dict) -> DebertaSettings:
    """Read and check the DeBERTa-v2 fields of ``config.json`` (a ValueError naming the field when unusable)."""
    hidden, heads = hf["hidden_size"], hf["num_attention_heads"]
    if hidden % heads:
        raise ValueError(f"config.json: hidden_size={hidden} is not a multiple of num_attention_heads={heads}")
    if hf.get("attention_head_size") not in (None, hidden // heads):
        raise ValueError(f"config.json: attention_head_size={hf['attention_head_size']} times num_attention_heads="
                         f"{heads} must equal hidden_size={hidden} (transformers' attention output is H -> H)")
    max_rel = int(hf.get("max_relative_positions", -1))
    kernel = int(hf.get("conv_kernel_size", 0) or 0)
    if kernel > 0 and kernel % 2 == 0:
        raise ValueError(f"config.json: conv_kernel_size={kernel} must be odd (transformers pads (k - 1) // 2 per "
                         "side, so an even kernel changes the sequence length)")
    groups = int(hf.get("conv_groups", 1))
    if kernel > 0 and hidden % groups:
        raise ValueError(f"config.json: conv_groups={groups} must divide hidden_size={hidden}")
    pooler = hf.get("pooler_hidden_size", hidden)
    if pooler != hidden:
        raise ValueError(f"config.json: pooler_hidden_size={pooler} differs from hidden_size={hidden}; "
                         "transformers' DebertaV2ForSequenceClassification needs them equal")
    norms = [x.strip() for x in str(hf.get("norm_rel_ebd", "none")).lower().split("|")]
    if set(norms) - {"none", "layer_norm"}:
        raise ValueError(f"config.json: norm_rel_ebd={hf['norm_rel_ebd']!r}: only 'none' and 'layer_norm' exist")
    s = DebertaSettings(
        embedding_size=int(hf.get("embedding_size") or hidden),
        position_biased_input=bool(hf.get("position_biased_input", True)),
        relative_attention=bool(hf.get("relative_attention", False)),
        max_relative_positions=max_rel if max_rel >= 1 else int(hf.get("max_position_embeddings", 512)),
        position_buckets=int(hf.get("position_buckets", -1)),
        pos_att_type=_pos_att_type(hf.get("pos_att_type")),
        share_att_key=bool(hf.get("share_att_key", False)),
        norm_rel_layer_norm="layer_norm" in norms,
        conv_kernel_size=max(kernel, 0),
        conv_groups=groups,
        conv_act=hf.get("conv_act", "tanh"),
        pooler_hidden_act=hf.get("pooler_hidden_act", "gelu"),
        pooler_dropout=float(hf.get("pooler_dropout", 0.0)),
        legacy=bool(hf.get("legacy", True)),
    )
    for name in (hf.get("hidden_act", "gelu"), s.conv_act, s.pooler_hidden_act):  # unknown ones fail at load
        activation(name)
    return s


def deberta_v2_config(hf: dict, dtype=jnp.float32) -> EncoderConfig:
    """DeBERTa-v2's ``config.json`` (``DebertaV2Config`` defaults: ``type_vocab_size`` 0, ``layer_norm_eps``
    1e-7) -> :class:`EncoderConfig`; the DeBERTa fields stay in ``hf`` and are checked here."""
    deberta_settings(hf)
    return EncoderConfig(
        model_type=hf.get("model_type", "deberta-v2"),
        vocab_size=hf.get("vocab_size", 128100),
        hidden_size=hf["hidden_size"],
        num_hidden_layers=hf["num_hidden_layers"],
        num_attention_heads=hf["num_attention_heads"],
        intermediate_size=hf["intermediate_size"],
        hidden_act=hf.get("hidden_act", "gelu"),
        hidden_dropout_prob=float(hf.get("hidden_dropout_prob", 0.1)),
        attention_probs_dropout_prob=float(hf.get("attention_probs_dropout_prob", 0.1)),
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        type_vocab_size=hf.get("type_vocab_size", 0),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-7),
        pad_token_id=hf.get("pad_token_id") or 0,
        dtype=dtype,
        hf=dict(hf),
    )


def settings(cfg: EncoderConfig) -> DebertaSettings:
    return deberta_settings(cfg.hf)


# -- relative positions (numpy: they depend on the static length only) ---------------------------------------
def log_bucket_position(rel, bucket_size: int, max_position: int) -> np.ndarray:
    """transformers' ``make_log_bucket_position`` in float32: distances within ``bucket_size // 2`` kept,
    farther ones log-spaced up to ``max_position``; int64 like ``rel``."""
    rel = np.asarray(rel, np.int64)
    sign = np.sign(rel).astype(np.float32)
    mid = bucket_size // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
    with np.errstate(divide="ignore", invalid="ignore"):  # log(0) only where the near branch is taken
        ratio = np.log(abs_pos.astype(np.float32) / np.float32(mid)) / np.log(np.float32((max_position - 1) / mid))
        log_pos = np.ceil(ratio * np.float32(mid - 1)) + np.float32(mid)
    return np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * sign).astype(np.int64)


@functools.lru_cache(maxsize=64)
def relative_index(length: int, span: int, buckets: int, max_position: int) -> tuple[np.ndarray, np.ndarray, int]:
    """For a row of ``length`` tokens: ``c2p[q, k]`` and ``p2c[k, q]``, the rows of the relative-position table
    (transformers' ``clamp(±relative_pos + span, 0, 2 * span - 1)``), both int32 ``[T, T]`` and counted from
    ``lo``, the first row any of them uses (only rows ``lo..`` are projected: shorter rows use fewer)."""
    q = np.arange(length, dtype=np.int64)
    rel = q[:, None] - q[None, :]
    if buckets > 0 and max_position > 0:
        rel = log_bucket_position(rel, buckets, max_position)
    c2p = np.clip(rel + span, 0, 2 * span - 1)
    p2c = np.clip(-rel + span, 0, 2 * span - 1)
    lo = int(min(c2p.min(), p2c.min()))
    return (c2p - lo).astype(np.int32), (p2c - lo).astype(np.int32), lo


# -- modules --------------------------------------------------------------------------------------------------
class DebertaV2Embeddings(nnx.Module):
    """word (+ position with ``position_biased_input``) (+ token type when ``type_vocab_size`` > 0), width E ->
    ``embed_proj`` (E != H) -> ``LayerNorm`` -> zero at padding -> dropout: [B, T] -> [B, T, H]."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        s = settings(cfg)
        e, h = s.embedding_size, cfg.hidden_size
        self.word_embeddings = embed(cfg.vocab_size, e, dtype=cfg.dtype, rngs=rngs)
        self.position_embeddings = (embed(cfg.max_position_embeddings, e, dtype=cfg.dtype, rngs=rngs)
                                    if s.position_biased_input else None)
        self.token_type_embeddings = (embed(cfg.type_vocab_size, e, dtype=cfg.dtype, rngs=rngs)
                                      if cfg.type_vocab_size > 0 else None)
        self.embed_proj = (linear(e, h, dtype=cfg.dtype, rngs=rngs, use_bias=False, std=cfg.initializer_range)
                           if e != h else None)
        self.LayerNorm = layer_norm(h, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, input_ids_bt, token_type_ids_bt, mask_bt, key):
        x = self.word_embeddings(input_ids_bt)
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(jnp.arange(input_ids_bt.shape[1], dtype=jnp.int32))[None]
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids_bt)
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        x = self.LayerNorm(x) * mask_bt[:, :, None].astype(x.dtype)
        return dropout(x, self.rate, key)


class DisentangledSelfAttention(nnx.Module):
    """Content attention plus the ``c2p`` / ``p2c`` relative-position terms: [B, T, H] -> [B, T, heads * Dh]."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        s = settings(cfg)
        d = cfg.hidden_size
        self.query_proj = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.key_proj = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        self.value_proj = linear(d, d, dtype=cfg.dtype, rngs=rngs)
        own = s.relative_attention and not s.share_att_key
        self.pos_key_proj = linear(d, d, dtype=cfg.dtype, rngs=rngs) if own and "c2p" in s.pos_att_type else None
        self.pos_query_proj = (linear(d, d, dtype=cfg.dtype, rngs=rngs)
                               if own and "p2c" in s.pos_att_type else None)
        self.num_heads = cfg.num_attention_heads
        self.s = s
        self.rate = cfg.attention_probs_dropout_prob
        self.pos_rate = cfg.hidden_dropout_prob  # transformers' pos_dropout on the relative embeddings

    def _positions(self, rel_rd, batch: int, lo: int, hi: int, key):
        """The table rows ``lo:hi`` after transformers' ``pos_dropout``: [1, R, H], or [B, R, H] under dropout.

        Only the rows this length reaches are projected (rows stay independent through the encoder's
        LayerNorm and the projections). Dropout draws one mask per row of the batch over the whole table, so a
        sentence's mask depends on its key and the table row, not on the padded length or its batch mates.
        """
        if key is None or self.pos_rate == 0.0:
            return rel_rd[None, lo:hi]
        rows = jnp.broadcast_to(rel_rd[None], (batch,) + rel_rd.shape)
        return dropout(rows, self.pos_rate, key)[:, lo:hi]

    def _project(self, proj, rel_brd):
        """[1 or B, R, H] -> [heads, R, Dh] (shared by the batch) or [B, heads, R, Dh], and its einsum letters."""
        pos = split_heads(proj(rel_brd), self.num_heads)
        return (pos[0], "hrd") if pos.shape[0] == 1 else (pos, "bhrd")

    def _relative_scores(self, q_bhtd, k_bhtd, rel_rd, scale, key):
        """The ``c2p`` + ``p2c`` scores [B, heads, T, T] float32 from the relative-position table [2 * span, H]."""
        s, (b, h, t, _) = self.s, q_bhtd.shape
        c2p_idx, p2c_idx, lo = relative_index(t, s.span, s.position_buckets, s.max_relative_positions)
        rel = self._positions(rel_rd, b, lo, lo + int(max(c2p_idx.max(), p2c_idx.max())) + 1, key)
        score = jnp.zeros((b, h, t, t), jnp.float32)
        if "c2p" in s.pos_att_type:  # query i against the key-side position of (i - j)
            pos_key, lhs = self._project(self.key_proj if s.share_att_key else self.pos_key_proj, rel)
            c2p = jnp.einsum(f"bhqd,{lhs}->bhqr", q_bhtd, pos_key, preferred_element_type=jnp.float32)
            score = score + jnp.take_along_axis(c2p, jnp.broadcast_to(c2p_idx, (b, h, t, t)), axis=-1) / scale
        if "p2c" in s.pos_att_type:  # key j against the query-side position of (j - i), transposed
            pos_query, lhs = self._project(self.query_proj if s.share_att_key else self.pos_query_proj, rel)
            p2c = jnp.einsum(f"bhkd,{lhs}->bhkr", k_bhtd, pos_query, preferred_element_type=jnp.float32)
            p2c = jnp.take_along_axis(p2c, jnp.broadcast_to(p2c_idx, (b, h, t, t)), axis=-1)  # [B, h, key, query]
            score = score + jnp.swapaxes(p2c, -1, -2) / scale
        return score

    def __call__(self, x_btd, mask_btt, rel_rd, key):
        h = self.num_heads
        q, k, v = (split_heads(f(x_btd), h) for f in (self.query_proj, self.key_proj, self.value_proj))
        scale = np.sqrt(np.float32(q.shape[-1] * self.s.scale_factor))  # float32, as transformers' sqrt
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) / scale
        if self.s.relative_attention:
            scores = scores + self._relative_scores(q, k, rel_rd, scale, fold(key, 1))
        scores = jnp.where(mask_btt[:, None], scores, jnp.finfo(jnp.float32).min)
        probs = attention_dropout(jax.nn.softmax(scores, axis=-1), self.rate, fold(key, 0)).astype(v.dtype)
        return merge_heads(jnp.einsum("bhqk,bhkd->bhqd", probs, v))


class DebertaV2Attention(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.self = DisentangledSelfAttention(cfg, rngs)
        self.output = BertResidualOutput(cfg.hidden_size, cfg, rngs)

    def __call__(self, x_btd, mask_btt, rel_rd, key):
        return self.output(self.self(x_btd, mask_btt, rel_rd, fold(key, 0)), x_btd, fold(key, 1))


class DebertaV2Layer(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.attention = DebertaV2Attention(cfg, rngs)
        self.intermediate = BertIntermediate(cfg, rngs)
        self.output = BertResidualOutput(cfg.intermediate_size, cfg, rngs)

    def __call__(self, x_btd, mask_btt, rel_rd, key):
        a = self.attention(x_btd, mask_btt, rel_rd, fold(key, 0))
        return self.output(self.intermediate(a), a, fold(key, 1))


class ConvLayer(nnx.Module):
    """``conv`` (Conv1d over time, ``padding=(k - 1) // 2``) on the embeddings, zeroed at padding -> dropout ->
    ``conv_act`` -> ``LayerNorm(+ residual)`` -> zeroed at padding: [B, T, H] -> [B, T, H]."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        s = settings(cfg)
        k, pad = s.conv_kernel_size, (s.conv_kernel_size - 1) // 2
        # Kernel [k, H / groups, H]: torch's Conv1d weight [H, H / groups, k] reversed (the "kernel" key's .T).
        self.conv = nnx.Conv(cfg.hidden_size, cfg.hidden_size, k, padding=[(pad, pad)],
                             feature_group_count=s.conv_groups, dtype=cfg.dtype, param_dtype=jnp.float32,
                             kernel_init=nnx.initializers.normal(cfg.initializer_range), rngs=rngs)
        self.LayerNorm = layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)
        self.act = activation(s.conv_act)
        self.rate = cfg.hidden_dropout_prob

    def __call__(self, x_btd, residual_btd, mask_bt, key):
        m = mask_bt[:, :, None].astype(x_btd.dtype)
        out = self.act(dropout(self.conv(x_btd) * m, self.rate, key))
        return self.LayerNorm(residual_btd + out) * m


class DebertaV2Encoder(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        s = settings(cfg)
        self.layer = nnx.List([DebertaV2Layer(cfg, rngs) for _ in range(cfg.num_hidden_layers)])
        self.rel_embeddings = (embed(2 * s.span, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs,
                                     std=cfg.initializer_range) if s.relative_attention else None)
        # transformers builds this norm whenever norm_rel_ebd asks for it, relative attention or not.
        self.LayerNorm = (layer_norm(cfg.hidden_size, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)
                          if s.norm_rel_layer_norm else None)
        self.conv = ConvLayer(cfg, rngs) if s.conv_kernel_size > 0 else None
        self.dtype = cfg.dtype

    def rel_table(self):
        """The relative-position table [2 * span, H] (layer-normed with ``norm_rel_ebd``), or None."""
        if self.rel_embeddings is None:
            return None
        table = self.rel_embeddings.embedding[...].astype(self.dtype)
        return table if self.LayerNorm is None else self.LayerNorm(table)


class DebertaV2Model(nnx.Module):
    """DeBERTa-v2/v3 encoder; the call of :class:`stcore_jax.models.bert.BertModel` (no packing):
    ``input_ids``/``attention_mask`` [B, T] (+ ``token_type_ids``, ignored when ``type_vocab_size`` is 0) ->
    ``{"last_hidden_state": [B, T, H]}`` (+ ``hidden_states``: embeddings, then each layer, conv included)."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.gradient_checkpointing = False  # static: set via Transformer.set_gradient_checkpointing
        self.embeddings = DebertaV2Embeddings(cfg, rngs)
        self.encoder = DebertaV2Encoder(cfg, rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None, output_hidden_states=False,
                 packing=None):
        if packing is not None or attention_mask.ndim != 2:
            raise ValueError("DebertaV2Model takes a [B, T] attention_mask and no sequence packing (its relative "
                             "positions and conv layer are per row); train with sequence_packing=False")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        mask = attention_mask.astype(bool)
        x = self.embeddings(input_ids, token_type_ids, mask, fold(dropout_key, 0))
        mask_btt = mask[:, :, None] & mask[:, None, :]  # transformers masks padding queries too
        rel = self.encoder.rel_table()
        hidden = [x]
        for i, layer in enumerate(self.encoder.layer):
            out = call_layer(layer, self.gradient_checkpointing, hidden[-1], mask_btt, rel, fold(dropout_key, i + 1))
            if i == 0 and self.encoder.conv is not None:
                out = self.encoder.conv(x, out, mask, fold(dropout_key, len(self.encoder.layer) + 1))
            hidden.append(out)
        result = {"last_hidden_state": hidden[-1]}
        if output_hidden_states:
            result["hidden_states"] = tuple(hidden)
        return result


# -- heads (transformers' DebertaV2ForSequenceClassification / DebertaV2ForMaskedLM) ------------------------
class ContextPooler(nnx.Module):
    """First token -> dropout (``pooler_dropout``) -> ``dense`` -> ``pooler_hidden_act``: [B, T, H] -> [B, H]."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        s = settings(cfg)
        self.dense = linear(cfg.hidden_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs, std=cfg.initializer_range)
        self.act = activation(s.pooler_hidden_act)
        self.rate = s.pooler_dropout

    def __call__(self, x_btd, key):
        return self.act(self.dense(dropout(x_btd[:, 0], self.rate, key)))


class DebertaV2ForSequenceClassification(nnx.Module):
    """``deberta`` -> ``pooler`` -> dropout (``cls_dropout``, else ``hidden_dropout_prob``) -> ``classifier``:
    ``(input_ids, attention_mask, token_type_ids=None, *, dropout_key=None) -> [B, num_labels]`` float32."""

    def __init__(self, cfg: EncoderConfig, num_labels: int, rngs: nnx.Rngs):
        self.deberta = DebertaV2Model(cfg, rngs)
        self.pooler = ContextPooler(cfg, rngs)
        self.classifier = linear(cfg.hidden_size, num_labels, dtype=cfg.dtype, rngs=rngs, std=cfg.initializer_range)
        rate = cfg.hf.get("cls_dropout")
        self.rate = cfg.hidden_dropout_prob if rate is None else float(rate)
        self.head_site = cfg.num_hidden_layers + 2  # after the encoder's sites (layers, conv)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.deberta(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)["last_hidden_state"]
        key = fold(dropout_key, self.head_site)
        pooled = dropout(self.pooler(h, fold(key, 0)), self.rate, fold(key, 1))
        return self.classifier(pooled).astype(jnp.float32)


class LegacyPredictionHeadTransform(nnx.Module):
    """``dense`` (H -> E) -> ``hidden_act`` -> ``LayerNorm``: [B, T, H] -> [B, T, E]."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        e = settings(cfg).embedding_size
        self.dense = linear(cfg.hidden_size, e, dtype=cfg.dtype, rngs=rngs, std=cfg.initializer_range)
        self.act = activation(cfg.hidden_act)
        self.LayerNorm = layer_norm(e, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)

    def __call__(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class LegacyLMPredictionHead(nnx.Module):
    """``transform`` and the decoder's bias (``cls.predictions.bias``); the decoder weight is the word embeddings."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.transform = LegacyPredictionHeadTransform(cfg, rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))


class LegacyOnlyMLMHead(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.predictions = LegacyLMPredictionHead(cfg, rngs)


class LMPredictionHead(nnx.Module):
    """``legacy=False``: ``dense`` (H -> H) -> ``hidden_act`` -> ``LayerNorm``, then the word embeddings + ``bias``."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        h = cfg.hidden_size
        self.dense = linear(h, h, dtype=cfg.dtype, rngs=rngs, std=cfg.initializer_range)
        self.act = activation(cfg.hidden_act)
        self.LayerNorm = layer_norm(h, cfg.layer_norm_eps, dtype=cfg.dtype, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))


class OnlyMLMHead(nnx.Module):
    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        self.lm_head = LMPredictionHead(cfg, rngs)


class DebertaV2ForMaskedLM(nnx.Module):
    """``deberta`` -> ``cls.predictions`` (``legacy``, transformers' default) or ``lm_predictions.lm_head``
    (``legacy=False``), the decoder tied to ``deberta.embeddings.word_embeddings``: [B, T, vocab_size] float32."""

    def __init__(self, cfg: EncoderConfig, rngs: nnx.Rngs):
        s = settings(cfg)
        self.deberta = DebertaV2Model(cfg, rngs)
        if s.legacy:
            self.cls, self.lm_predictions = LegacyOnlyMLMHead(cfg, rngs), None
        else:
            if s.embedding_size != cfg.hidden_size:
                raise ValueError(f"config.json: legacy=false needs embedding_size ({s.embedding_size}) equal to "
                                 f"hidden_size ({cfg.hidden_size}): that head multiplies [.., H] by the word "
                                 "embeddings")
            self.cls, self.lm_predictions = None, OnlyMLMHead(cfg, rngs)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        h = self.deberta(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)["last_hidden_state"]
        table = self.deberta.embeddings.word_embeddings.embedding[...]
        if self.cls is not None:
            head = self.cls.predictions
            return tied_logits(head.transform(h), table, head.bias[...])
        head = self.lm_predictions.lm_head
        return tied_logits(head.LayerNorm(head.act(head.dense(h))), table, head.bias[...])


ARCHITECTURE = Architecture(
    model_types={"deberta-v2": "DebertaV2"},
    encoder=DebertaV2Model,
    config=deberta_v2_config,
    lora_targets=("query_proj", "value_proj"),  # PEFT's defaults for deberta-v2
    positions="absolute",
    prefix="deberta",
    sequence_classification=DebertaV2ForSequenceClassification,
    masked_lm=DebertaV2ForMaskedLM,
    tied={"cls.predictions.decoder.weight": "deberta.embeddings.word_embeddings.weight",
          "cls.predictions.decoder.bias": "cls.predictions.bias"},
)
