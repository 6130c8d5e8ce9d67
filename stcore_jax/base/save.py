"""``save_pretrained``: the sentence-transformers directory layout, loadable by releases 2.x through 6.x.

Shared by every family: the modules and ``modules.json`` here; the family adds its own settings to
``config_sentence_transformers.json`` (``model.saved_config()``) and writes its model card
(``model.write_model_card(dir)``).

Everything is validated first, then written into a staging directory beside the target and moved
into place with renames, so a failure never leaves a half-written mix of two models.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from stcore_jax.models.module import write_json
from stcore_jax.models.pooling import Pooling
from stcore_jax.models.router import Router
from stcore_jax.models.static_embedding import StaticEmbedding
from stcore_jax.models.transformer import Transformer

# Oldest release whose format we target (SPEC §1.8): avoids "saved with a newer version" warnings.
TARGET_ST_VERSION = "2.2.2"
MODEL_MARKERS = ("modules.json", "config.json", "config_sentence_transformers.json", "model.safetensors")
TOKENIZER_EXTRAS = ("vocab.txt", "vocab.json", "merges.txt", "special_tokens_map.json", "sentencepiece.bpe.model",
                    "spiece.model", "added_tokens.json")


def _module_dir(idx: int, module) -> str:
    # Input modules at index 0 live in the root, as the reference saves them.
    root = isinstance(module, (Transformer, Router, StaticEmbedding))
    return "" if idx == 0 and root else f"{idx}_{type(module).__name__}"


def _check_target(path: str) -> None:
    if os.path.isfile(path):
        raise FileExistsError(f"save_pretrained: {path!r} is a file; pass a directory path")
    if os.path.isdir(path) and os.listdir(path):
        if not any(os.path.exists(os.path.join(path, m)) for m in MODEL_MARKERS):
            raise FileExistsError(
                f"save_pretrained: {path!r} is a non-empty directory that does not hold a model "
                f"({sorted(os.listdir(path))[:5]}...); choose a new or empty directory, "
                "or a previous model export to replace"
            )


def _versions() -> dict:
    import transformers

    out = {"sentence_transformers": TARGET_ST_VERSION, "transformers": transformers.__version__}
    try:
        import torch

        out["pytorch"] = torch.__version__
    except ImportError:
        out["pytorch"] = "2.0.0"
    return out


def _write(model, staging: str, create_model_card: bool) -> None:
    entries = []
    # LoRA: the adapted encoder is written with W + scale * A @ B folded in, a plain model.
    merged = model.adapted_module_params() if hasattr(model, "adapted_module_params") else {}
    for i, m in enumerate(model.modules):
        sub = _module_dir(i, m)
        if str(i) in merged:
            m.save(os.path.join(staging, sub) if sub else staging, params=merged[str(i)])
        else:
            m.save(os.path.join(staging, sub) if sub else staging)
        entry = {"idx": i, "name": str(i), "path": sub, "type": m.st_type}
        if isinstance(m, Router):
            entry["kwargs"] = ["task"]  # releases 5.x pass encode's task only to modules that list it
        entries.append(entry)
        if isinstance(m, Transformer) and m.source_path:
            target = os.path.join(staging, sub)
            for name in TOKENIZER_EXTRAS:
                src = os.path.join(m.source_path, name)
                if os.path.isfile(src) and not os.path.exists(os.path.join(target, name)):
                    shutil.copy2(src, os.path.join(target, name))
    write_json(os.path.join(staging, "modules.json"), entries)
    # The family's own settings (model_type, prompts, similarity function, ...) and its model card.
    write_json(os.path.join(staging, "config_sentence_transformers.json"),
               {"__version__": _versions(), **model.saved_config()})
    if create_model_card:
        model.write_model_card(staging)


def save_model_dir(model, path, *, create_model_card=True, model_name=None) -> None:
    """Write ``model`` (a :class:`stcore_jax.base.model.BaseModel`) as a sentence-transformers directory."""
    path = os.path.abspath(os.fspath(path))
    # Validate before touching the disk.
    for i, m in enumerate(model.modules):
        if not m.st_type:
            raise ValueError(f"save_pretrained: module {i} ({type(m).__name__}) has no sentence-transformers type")
        if isinstance(m, Pooling):
            m.legacy_config()
        if i > 0 and isinstance(m, (Transformer, StaticEmbedding)):
            raise ValueError(f"save_pretrained: a {type(m).__name__} is only supported as the first module")
        if isinstance(m, Router):
            m.check_export()
    write_atomically(path, lambda staging: _write(model, staging, create_model_card))


def write_atomically(path: str, write) -> None:
    """Run ``write(staging_dir)`` and move the result to ``path`` with renames (replacing a previous model
    export there), so a failure never leaves a half-written mix of two models."""
    path = os.path.abspath(os.fspath(path))
    _check_target(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        write(staging)
        if os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rmdir(old)
            os.rename(path, old)
            os.rename(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
