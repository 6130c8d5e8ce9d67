"""Parameter paths <-> Hugging Face PyTorch weight keys, in both directions.

Our encoders name their submodules exactly like the Hugging Face PyTorch modules, so a parameter
path such as ``('encoder', 'layer', 3, 'attention', 'self', 'query', 'kernel')`` is the weight key
``encoder.layer.3.attention.self.query.weight`` after one leaf rename. This table is the only
architecture-independent knowledge; each encoder's attribute names are its own key table.
"""

from __future__ import annotations

import numpy as np

# our leaf name -> (HF leaf name, transpose?) ; Linear kernels are [in, out] here, [out, in] in torch.
LEAF_TO_HF = {
    "kernel": ("weight", True),
    "scale": ("weight", False),
    "embedding": ("weight", False),
    "bias": ("bias", False),
}
# Very old checkpoints (TF-converted BERT) name LayerNorm parameters gamma/beta.
LEGACY_LEAVES = {"gamma": "weight", "beta": "bias"}
# Buffers that appear in some state dicts but are not parameters.
IGNORED_SUFFIXES = ("position_ids", "token_type_ids", "attn.bias", "masked_bias")


def _flatten(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def path_to_key(path: tuple) -> tuple[str, bool]:
    """``(... , 'query', 'kernel')`` -> (``'....query.weight'``, transpose)."""
    leaf, transpose = LEAF_TO_HF[path[-1]]
    return ".".join(str(p) for p in path[:-1]) + "." + leaf, transpose


def key_paths(tree: dict) -> dict[str, tuple]:
    """HF key -> parameter path, for every leaf of a (pure dict) param tree."""
    return {path_to_key(path)[0]: path for path, _ in _flatten(tree)}


def params_to_hf(params: dict) -> dict[str, np.ndarray]:
    """Nested param dict -> ``{hf_key: array}`` with torch layouts (Linear weights [out, in])."""
    out = {}
    for path, value in _flatten(params):
        key, transpose = path_to_key(path)
        arr = np.asarray(value)
        out[key] = np.ascontiguousarray(arr.T if transpose else arr)
    return out


def _strip_prefix(tensors: dict, expected_keys: list[str]) -> dict:
    """Drop a base-model prefix such as ``bert.`` (checkpoints saved from ``BertForMaskedLM`` etc.)."""
    if not expected_keys or expected_keys[0] in tensors:
        return tensors
    probe = expected_keys[0]
    for k in tensors:
        if k.endswith("." + probe):
            prefix = k[: -len(probe)]
            return {key[len(prefix):] if key.startswith(prefix) else key: v for key, v in tensors.items()}
    return tensors


def _normalise_legacy(tensors: dict) -> dict:
    out = {}
    for k, v in tensors.items():
        head, _, leaf = k.rpartition(".")
        out[f"{head}.{LEGACY_LEAVES[leaf]}" if leaf in LEGACY_LEAVES else k] = v
    return out


def hf_to_params(tensors: dict, abstract: dict, *, source: str = "model.safetensors") -> tuple[dict, dict]:
    """Fill an abstract param tree (leaves with ``.shape``) from HF tensors.

    Returns ``(params, extra)``: params as float32 numpy arrays in our layout, and ``extra``, the
    checkpoint tensors we do not use (e.g. ``pooler.dense.*``), kept so the exporter writes them back.
    Raises ``ValueError`` naming the key for a missing weight or a shape mismatch (with both shapes).
    """
    keys = [path_to_key(p)[0] for p, _ in _flatten(abstract)]
    tensors = _strip_prefix(_normalise_legacy(tensors), keys)
    missing = [k for k in keys if k not in tensors]
    if missing:
        shown = ", ".join(missing[:5]) + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ValueError(f"{source} is missing {len(missing)} weight(s) the model needs: {shown}")
    params, _, extra = match_params(tensors, abstract, source=source)
    return params, extra


def match_params(tensors: dict, abstract: dict, *, source: str = "model.safetensors") -> tuple[dict, list, dict]:
    """Like :func:`hf_to_params` (legacy ``gamma``/``beta`` names read, shapes checked), but keys are taken as
    they are (no prefix stripping) and absent weights are reported instead of raised.

    Returns ``(params, missing, extra)``: the tree of the weights found (float32 numpy), the HF keys of
    the absent ones, and the checkpoint tensors not used (buffers such as ``position_ids`` left out).
    """
    tensors = _normalise_legacy(tensors)
    flat, missing, used = {}, [], set()
    for path, leaf in _flatten(abstract):
        key, transpose = path_to_key(path)
        if key not in tensors:
            missing.append(key)
            continue
        used.add(key)
        arr = np.asarray(tensors[key])
        arr = arr.T if transpose else arr
        if tuple(arr.shape) != tuple(leaf.shape):
            want = tuple(leaf.shape)[::-1] if transpose else tuple(leaf.shape)
            got = tuple(arr.shape)[::-1] if transpose else tuple(arr.shape)
            raise ValueError(
                f"{source}: weight {key!r} has shape {got} but the model config expects {want}. "
                "Check that config.json matches the weights."
            )
        flat[path] = np.ascontiguousarray(arr.astype(np.float32))
    extra = {k: np.asarray(v) for k, v in tensors.items() if k not in used and not k.endswith(IGNORED_SUFFIXES)}
    return _unflatten(flat), missing, extra


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree
