"""Transformer: tokenizer + Flax NNX encoder, the pipeline's input module (sentence-transformers ``Transformer``).

The encoder crosses into plain pytrees once: ``graphdef`` (static structure) is kept here and the
parameters live in ``self.params`` as a nested dict of arrays; ``apply`` merges them inside whatever
transformation runs it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stcore_jax.io.hf_keys import hf_to_params, params_to_hf
from stcore_jax.io.safetensors_io import load_safetensors, save_safetensors
from stcore_jax.models.config import EncoderConfig
from stcore_jax.models.module import Module, ensure_dir, read_json, write_json
from stcore_jax.models.packing import PACKED_PREFIX, is_packed, packed_features, unpack_tokens
from stcore_jax.models.registry import architecture, encoder_class, encoder_config

ST_CONFIG_NAMES = [
    "sentence_bert_config.json",
    "sentence_roberta_config.json",
    "sentence_distilbert_config.json",
    "sentence_camembert_config.json",
    "sentence_albert_config.json",
    "sentence_xlm-roberta_config.json",
    "sentence_xlnet_config.json",
]


def position_limit(config: EncoderConfig) -> int | None:
    """The longest input (tokens) the encoder has positions for; ``None``: no table (no limit).

    BERT-like tables hold positions ``0..max_position_embeddings-1``; fairseq-style ones (RoBERTa, MPNet)
    start at ``pad_token_id + 1``, so that many rows are unusable (514 rows -> 512 tokens). Past the
    table an embedding lookup is out of range: PyTorch raises, XLA's gather fills NaN, so a too-long
    input would silently encode to NaN. ModernBERT's rotary positions are computed for any length
    (models/modernbert.py ``rope_tables``), so nothing turns NaN and, as in the reference, a
    ``max_seq_length`` past ``max_position_embeddings`` is the user's choice. The architecture's record
    says which (``Architecture.position_offset``).
    """
    offset = architecture(config.model_type).position_offset(config)
    return None if offset is None else config.max_position_embeddings - offset


def check_max_seq_length(value, config: EncoderConfig, where: str = "max_seq_length") -> int:
    """``value`` as the truncation length, or a ValueError naming ``where``: a positive int, at most
    :func:`position_limit` (a longer one would embed to NaN instead of failing)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{where} must be a positive integer (tokens), got {value!r}")
    limit = position_limit(config)
    if limit is not None and value > limit:
        first = architecture(config.model_type).position_offset(config)
        offset = (f" (max_position_embeddings={config.max_position_embeddings} less {first} "
                  f"for {config.model_type}'s position offset)" if first else
                  " (max_position_embeddings in config.json)")
        raise ValueError(f"{where}={value} exceeds the {limit} positions this {config.model_type} model has"
                         f"{offset}; longer inputs cannot be embedded. Use at most {limit}")
    return int(value)


def _load_tokenizer(path, processor_kwargs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, **(processor_kwargs or {}))


def _lowercase_tokenizer(tokenizer):
    """Prepend a Lowercase normalizer unless the fast tokenizer already lowercases."""
    from tokenizers.normalizers import Lowercase, Sequence

    backend = tokenizer.backend_tokenizer
    current = backend.normalizer
    if current is not None and "Lowercase" in repr(current) or '"lowercase": true' in json.dumps(
        json.loads(backend.to_str()).get("normalizer") or {}
    ).lower():
        return
    backend.normalizer = Sequence([Lowercase()] + ([current] if current is not None else []))


class Transformer(Module):
    """``Transformer(model_name_or_path, max_seq_length=None, do_lower_case=False, ...)``.

    Args:
      model_name_or_path: a local Hugging Face checkpoint directory (config.json, model.safetensors,
        tokenizer files).
      max_seq_length: truncation length; default ``min(tokenizer.model_max_length, max_position_embeddings)``.
      do_lower_case: lowercase inputs (adds a Lowercase normalizer to the fast tokenizer).
      compute_dtype: activation dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
    """

    config_keys = ["max_seq_length", "do_lower_case"]
    st_type = "sentence_transformers.models.Transformer"

    def __init__(self, model_name_or_path, max_seq_length=None, do_lower_case=False, model_kwargs=None,
                 processor_kwargs=None, config_kwargs=None, tokenizer_kwargs=None, compute_dtype=jnp.float32,
                 tokenizer_name_or_path=None, cache_dir=None, backend="torch", **unused):
        path = str(model_name_or_path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"Transformer: {path!r} is not a directory")
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"Transformer: no config.json in {path!r}; is this a Hugging Face checkpoint?")
        hf_cfg = read_json(cfg_path)
        hf_cfg.update(config_kwargs or {})
        cls = encoder_class(hf_cfg.get("model_type"), where=cfg_path)
        self.config = encoder_config(hf_cfg, dtype=compute_dtype, where=cfg_path)
        self.encoder_cls = cls
        # Build the structure without materialising random weights, then fill it from the checkpoint.
        abstract = nnx.eval_shape(lambda: cls(self.config, nnx.Rngs(0)))
        self.graphdef, abstract_state = nnx.split(abstract)
        abstract_params = nnx.to_pure_dict(abstract_state)
        tensors = load_safetensors(path)  # raises a clear error before anything else happens
        params, self.extra_tensors = hf_to_params(tensors, abstract_params,
                                                  source=os.path.join(path, "model.safetensors"))
        self.params = jax.tree_util.tree_map(jnp.asarray, params)

        self.tokenizer = _load_tokenizer(tokenizer_name_or_path or path, processor_kwargs or tokenizer_kwargs)
        if max_seq_length is None:
            max_seq_length = min(self.tokenizer.model_max_length,
                                 position_limit(self.config) or self.config.max_position_embeddings)
        self.max_seq_length = max_seq_length  # checked against the position table (the property's setter)
        self.do_lower_case = bool(do_lower_case)
        if self.do_lower_case:
            _lowercase_tokenizer(self.tokenizer)
        self.source_path = path

    @property
    def max_seq_length(self) -> int:
        """Truncation length (tokens); setting it checks it against the position table (:func:`position_limit`)."""
        return self._max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value):
        self._max_seq_length = check_max_seq_length(value, self.config)

    # -- tokenization -------------------------------------------------------------------------
    def tokenize_ids(self, texts: list[str]) -> dict[str, list[list[int]]]:
        """Token ids per text, truncated to ``max_seq_length``, unpadded."""
        enc = self.tokenizer(
            list(texts), padding=False, truncation="longest_first", max_length=self.max_seq_length,
            return_attention_mask=False,
        )
        out = {"input_ids": enc["input_ids"]}
        if "token_type_ids" in enc:
            out["token_type_ids"] = enc["token_type_ids"]
        return out

    def pad(self, ids: dict[str, list[list[int]]], length: int, batch_size: int) -> dict[str, np.ndarray]:
        """Pad (right) to ``[batch_size, length]``; extra rows are all padding (mask 0)."""
        pad_id = self.tokenizer.pad_token_id or 0
        rows = ids["input_ids"]
        input_ids = np.full((batch_size, length), pad_id, dtype=np.int32)
        mask = np.zeros((batch_size, length), dtype=np.int32)
        types = np.zeros((batch_size, length), dtype=np.int32)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
            if "token_type_ids" in ids:
                types[i, : len(r)] = ids["token_type_ids"][i]
        out = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in ids:
            out["token_type_ids"] = types
        return out

    def tokenize(self, texts: list[str], length: int | None = None) -> dict[str, np.ndarray]:
        """Tokenize and pad to the longest input (or ``length``), like the reference ``tokenize``."""
        ids = self.tokenize_ids(texts)
        longest = max((len(r) for r in ids["input_ids"]), default=0)
        return self.pad(ids, length or longest, len(texts))

    # -- forward ------------------------------------------------------------------------------
    @property
    def supports_packing(self) -> bool:
        """Whether the encoder takes packed rows (several sentences per row; models/packing.py)."""
        return bool(getattr(self.encoder_cls, "supports_packing", False))

    def apply(self, params, features, *, dropout_key=None, output_hidden_states=False):
        model = nnx.merge(self.graphdef, params)
        if is_packed(features):
            return self._apply_packed(model, features, dropout_key, output_hidden_states)
        out = model(
            features["input_ids"], features["attention_mask"], features.get("token_type_ids"),
            dropout_key=dropout_key, output_hidden_states=output_hidden_states,
        )
        features = dict(features)
        features["token_embeddings"] = out["last_hidden_state"]
        if output_hidden_states:
            features["all_layer_embeddings"] = out["hidden_states"]
        return features

    def _apply_packed(self, model, features, dropout_key, output_hidden_states):
        """The forward of packed features (models/packing.py): the encoder runs on ``[S * R, L]`` packed
        rows, and ``token_embeddings`` come back per sentence, ``[N, L, H]``, as an unpacked forward gives."""
        if not self.supports_packing:
            raise ValueError(f"{self.encoder_cls.__name__} does not support sequence packing; "
                             f"train with sequence_packing=False")
        shards = features["packed_input_ids"].shape[0]
        ids, types, packing, key = packed_features(features, dropout_key)
        out = model(ids, packing.attention_mask(), types, dropout_key=key, output_hidden_states=output_hidden_states,
                    packing=packing)
        features = {k: v for k, v in features.items() if not k.startswith(PACKED_PREFIX)}
        features["token_embeddings"] = unpack_tokens(out["last_hidden_state"], shards, features)
        if output_hidden_states:
            features["all_layer_embeddings"] = tuple(unpack_tokens(h, shards, features) for h in out["hidden_states"])
        return features

    def get_embedding_dimension(self):
        return self.config.hidden_size

    def with_compute_dtype(self, dtype) -> Transformer:
        """A shallow copy whose encoder computes in ``dtype`` (parameters, tokenizer and the
        gradient-checkpointing setting are shared/kept; ``self`` is unchanged). The trainer runs its
        step on such a copy for ``bf16=True``: float32 master weights, bfloat16 activations."""
        if jnp.dtype(dtype) == jnp.dtype(self.config.dtype):
            return self
        out = copy.copy(self)
        out.config = dataclasses.replace(self.config, dtype=dtype)
        remat = bool(getattr(nnx.merge(self.graphdef, self.params), "gradient_checkpointing", False))
        abstract = nnx.eval_shape(lambda: self.encoder_cls(out.config, nnx.Rngs(0)))
        abstract.gradient_checkpointing = remat
        out.graphdef, _ = nnx.split(abstract)
        return out

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each layer's activations in the backward pass (``jax.checkpoint`` per layer)."""
        model = nnx.merge(self.graphdef, self.params)
        model.gradient_checkpointing = bool(enabled)
        self.graphdef, _ = nnx.split(model)

    # -- save / load --------------------------------------------------------------------------
    def hf_state_dict(self, params=None) -> dict[str, np.ndarray]:
        tensors = dict(self.extra_tensors)
        tensors.update(params_to_hf(jax.device_get(self.params if params is None else params)))
        return tensors

    def save(self, path, params=None):
        ensure_dir(path)
        hf_cfg = dict(self.config.hf)
        hf_cfg.setdefault("architectures", [self.encoder_cls.__name__])
        write_json(os.path.join(path, "config.json"), hf_cfg)
        save_safetensors(self.hf_state_dict(params), os.path.join(path, "model.safetensors"))
        self.tokenizer.save_pretrained(path)
        tok_cfg_path = os.path.join(path, "tokenizer_config.json")
        if os.path.isfile(tok_cfg_path):
            tok_cfg = read_json(tok_cfg_path)
            tok_cfg["model_max_length"] = self.max_seq_length
            write_json(tok_cfg_path, tok_cfg)
        write_json(os.path.join(path, "sentence_bert_config.json"),
                   {"max_seq_length": self.max_seq_length, "do_lower_case": self.do_lower_case})

    @classmethod
    def load(cls, path, **kwargs):
        st_cfg, st_cfg_path = {}, None
        for name in ST_CONFIG_NAMES:
            p = os.path.join(path, name)
            if os.path.isfile(p):
                st_cfg, st_cfg_path = read_json(p), p
                break
        args = {k: st_cfg[k] for k in ("max_seq_length", "do_lower_case") if k in st_cfg}
        legacy = {"model_args": "model_kwargs", "tokenizer_args": "processor_kwargs", "config_args": "config_kwargs"}
        for k, new in legacy.items():  # legacy names
            if k in st_cfg:
                args[new] = st_cfg[k]
        for k in ("model_kwargs", "processor_kwargs", "config_kwargs"):
            if k in st_cfg:
                args[k] = st_cfg[k]
        # Without one (6.x directories), the default applies: the tokenizer's model_max_length (which 6.x
        # saves as the max_seq_length), capped at the position table as the reference caps it.
        args.update(kwargs)
        if "max_seq_length" in kwargs or args.get("max_seq_length") is None:
            return cls(path, **args)
        module = cls(path, **{**args, "max_seq_length": None})
        try:  # a saved length past the position table: an error naming the file, not NaN embeddings
            module.max_seq_length = args["max_seq_length"]
        except ValueError as e:
            raise ValueError(f"{st_cfg_path}: {e}") from None
        return module
