"""Reading a sentence-transformers directory (``modules.json``) or a plain Hugging Face checkpoint."""

from __future__ import annotations

import os

from stcore_jax.models.module import module_class, read_json
from stcore_jax.models.normalize import Normalize
from stcore_jax.models.pooling import Pooling
from stcore_jax.models.router import Router
from stcore_jax.models.static_embedding import StaticEmbedding, is_model2vec_dir
from stcore_jax.models.transformer import Transformer


def load_modules(path: str, *, transformer_kwargs: dict) -> list:
    """Build the pipeline listed in ``modules.json``, or Transformer + mean Pooling for a plain checkpoint."""
    mj = os.path.join(path, "modules.json")
    if not os.path.isfile(mj):
        if is_model2vec_dir(path):  # Model2Vec's own layout; its encoder normalises when config says so
            static = StaticEmbedding.load(path)
            return [static, Normalize()] if read_json(os.path.join(path, "config.json")).get("normalize") else [static]
        t = Transformer(path, **transformer_kwargs)
        return [t, Pooling(t.get_embedding_dimension(), "mean")]
    entries = read_json(mj)
    # Validate every entry before loading any weights.
    classes = []
    for e in entries:
        classes.append(module_class(e.get("type", ""), where=f"{mj}: module {e.get('idx')}"))
    modules = []
    for e, cls in zip(entries, classes):
        mpath = os.path.join(path, e.get("path", ""))
        modules.append(cls.load(mpath, **(transformer_kwargs if cls in (Transformer, Router) else {})))
    return modules


def load_st_config(path: str) -> dict:
    p = os.path.join(path, "config_sentence_transformers.json")
    return read_json(p) if os.path.isfile(p) else {}
