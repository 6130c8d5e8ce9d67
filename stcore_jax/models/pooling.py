"""Pooling: token embeddings [B, T, H] -> sentence embedding [B, k*H] (sentence-transformers ``Pooling``)."""

from __future__ import annotations

import os

import jax.numpy as jnp

from stcore_jax.models.module import Module, ensure_dir, read_json, write_json

MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Legacy boolean config keys, in the order older releases concatenate them.
LEGACY_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _exclude_prompt(mask_bt, prompt_length):
    """Zero the first ``prompt_length`` real tokens of each row (works with left padding too)."""
    first = jnp.argmax(mask_bt, axis=1)
    pos = jnp.arange(mask_bt.shape[1])[None, :]
    return jnp.where(pos < (first + prompt_length)[:, None], 0, mask_bt)


def pool(token_btd, mask_bt, modes, prompt_length=None):
    """Pool with each mode in ``modes`` and concatenate; accumulates in float32.

    Args:
      token_btd: [B, T, H] token embeddings; mask_bt: [B, T] 1 for tokens, 0 for padding;
      prompt_length: None, or an int (scalar array) of prompt tokens to leave out.
    Returns [B, len(modes) * H] float32.
    """
    x = token_btd.astype(jnp.float32)
    orig_mask = mask_bt.astype(jnp.int32)
    mask = orig_mask if prompt_length is None else _exclude_prompt(orig_mask, prompt_length)
    m = mask[..., None].astype(jnp.float32)
    outs = []
    for mode in modes:
        if mode == "cls":
            idx = jnp.argmax(mask, axis=1)
            outs.append(jnp.take_along_axis(x, idx[:, None, None], axis=1)[:, 0])
        elif mode == "max":
            outs.append(jnp.max(jnp.where(m > 0, x, -jnp.inf), axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = jnp.sum(x * m, axis=1)
            count = jnp.maximum(jnp.sum(m, axis=1), 1e-9)
            outs.append(total / (count if mode == "mean" else jnp.sqrt(count)))
        elif mode == "weightedmean":
            w = jnp.arange(1, x.shape[1] + 1, dtype=jnp.float32)[None, :, None]
            w = w - jnp.argmax(orig_mask, axis=1).astype(jnp.float32)[:, None, None]
            wm = m * w
            outs.append(jnp.sum(x * wm, axis=1) / jnp.maximum(jnp.sum(wm, axis=1), 1e-9))
        elif mode == "lasttoken":
            t = x.shape[1]
            rev = mask[:, ::-1]
            has = jnp.max(rev, axis=1)
            last = jnp.where(has == 0, t - 1, jnp.argmax(rev, axis=1))
            idx = t - last - 1
            outs.append(jnp.take_along_axis(x * m, idx[:, None, None], axis=1)[:, 0])
        else:
            raise ValueError(f"Unknown pooling mode {mode!r}; choose from {MODES}")
    return jnp.concatenate(outs, axis=-1)


class Pooling(Module):
    """``Pooling(embedding_dimension, pooling_mode="mean", include_prompt=True)``.

    ``pooling_mode`` is one mode or a tuple of modes (concatenated in order). The legacy keywords
    ``word_embedding_dimension`` and ``pooling_mode_*_tokens`` booleans are accepted.
    """

    config_keys = ["embedding_dimension", "pooling_mode", "include_prompt"]
    st_type = "sentence_transformers.models.Pooling"

    def __init__(self, embedding_dimension=None, pooling_mode="mean", include_prompt=True, **legacy):
        if embedding_dimension is None:
            embedding_dimension = legacy.pop("word_embedding_dimension", None)
        else:
            legacy.pop("word_embedding_dimension", None)
        if embedding_dimension is None:
            raise ValueError("Pooling needs embedding_dimension (or the legacy word_embedding_dimension)")
        legacy_modes = [mode for key, mode in LEGACY_KEYS.items() if legacy.pop(key, False)]
        unknown = [k for k in legacy if not k.startswith("pooling_mode")]
        if unknown:
            raise ValueError(f"Pooling got unknown config keys {unknown}; "
                             f"known: {self.config_keys + list(LEGACY_KEYS)}")
        if legacy_modes and pooling_mode == "mean":
            pooling_mode = legacy_modes[0] if len(legacy_modes) == 1 else tuple(legacy_modes)
        modes = (pooling_mode,) if isinstance(pooling_mode, str) else tuple(pooling_mode)
        for mode in modes:
            if mode not in MODES:
                raise ValueError(f"Unknown pooling mode {mode!r}; choose from {MODES}")
        self.embedding_dimension = int(embedding_dimension)
        self.pooling_mode = modes[0] if len(modes) == 1 else modes
        self.modes = modes
        self.include_prompt = include_prompt

    def apply(self, params, features, *, dropout_key=None):
        pl = None if self.include_prompt else features.get("prompt_length")
        features = dict(features)
        features["sentence_embedding"] = pool(features["token_embeddings"], features["attention_mask"], self.modes, pl)
        return features

    def get_embedding_dimension(self):
        return len(self.modes) * self.embedding_dimension

    def legacy_config(self) -> dict:
        """Config in the 2.x–5.x key set (SPEC §1.8); raises if the mode order is not expressible."""
        order = [m for m in LEGACY_KEYS.values() if m in self.modes]
        if list(self.modes) != order:
            raise ValueError(
                f"Pooling modes {self.modes} are not in the legacy concatenation order {tuple(order)}; "
                "such a model loads only in sentence-transformers >= 6"
            )
        cfg = {"word_embedding_dimension": self.embedding_dimension}
        for key, mode in LEGACY_KEYS.items():
            if mode in ("weightedmean", "lasttoken") and mode not in self.modes:
                continue
            cfg[key] = mode in self.modes
        if not self.include_prompt:
            cfg["include_prompt"] = False
        return cfg

    def save(self, path):
        write_json(os.path.join(ensure_dir(path), "config.json"), self.legacy_config())

    @classmethod
    def load(cls, path, **kwargs):
        cfg = read_json(os.path.join(path, "config.json"))
        if "pooling_mode" in cfg or "embedding_dimension" in cfg:  # 6.x keys win over legacy ones
            cfg = {k: v for k, v in cfg.items() if k in cls.config_keys or k == "word_embedding_dimension"}
        return cls(**cfg)
