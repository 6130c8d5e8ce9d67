"""Reading and writing ``model.safetensors`` (single file or sharded with an index)."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def _read_file(path: str) -> dict[str, np.ndarray]:
    out, bf16 = {}, []
    # Plain numpy: going through jax would compile a small program per new tensor shape, so even a
    # file with a bad tensor would compile before its error is raised. numpy has no bfloat16, though.
    with safe_open(path, framework="numpy") as f:
        for k in f.keys():
            try:
                out[k] = f.get_tensor(k)
            except TypeError:  # "data type 'bfloat16' not understood"
                bf16.append(k)
    if bf16:  # framework="flax" reads bfloat16; convert back to numpy (ml_dtypes.bfloat16).
        with safe_open(path, framework="flax") as f:
            for k in bf16:
                out[k] = np.asarray(f.get_tensor(k))
    return out


def weights_path(directory: str) -> str | None:
    """The weights file (or index) in ``directory``, or None."""
    for name in (WEIGHTS_NAME, INDEX_NAME):
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            return p
    return None


def load_safetensors(directory: str) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory; raises FileNotFoundError with what to do if absent."""
    path = weights_path(directory)
    if path is None:
        present = sorted(os.listdir(directory))
        hint = (
            " It has pytorch_model.bin: convert it once with transformers "
            "(AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True))."
            if "pytorch_model.bin" in present
            else ""
        )
        raise FileNotFoundError(f"No {WEIGHTS_NAME} or {INDEX_NAME} in {directory!r}.{hint} Files there: {present}")
    if path.endswith(INDEX_NAME):
        with open(path) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(_read_file(os.path.join(directory, shard)))
        return tensors
    return _read_file(path)


def save_safetensors(tensors: dict[str, np.ndarray], path: str) -> None:
    """Write with ``{"format": "pt"}`` metadata (older transformers refuse files without it)."""
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, path, metadata={"format": "pt"})
