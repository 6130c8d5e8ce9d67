"""Reading a sentence-transformers directory (``modules.json``) or a plain Hugging Face checkpoint."""

from __future__ import annotations

import os

from stcore_jax.models.dense import Dense
from stcore_jax.models.module import read_json
from stcore_jax.models.normalize import Normalize
from stcore_jax.models.pooling import Pooling
from stcore_jax.models.router import Router
from stcore_jax.models.static_embedding import StaticEmbedding, is_model2vec_dir
from stcore_jax.models.transformer import Transformer

# Class name (the last component of the type path, legacy or 6.x) -> our module class.
MODULE_TYPES = {"Transformer": Transformer, "Pooling": Pooling, "Dense": Dense, "Normalize": Normalize,
                "Router": Router, "Asym": Router, "StaticEmbedding": StaticEmbedding}


def module_class(type_path: str, where: str):
    """Our class for a ``modules.json`` / ``router_config.json`` type path; a clear error if unsupported."""
    name = str(type_path or "").rsplit(".", 1)[-1]
    if name not in MODULE_TYPES:
        raise ValueError(f"{where} has type {type_path!r}, which stcore_jax does not support; "
                         f"supported: {sorted(MODULE_TYPES)}")
    return MODULE_TYPES[name]


def resolve_model_path(name_or_path: str, *, cache_folder=None, revision=None, token=None, local_files_only=False) -> str:
    """A local directory for ``name_or_path``: the path itself, or a hub snapshot when online.

    Raises FileNotFoundError for a missing local path and OSError, saying what to do, when a hub id
    cannot be fetched (offline, or not found).
    """
    path = os.path.expanduser(str(name_or_path))
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"{path!r} is a file; pass the model directory that contains it")
    # Hub ids look like "name" or "org/name"; anything else is a local path that does not exist.
    if path.startswith((".", "/", "~")) or path.count("/") > 1 or (os.sep != "/" and os.sep in path):
        raise FileNotFoundError(f"Model path {path!r} does not exist (no such directory)")
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(
            repo_id=path, revision=revision, cache_dir=cache_folder, token=token, local_files_only=offline,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "**/*.json", "**/*.safetensors", "**/*.txt", "README.md"],
        )
    except Exception as e:  # noqa: BLE001 - re-raised with instructions
        how = (
            "We are offline (HF_HUB_OFFLINE=1 or local_files_only=True) and it is not in the local cache: "
            "download it where you have network (`huggingface-cli download " + path + "`) or pass a local directory."
            if offline
            else "Check the id and your network, or pass a local directory."
        )
        raise OSError(f"{path!r} is not a local directory and could not be fetched from the Hugging Face Hub. {how} ({type(e).__name__}: {e})") from e


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
