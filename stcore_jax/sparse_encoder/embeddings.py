"""Sparse embeddings as arrays: keeping the top-k dimensions (``max_active_dims``), converting between dense
arrays, ``scipy.sparse`` and torch sparse tensors, and the reference's ``sparsity``/``intersection``/``decode``
arithmetic.

On device the embeddings are dense ``[N, V]`` (static shapes; FLOPS-style regularisers need the means);
sparse formats are a host-side conversion of each inference batch, so a corpus is never held dense.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

SPARSE_FORMATS = ("scipy", "torch")


def check_max_active_dims(value, where: str = "max_active_dims"):
    """``value`` if None or a positive int, else a ValueError naming ``where``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0):
        raise ValueError(f"{where} must be a positive integer (the dimensions to keep per row) or None, "
                         f"got {value!r}")
    return None if value is None else int(value)


def select_max_active_dims(emb_nv, k: int):
    """Keep the ``k`` largest ``|values|`` of each row, zero the rest: ``[N, V]`` -> ``[N, V]`` (the reference's
    ``util.select_max_active_dims``; jit-able, ``k`` static)."""
    k = min(int(k), emb_nv.shape[-1])
    _, idx = jax.lax.top_k(jnp.abs(emb_nv), k)
    kept = jnp.take_along_axis(emb_nv, idx, axis=-1)
    rows = jnp.arange(emb_nv.shape[0])[:, None]
    return jnp.zeros_like(emb_nv).at[rows, idx].set(kept)


def to_dense(embeddings) -> np.ndarray:
    """A numpy float array from a dense numpy/jax array, a ``scipy.sparse`` matrix/array, a torch tensor (dense
    or sparse COO/CSR), or a list of rows of any of these."""
    if isinstance(embeddings, (list, tuple)):
        if not embeddings:
            return np.zeros((0, 0), np.float32)
        return np.stack([to_dense(e) for e in embeddings])
    if hasattr(embeddings, "tocsr") and hasattr(embeddings, "toarray"):  # scipy.sparse
        return np.asarray(embeddings.toarray())
    if type(embeddings).__module__.startswith("torch"):
        t = embeddings.to_dense() if embeddings.layout != _torch_strided() else embeddings
        return t.detach().cpu().numpy()
    return np.asarray(embeddings)


def _torch_strided():
    import torch

    return torch.strided


def to_csr(dense_nv):
    """Dense ``[N, V]`` (``[V]``: one row) -> ``scipy.sparse.csr_matrix`` ``[N, V]`` float32."""
    import scipy.sparse

    return scipy.sparse.csr_matrix(np.atleast_2d(np.asarray(dense_nv, dtype=np.float32)))


def csr_to_torch(csr):
    """``scipy.sparse`` ``[N, V]`` -> a coalesced torch sparse COO tensor ``[N, V]`` (the reference's ``encode``
    output type)."""
    try:
        import torch
    except ImportError:
        raise ImportError("sparse_format='torch' needs PyTorch; install torch or use sparse_format='scipy'") from None
    coo = csr.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    values = torch.from_numpy(coo.data.astype(np.float32))
    return torch.sparse_coo_tensor(indices, values, size=coo.shape).coalesce()


def sparsity(embeddings) -> dict[str, float]:
    """``{"active_dims": mean non-zeros per row, "sparsity_ratio": 1 - active_dims / V}`` of ``[V]`` or
    ``[N, V]`` embeddings (any format :func:`to_dense` takes); no rows or columns: ``{0.0, 1.0}``."""
    dense = to_dense(embeddings)
    if dense.ndim not in (1, 2):
        raise ValueError(f"sparsity expects [V] or [N, V] embeddings, got shape {dense.shape}")
    dense = np.atleast_2d(dense)
    rows, cols = dense.shape
    if rows == 0 or cols == 0:
        return {"active_dims": 0.0, "sparsity_ratio": 1.0}
    active = float(np.mean(np.count_nonzero(dense, axis=1).astype(np.float32), dtype=np.float32))
    return {"active_dims": active, "sparsity_ratio": 1.0 - active / cols}


def intersection(embeddings_1, embeddings_2) -> np.ndarray:
    """``e1 * e2`` with only the positive products kept (the dimensions both activate): ``e1 [V]`` against
    ``e2 [V]`` or ``[N, V]`` -> the shape of ``e2``, dense numpy."""
    a, b = to_dense(embeddings_1), to_dense(embeddings_2)
    if a.ndim != 1:
        raise ValueError(f"intersection: embeddings_1 must be one embedding [V], got shape {a.shape}")
    if b.ndim not in (1, 2):
        raise ValueError(f"intersection: embeddings_2 must be [V] or [N, V], got shape {b.shape}")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"intersection: vocabulary dimension mismatch: embeddings_1 has {a.shape[-1]}, "
                         f"embeddings_2 has {b.shape[-1]}")
    prod = a * b
    return np.where(prod > 0, prod, 0).astype(prod.dtype)


def top_tokens(row_v: np.ndarray, top_k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, weights) of the non-zero entries of one row by descending weight, at most ``top_k``."""
    ids = np.flatnonzero(row_v)
    weights = row_v[ids]
    order = np.argsort(-weights, kind="stable")[: top_k if top_k is not None else None]
    return ids[order], weights[order]
