"""Reading a SparseEncoder directory: a plain Hugging Face ``*ForMaskedLM`` checkpoint, or a sentence-transformers
SparseEncoder (``modules.json``) in the v5 layout (``sparse_encoder.models.MLMTransformer`` /
``sparse_encoder.models.SpladePooling``) or the 6.x one (``base.modules.transformer.Transformer`` with
``transformer_task: "fill-mask"`` / ``sparse_encoder.modules.splade_pooling.SpladePooling``).

Not yet: the CSR family (``SparseAutoEncoder``; also what the reference builds on a plain encoder or a
SentenceTransformer directory) and inference-free Routers (``SparseStaticEmbedding``): each is a clear
NotImplementedError naming the module.
"""

from __future__ import annotations

import os

from stcore_jax.models.mlm_transformer import FILL_MASK, MLMTransformer
from stcore_jax.models.module import read_json
from stcore_jax.models.splade_pooling import SpladePooling
from stcore_jax.models.transformer import ST_CONFIG_NAMES

_LATER = ("SparseAutoEncoder", "SparseStaticEmbedding", "Router", "Asym", "Pooling", "Dense", "Normalize")


def is_masked_lm(hf: dict) -> bool:
    return any(str(a).endswith("ForMaskedLM") for a in hf.get("architectures") or [])


def _transformer_task(mpath: str) -> str | None:
    for name in ST_CONFIG_NAMES:
        p = os.path.join(mpath, name)
        if os.path.isfile(p):
            return read_json(p).get("transformer_task")
    return None


def _module_for(entry: dict, mpath: str, where: str):
    """The module class for one ``modules.json`` entry, or a clear error."""
    type_path = str(entry.get("type", ""))
    name = type_path.rsplit(".", 1)[-1]
    if name == "MLMTransformer":
        return MLMTransformer
    if name == "Transformer":
        task = _transformer_task(mpath)
        if task == FILL_MASK:
            return MLMTransformer
        raise NotImplementedError(f"{where}: a Transformer with transformer_task={task!r}; stcore_jax SparseEncoders "
                                  f"support masked-LM (fill-mask) encoders with SpladePooling so far (CSR models, "
                                  f"Transformer + Pooling + SparseAutoEncoder, are not supported yet)")
    if name == "SpladePooling":
        return SpladePooling
    if name in _LATER:
        raise NotImplementedError(f"{where}: {type_path!r} is not supported by stcore_jax SparseEncoders yet "
                                  f"(supported: MLMTransformer / fill-mask Transformer + SpladePooling)")
    raise ValueError(f"{where} has type {type_path!r}, which is no SparseEncoder module stcore_jax knows")


def load_sparse_modules(path: str, saved: dict, *, transformer_kwargs: dict) -> list:
    """The pipeline of the SparseEncoder directory ``path`` (``saved``: its ``config_sentence_transformers.json``).

    ``transformer_kwargs`` (``processor_kwargs``, ``config_kwargs``, ``compute_dtype``, ``seed``) go to the
    input module. Every entry is validated before any weights are read.
    """
    mj = os.path.join(path, "modules.json")
    if not os.path.isfile(mj):
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"SparseEncoder: no modules.json or config.json in {path!r}")
        hf = {**read_json(cfg_path), **(transformer_kwargs.get("config_kwargs") or {})}
        if not is_masked_lm(hf):
            raise NotImplementedError(
                f"{cfg_path}: architectures={hf.get('architectures')}; from a checkpoint without a masked-LM head "
                f"the reference builds a CSR model (Pooling + SparseAutoEncoder), which stcore_jax does not "
                f"support yet. Use a *ForMaskedLM checkpoint (SPLADE)")
        mlm = MLMTransformer.from_pretrained(path, **transformer_kwargs)
        return [mlm, SpladePooling("max", embedding_dimension=mlm.vocab_size)]
    model_type = saved.get("model_type")
    if model_type not in (None, "SparseEncoder"):
        raise NotImplementedError(f"{path} holds a {model_type}; the reference converts it to a CSR SparseEncoder "
                                  f"(+ SparseAutoEncoder), which stcore_jax does not support yet")
    entries = read_json(mj)
    classes = [_module_for(e, os.path.join(path, e.get("path", "")), f"{mj}: module {e.get('idx', i)}")
               for i, e in enumerate(entries)]
    if not classes or classes[0] is not MLMTransformer:
        raise ValueError(f"{mj}: a SparseEncoder's first module must be its (masked-LM) Transformer")
    if MLMTransformer in classes[1:]:
        raise ValueError(f"{mj}: only the first module may be a Transformer")
    return [cls.load(os.path.join(path, e.get("path", "")), **(transformer_kwargs if cls is MLMTransformer else {}))
            for e, cls in zip(entries, classes)]
