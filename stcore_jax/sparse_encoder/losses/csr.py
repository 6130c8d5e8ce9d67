"""CSRLoss and CSRReconstructionLoss: Contrastive Sparse Representation (Wen et al. 2025), sentence-transformers 6.2.

A CSR model is a dense encoder followed by a ``SparseAutoEncoder`` (top-k latents, tied decoder). Its losses need
more than the sparse ``sentence_embedding``: per column, the autoencoder's outputs

``sentence_embedding_backbone``  ``[B, D]`` x, the dense embedding that is encoded;
``decoded_embedding_k``          ``[B, D]`` the reconstruction from the top-k latents;
``decoded_embedding_4k``         ``[B, D]`` the reconstruction from the top-4k latents;
``decoded_embedding_aux``        ``[B, D]`` the auxiliary reconstruction from dead latents, or None;
``decoded_embedding_k_pre_bias`` ``[B, D]`` the top-k reconstruction before the pre-bias is added;
``sentence_embedding``           ``[B, H]`` the sparse embedding the base loss trains.

So they are computed from those output dicts (:meth:`CSRLoss.compute_loss_from_outputs`): a trainer that trains a
CSR model runs the model on every column, keeps these entries (``CSRLoss.needs_outputs``), and calls it.
``compute_loss_from_embeddings`` (sentence embeddings only) cannot compute the reconstruction terms and says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import Loss, WrapperLoss, f32, masked_mean, row_mask
from stcore_jax.sparse_encoder.losses.in_batch import SparseMultipleNegativesRankingLoss

OUTPUT_KEYS = ("sentence_embedding_backbone", "decoded_embedding_k", "decoded_embedding_4k", "decoded_embedding_aux",
               "decoded_embedding_k_pre_bias")


def _mse(a, b, mask=None):
    return masked_mean((f32(a) - f32(b)) ** 2, mask)


def normalized_mean_squared_error(reconstruction, original, mask=None):
    """``MSE(reconstruction, original) / MSE(batch mean of original, original)``; the denominator is 1 when it is 0
    or when every row of ``original`` is the same (the reference's guard). Shapes ``[B, D]``; ``mask``: optional
    ``[B] bool`` of real rows (means and the "every row the same" test over those only); float32 scalar."""
    original = f32(original)
    valid = row_mask(mask, original.shape[0])
    batch_mean = jnp.sum(jnp.where(valid[:, None], original, 0.0), axis=0) / jnp.maximum(jnp.sum(valid), 1)
    normalization = _mse(jnp.broadcast_to(batch_mean[None, :], original.shape), original, mask)
    first = original[jnp.argmax(valid)]  # the first real row
    degenerate = (normalization == 0) | jnp.all(jnp.where(valid[:, None], original == first[None, :], True))
    normalization = jnp.where(degenerate, 1.0, normalization)
    return _mse(reconstruction, original, mask) / normalization


def csr_reconstruction_loss(outputs: Sequence[dict], *, beta: float = 1.0, mask=None) -> dict:
    """The three reconstruction terms, each averaged over columns (sentence-transformers 6.2
    ``CSRReconstructionLoss.compute_loss_from_embeddings``).

    Args:
      outputs: one dict per column with the :data:`OUTPUT_KEYS` entries (``decoded_embedding_aux`` may be None).
      beta: weight of the auxiliary term.
      mask: optional ``[B] bool`` of real rows.

    Returns:
      ``{"reconstruction_loss_k": mean_c MSE(x, x_k), "reconstruction_loss_4k": mean_c MSE(x, x_4k) / 8,
      "reconstruction_loss_aux": beta * mean_c NMSE(x_aux, x - stop_grad(x_k_pre_bias))}``.
    """
    if not outputs:
        raise ValueError("CSR reconstruction needs at least one column's outputs.")
    l_k, l_4k, l_aux = [], [], []
    for out in outputs:
        missing = [k for k in OUTPUT_KEYS if k not in out]
        if missing:
            raise ValueError(f"CSR losses need the SparseAutoEncoder's outputs {list(OUTPUT_KEYS)} of every column; "
                             f"missing {missing}. Is the model a CSR model (a dense encoder + SparseAutoEncoder)?")
        x = f32(out["sentence_embedding_backbone"])
        l_k.append(_mse(x, out["decoded_embedding_k"], mask))
        l_4k.append(_mse(x, out["decoded_embedding_4k"], mask))
        if out["decoded_embedding_aux"] is None:
            l_aux.append(jnp.zeros((), jnp.float32))
        else:
            target = x - jax.lax.stop_gradient(f32(out["decoded_embedding_k_pre_bias"]))
            l_aux.append(normalized_mean_squared_error(out["decoded_embedding_aux"], target, mask))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {"reconstruction_loss_k": mean(l_k), "reconstruction_loss_4k": mean(l_4k) / 8.0,
            "reconstruction_loss_aux": beta * mean(l_aux)}


class CSRReconstructionLoss(Loss):
    """The reconstruction terms alone (``beta=1.0``); used within CSRLoss, not as a training loss (as upstream)."""

    can_be_base_loss = False

    def __init__(self, model=None, beta: float = 1.0) -> None:
        super().__init__(model)
        self.beta = beta

    def standalone_error(self) -> ValueError:
        return ValueError("CSRReconstructionLoss is not intended to be used standalone. Use it within CSRLoss "
                          "instead, e.g. CSRLoss(model, SparseMultipleNegativesRankingLoss(model)).")

    def compute_loss_from_outputs(self, outputs: Sequence[dict], *, mask=None) -> dict:
        return csr_reconstruction_loss(outputs, beta=self.beta, mask=mask)

    def compute_loss_from_embeddings(self, embeddings, labels=None, **context):
        raise ValueError(f"{self.name} needs the SparseAutoEncoder's outputs of each column, not only the "
                         "sentence embeddings: call compute_loss_from_outputs(outputs).")

    def get_config_dict(self):
        return {"beta": self.beta}


class CSRLoss(WrapperLoss):
    """CSRLoss (sentence-transformers 6.2): reconstruction terms (``beta`` weights the auxiliary one) plus
    ``gamma`` times the base loss on the sparse embeddings (default ``SparseMultipleNegativesRankingLoss``).
    Takes the base loss's columns and labels; returns a dict of components."""

    can_be_base_loss = False
    sparse_wrapper = True  # may wrap the Sparse* ranking losses (standalone.py)
    needs_outputs = True  # the trainer must hand it each column's SparseAutoEncoder outputs (module docstring)

    def __init__(self, model, loss: Loss | None = None, beta: float = 0.1, gamma: float = 1.0) -> None:
        super().__init__(model, loss if loss is not None else SparseMultipleNegativesRankingLoss(model))
        if not getattr(self.loss, "can_be_base_loss", True):
            raise ValueError(f"CSRLoss cannot wrap {self.loss.name}: the base loss must be an embedding loss such as "
                             "SparseMultipleNegativesRankingLoss (not FlopsLoss, a CSR loss or a SpladeLoss).")
        self.beta = beta
        self.gamma = gamma
        self.reconstruction_loss = CSRReconstructionLoss(model, beta=beta)

    def compute_loss_from_outputs(self, outputs: Sequence[dict], labels=None, **context) -> dict:
        """Components from each column's output dict (:data:`OUTPUT_KEYS` plus ``sentence_embedding``);
        ``context`` (``mask``, ``num_shards``, ...) goes to the base loss."""
        losses = self.reconstruction_loss.compute_loss_from_outputs(outputs, mask=context.get("mask"))
        base = self.loss.compute_loss_from_embeddings([o["sentence_embedding"] for o in outputs], labels, **context)
        if isinstance(base, dict):
            losses.update({k: v * self.gamma for k, v in base.items()})
        else:
            losses["base_loss"] = base * self.gamma
        return losses

    def compute_loss_from_embeddings(self, embeddings, labels=None, **context):
        raise ValueError(f"{self.name} needs the SparseAutoEncoder's outputs of each column (reconstructions), not "
                         "only the sentence embeddings: call compute_loss_from_outputs(outputs, labels).")

    def get_config_dict(self):
        return {"beta": self.beta, "gamma": self.gamma, "loss": type(self.loss).__name__}
