"""Encoders with a head: transformers' ``*ForSequenceClassification`` (CrossEncoder logits) and ``*ForMaskedLM``
(SparseEncoder's MLM logits), for every architecture in ``models/registry.py``.

The head modules live in the architecture files (``bert.py``, ``roberta.py``, ...), named like transformers'
modules, so a parameter path is the checkpoint key (``cls.predictions.transform.dense.kernel`` <->
``cls.predictions.transform.dense.weight``). Here: building, loading (a ``*For...`` checkpoint, legacy
``gamma``/``beta`` names included, or a plain encoder whose head is then initialised as transformers'
``_init_weights`` does), the pure forward, and the export that ``AutoModelFor...from_pretrained`` reads
without missing or unexpected keys. A tied decoder is stored as ``save_pretrained`` stores it: not at all
(``tie_word_embeddings`` says it is the word-embedding table).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from stcore_jax.io.hf_keys import key_paths, match_params, params_to_hf
from stcore_jax.io.safetensors_io import load_safetensors, save_safetensors, weights_path
from stcore_jax.models.architecture import HEAD_KINDS, Architecture
from stcore_jax.models.config import EncoderConfig
from stcore_jax.models.module import ensure_dir, read_json, write_json
from stcore_jax.models.registry import architecture, encoder_config

logger = logging.getLogger(__name__)


def num_labels_from(hf: dict) -> int:
    """transformers' rule: the length of ``id2label``, else ``num_labels``, else 2."""
    if hf.get("id2label"):
        return len(hf["id2label"])
    return int(hf.get("num_labels") or 2)


def with_labels(hf: dict, num_labels: int) -> dict:
    """``hf`` with ``id2label``/``label2id`` for ``num_labels`` labels (kept when they already count that many)."""
    if not isinstance(num_labels, int) or num_labels < 1:
        raise ValueError(f"num_labels must be a positive int, got {num_labels!r}")
    out = {k: v for k, v in hf.items() if k != "num_labels"}
    if len(hf.get("id2label") or {}) != num_labels:
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(num_labels)}
    return out


def _construct(arch: Architecture, kind: str, config: EncoderConfig, rngs: nnx.Rngs):
    cls = arch.head_class(kind)
    if kind == "sequence_classification":
        return cls(config, num_labels_from(config.hf), rngs)
    return cls(config, rngs)


def _params_of(module) -> dict:
    return nnx.to_pure_dict(nnx.state(module, nnx.Param))


@dataclasses.dataclass
class HeadModel:
    """An encoder with a head as a pure function of its parameters.

    ``params`` is a nested dict of arrays whose paths are transformers' keys (``bert.encoder.layer.0...``,
    ``classifier.kernel``); ``config.hf`` is the ``config.json`` the export writes (``architectures`` and, for
    classification, ``id2label`` set). Call: ``(input_ids [B, T], attention_mask [B, T], token_type_ids=None,
    *, dropout_key=None) -> logits`` float32, ``[B, num_labels]`` or ``[B, T, vocab_size]``; no key: no dropout.
    """

    kind: str
    architecture: Architecture
    config: EncoderConfig
    graphdef: Any
    params: dict
    new_keys: tuple[str, ...] = ()  # HF keys initialised afresh at load (not in the checkpoint)
    gradient_checkpointing: bool = False  # the encoder rematerialises each layer (set by ``with_graph``)

    @property
    def num_labels(self) -> int | None:
        return num_labels_from(self.config.hf) if self.kind == "sequence_classification" else None

    def with_graph(self, *, dtype=None, gradient_checkpointing: bool | None = None) -> HeadModel:
        """A copy whose graph computes in ``dtype`` and/or recomputes each encoder layer in the backward pass
        (``jax.checkpoint`` per layer); ``params`` (float32) are shared, ``self`` is unchanged.

        The graph is rebuilt abstractly (no weights drawn), as the encoder's ``Transformer.with_compute_dtype``
        does: the compute dtype lives in the Linear/LayerNorm modules, the remat flag on the encoder
        (``arch.prefix``: ``bert``, ``roberta``, ``model``, ...). The heads' logits stay float32 either way."""
        config = self.config if dtype is None else dataclasses.replace(self.config, dtype=dtype)
        remat = self.gradient_checkpointing if gradient_checkpointing is None else bool(gradient_checkpointing)
        abstract = nnx.eval_shape(lambda: _construct(self.architecture, self.kind, config, nnx.Rngs(0)))
        encoder = getattr(abstract, self.architecture.prefix, None)
        if hasattr(encoder, "gradient_checkpointing"):
            encoder.gradient_checkpointing = remat
        elif remat:
            raise ValueError(f"gradient checkpointing: {type(abstract).__name__} has no encoder "
                             f"{self.architecture.prefix!r} with a gradient_checkpointing switch")
        graphdef, _ = nnx.split(abstract)
        return dataclasses.replace(self, config=config, graphdef=graphdef, gradient_checkpointing=remat)

    def apply(self, params, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        """The forward pass as a pure function of ``params`` (jit/grad it)."""
        model = nnx.merge(self.graphdef, params)
        return model(input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)

    def __call__(self, input_ids, attention_mask, token_type_ids=None, *, dropout_key=None):
        return self.apply(self.params, input_ids, attention_mask, token_type_ids, dropout_key=dropout_key)

    def module(self):
        """The NNX module with ``params`` merged in."""
        return nnx.merge(self.graphdef, self.params)

    def hf_state_dict(self, params=None) -> dict[str, np.ndarray]:
        """``{transformers key: array}`` as ``save_pretrained`` writes it: tied decoder weights left out
        (they are no parameter here), Linear weights ``[out, in]``."""
        return params_to_hf(jax.device_get(self.params if params is None else params))

    def save(self, path, params=None) -> None:
        """Write ``config.json`` and ``model.safetensors`` (a ``*For...`` checkpoint transformers loads)."""
        ensure_dir(path)
        write_json(os.path.join(path, "config.json"), self.config.hf)
        save_safetensors(self.hf_state_dict(params), os.path.join(path, "model.safetensors"))


def _hf_config(hf: dict, arch: Architecture, kind: str, num_labels: int | None) -> dict:
    """The ``config.json`` of the head model: labels counted, ``architectures`` naming transformers' class."""
    hf = dict(hf)
    if kind == "sequence_classification":
        hf = with_labels(hf, num_labels_from(hf) if num_labels is None else num_labels)
    elif hf.get("tie_word_embeddings", True) is False:
        raise ValueError("config.json has tie_word_embeddings=false: stcore_jax's masked-LM heads use the word "
                         "embeddings as the decoder (the tied layout transformers uses by default)")
    hf["architectures"] = [arch.hf_class_name(hf["model_type"], kind)]
    return hf


def build_head_model(kind: str, hf_config: dict, *, num_labels: int | None = None, compute_dtype=jnp.float32,
                     seed: int = 0) -> HeadModel:
    """A randomly initialised head model (every weight as transformers' ``_init_weights`` would draw its
    distribution) for a ``config.json`` dict."""
    arch = architecture(hf_config.get("model_type"))
    config = encoder_config(_hf_config(hf_config, arch, kind, num_labels), compute_dtype)
    graphdef, state = nnx.split(_construct(arch, kind, config, nnx.Rngs(seed)))
    return HeadModel(kind, arch, config, graphdef, nnx.to_pure_dict(state))


def checkpoint_tensors(tensors: dict, arch: Architecture) -> dict:
    """A checkpoint's tensors under the ``*For...`` key names: a plain encoder's keys get the architecture's
    prefix (``embeddings.…`` -> ``bert.embeddings.…``), and tied aliases are dropped, or renamed where their
    target is absent (4.x files with the decoder's bias only)."""
    prefix = arch.prefix + "."
    if not any(k.startswith(prefix) for k in tensors):
        tensors = {prefix + k: v for k, v in tensors.items()}
    tensors = dict(tensors)
    for alias, target in arch.tied.items():
        if alias in tensors:
            tensors.setdefault(target, tensors.pop(alias))
    return tensors


def load_head_model(path, kind: str, *, num_labels: int | None = None, compute_dtype=jnp.float32,
                    config_kwargs: dict | None = None, seed: int = 0) -> HeadModel:
    """Load a head model from a checkpoint directory (``config.json`` + ``model.safetensors``).

    ``kind``: "sequence_classification" or "masked_lm". The directory holds a ``*For...`` checkpoint of that
    kind, or any checkpoint of the architecture (a plain encoder, the other head): the weights it lacks
    outside the encoder (the head, BERT's pooler) are initialised afresh from ``seed`` and named in a
    warning; a weight the encoder needs is an error. ``num_labels`` (classification): default from
    ``config.json`` (``id2label``, ``num_labels``, else 2).
    """
    path = str(path)
    if kind not in HEAD_KINDS:
        raise ValueError(f"kind must be one of {HEAD_KINDS}, got {kind!r}")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"No config.json in {path!r}; is this a Hugging Face checkpoint?")
    hf = {**read_json(cfg_path), **(config_kwargs or {})}
    arch = architecture(hf.get("model_type"), where=cfg_path)
    config = encoder_config(_hf_config(hf, arch, kind, num_labels), compute_dtype, where=cfg_path)
    abstract = nnx.eval_shape(lambda: _construct(arch, kind, config, nnx.Rngs(seed)))
    graphdef, state = nnx.split(abstract)
    abstract_params = nnx.to_pure_dict(state)

    source = weights_path(path) or os.path.join(path, "model.safetensors")
    tensors = checkpoint_tensors(load_safetensors(path), arch)
    params, missing, unused = match_params(tensors, abstract_params, source=source)
    encoder_keys = key_paths(nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: arch.encoder(config, nnx.Rngs(0))))))
    lacking = [k for k in missing if k[len(arch.prefix) + 1:] in encoder_keys]
    if lacking:
        shown = ", ".join(lacking[:5]) + (f" (+{len(lacking) - 5} more)" if len(lacking) > 5 else "")
        raise ValueError(f"{source} is missing {len(lacking)} weight(s) the model needs: {shown}")
    name = config.hf["architectures"][0]
    if missing:
        fresh = _params_of(_construct(arch, kind, config, nnx.Rngs(seed)))
        paths = key_paths(abstract_params)
        for key in missing:
            _set(params, paths[key], np.asarray(_get(fresh, paths[key])))
        logger.warning("Some weights of %s were not initialized from the model checkpoint at %s and are newly "
                       "initialized: %s", name, path, missing)
    if unused:
        logger.info("Some weights of the checkpoint at %s were not used by %s: %s", path, name, sorted(unused))
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return HeadModel(kind, arch, config, graphdef, params, tuple(missing))


def load_sequence_classification(path, **kwargs) -> HeadModel:
    """:func:`load_head_model` for ``*ForSequenceClassification`` (logits ``[B, num_labels]``)."""
    return load_head_model(path, "sequence_classification", **kwargs)


def load_masked_lm(path, **kwargs) -> HeadModel:
    """:func:`load_head_model` for ``*ForMaskedLM`` (logits ``[B, T, vocab_size]``)."""
    return load_head_model(path, "masked_lm", **kwargs)


def _get(tree: dict, path: tuple):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value
