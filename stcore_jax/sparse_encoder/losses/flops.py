"""FlopsLoss: the FLOPS sparsity regulariser of SPLADE (Paria et al. 2020), over the global batch or per device.

``FLOPS(E) = sum_v (mean_i E[i, v]) ** 2`` for sparse embeddings ``E: [N, V]`` (``V`` the vocabulary size):
the squared L2 norm of the mean activation, a smooth proxy for the expected number of multiplications of a
sparse dot product. With a ``threshold`` (FLOPS with L0 masking, arXiv 2504.14839) rows with at most
``threshold`` non-zero entries are zeroed first, so only rows with more active dimensions are penalised; the
mean still divides by every row, as in the reference.

Scope: where the mean is taken.

``"global"`` (default)
    Over the whole batch, across devices and hosts. Under ``jax.jit`` on batch-sharded arrays the mean over
    the batch axis IS the global mean (the compiler inserts one all-reduce of a ``[V]`` vector), so this needs
    no code for the distribution: 1 device and 8 devices give the same value, and the regulariser does not
    change with the number of accelerators.
``"per_device"``
    The reference's behaviour under PyTorch DDP: every rank computes FLOPS on its local rows only, and DDP
    averages the ranks' gradients, i.e. the loss is the mean over ranks of the per-rank FLOPS. Here the batch
    is cut into ``num_shards`` contiguous shards (the data-parallel shards of a batch-sharded array, the
    trainer's ``num_shards``), FLOPS is computed on each and the results are averaged. Since the square of a
    mean is not the mean of squares, this is larger than the global value (Jensen) and grows with
    ``num_shards``: reproduce a multi-GPU reference run's sparsity with it. With ``num_shards=1`` both scopes
    are the same.

Several columns (a SpladeLoss's documents: positives and hard negatives) are regularised together, as the
reference's ``torch.cat(embeddings[1:])``: the mean runs over all their rows (in ``"per_device"``, over each
shard's rows of every column, as each rank concatenates its local columns).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import Loss, check_context, f32, row_mask, sharding_agnostic

SCOPES = ("global", "per_device")


def check_scope(scope: str) -> str:
    if scope not in SCOPES:
        raise ValueError(f"FLOPS scope must be one of {SCOPES}, got {scope!r}: 'global' takes the mean over the "
                         "whole batch across devices, 'per_device' over each data shard (PyTorch DDP's behaviour).")
    return scope


def _columns(embeddings) -> list:
    """One ``[N, V]`` array or a sequence of them -> a list of float32 ``[B, V]`` columns of equal ``B``."""
    cols = [embeddings] if hasattr(embeddings, "ndim") else list(embeddings)
    if not cols:
        raise ValueError("FLOPS needs at least one embedding column.")
    cols = [f32(c) for c in cols]
    for c in cols:
        if c.ndim != 2 or c.shape[0] != cols[0].shape[0]:
            raise ValueError(f"FLOPS expects [batch, vocab] arrays with the same batch size, got shapes "
                             f"{[tuple(x.shape) for x in cols]}.")
    return cols


@sharding_agnostic
def flops(embeddings, *, threshold: float | None = None, scope: str = "global", num_shards: int = 1, mask=None):
    """FLOPS regulariser (sentence-transformers 6.2 ``FlopsLoss.compute_loss_from_embeddings``).

    Args:
      embeddings: ``[B, V]`` or a sequence of ``C`` such arrays regularised together (their rows pooled).
      threshold: keep only rows whose number of non-zero entries is ``> threshold`` (None: every row).
      scope: ``"global"`` (mean over the whole batch) or ``"per_device"`` (mean of the FLOPS of each of
        ``num_shards`` contiguous shards); see the module docstring.
      num_shards: the data-parallel degree (static), used by ``"per_device"`` only; ``B % num_shards == 0``.
      mask: optional ``[B] bool`` of real rows (the same for every column): padded rows are left out of the
        means (a shard with none counts as FLOPS 0).

    Returns:
      float32 scalar.
    """
    check_scope(scope)
    cols = _columns(embeddings)
    batch = cols[0].shape[0]
    valid = row_mask(mask, batch).astype(jnp.float32)
    shards = int(num_shards) if scope == "per_device" else 1
    if batch % shards:
        raise ValueError(f"Batch size {batch} is not divisible by num_shards={shards}.")
    total = jnp.zeros((shards, cols[0].shape[1]), jnp.float32)  # per shard: sum over its rows of every column
    for c in cols:
        keep = valid
        if threshold is not None:
            active = jnp.sum(c != 0, axis=1)
            keep = keep * (active > threshold).astype(jnp.float32)
        total = total + jnp.sum((c * keep[:, None]).reshape(shards, batch // shards, -1), axis=1)
    rows = jnp.sum(valid.reshape(shards, -1), axis=1) * len(cols)  # [S]: rows in each shard's mean
    mean = total / jnp.maximum(rows, 1.0)[:, None]
    return jnp.mean(jnp.sum(mean ** 2, axis=1))


class FlopsLoss(Loss):
    """The FLOPS regulariser. Like the reference, it is not a training loss of its own: SpladeLoss applies it
    to the query and document embeddings (the trainer refuses it alone: ``validate_sparse_loss``).

    ``compute_loss_from_embeddings(embeddings, labels=None, *, mask=None, num_shards=None)``: ``embeddings``
    is one ``[N, V]`` array or a sequence of ``[B, V]`` columns pooled together; see :func:`flops`.
    ``scope`` (keyword-only, a JAX addition): ``"global"`` or ``"per_device"``.
    """

    min_inputs, max_inputs, label = 1, None, "none"
    inputs_doc = "(text_1, ..., text_N)"
    can_be_base_loss = False  # a regulariser, not a base loss SpladeLoss can wrap

    def __init__(self, model=None, threshold: float | None = None, *, scope: str = "global",
                 num_shards: int = 1) -> None:
        super().__init__(model)
        self.threshold = threshold
        self.scope = check_scope(scope)
        self.num_shards = num_shards

    def standalone_error(self) -> ValueError:
        return ValueError("FlopsLoss is not intended to be used directly. Use it as a regularizer within the "
                          "SpladeLoss class, e.g. SpladeLoss(model, SparseMultipleNegativesRankingLoss(model), "
                          "document_regularizer_weight=3e-5, query_regularizer_weight=5e-5).")

    def compute_loss_from_embeddings(self, embeddings: Sequence | jax.Array, labels=None, *, mask=None,
                                     num_shards=None, **context):
        check_context(self.name, context)
        return flops(embeddings, threshold=self.threshold, scope=self.scope,
                     num_shards=num_shards or self.num_shards, mask=mask)

    def get_config_dict(self):
        return {"threshold": self.threshold}
