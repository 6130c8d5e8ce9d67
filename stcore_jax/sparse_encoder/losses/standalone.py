"""Which sparse losses may train on their own, and the check the trainer runs before it compiles anything.

In sentence-transformers 6.2 every Sparse* ranking loss (SparseMultipleNegativesRankingLoss, SparseMarginMSELoss,
SparseDistillKLDivLoss, SparseCoSENTLoss, SparseAnglELoss, SparseCosineSimilarityLoss, SparseTripletLoss) raises
``AttributeError("... should not be used alone. Use it with SpladeLoss or CSRLoss.")`` from its ``forward``, i.e.
at the first training step; FlopsLoss and CSRReconstructionLoss raise ``NotImplementedError`` likewise. Without a
wrapper nothing would regularise the embeddings towards sparsity. Only SparseMSELoss (distillation onto teacher
embeddings) trains alone.

Here the same refusal is a ``ValueError`` raised before anything is tokenized or compiled:
:func:`validate_sparse_loss` (the trainer's ``check_losses`` hook) walks the loss and what it wraps; calling such a
loss directly (``loss(embeddings)``, the reference's ``forward``) raises it too. A wrapper reaches the wrapped
loss through ``compute_loss_from_embeddings``, which works as for any loss.
"""

from __future__ import annotations

from stcore_jax.base.loss import WrapperLoss


class NeedsWrapper:
    """Mixin for a loss that must be wrapped by SpladeLoss or CSRLoss (put it first in the bases)."""

    def standalone_error(self) -> ValueError:
        name = type(self).__name__
        return ValueError(f"{name} should not be used alone. Use it with SpladeLoss or CSRLoss, e.g. "
                          f"SpladeLoss(model, {name}(model), document_regularizer_weight=3e-5, "
                          f"query_regularizer_weight=5e-5): the wrapper adds the sparsity regularisers.")

    def __call__(self, *args, **kwargs):
        raise self.standalone_error()


def standalone_error(loss) -> ValueError | None:
    """The error a trainer should raise for ``loss`` used as the training loss itself (None: it may train alone)."""
    make = getattr(loss, "standalone_error", None)
    return make() if callable(make) else None


def validate_sparse_loss(loss) -> None:
    """Raise a clear ``ValueError`` if ``loss`` cannot be a SparseEncoder's training loss: a loss that must be
    wrapped (Sparse* ranking losses, FlopsLoss, CSRReconstructionLoss) given on its own or wrapped by anything but
    SpladeLoss/CSRLoss (e.g. a MatryoshkaLoss, which in the reference calls the wrapped loss's refusing
    ``forward``), or a wrapper whose wrapped loss cannot take what the wrapper gives it. Pure and cheap: call it
    before tokenizing or compiling."""
    err = standalone_error(loss)
    if err is not None:
        raise err
    seen = [loss]
    while isinstance(seen[-1], WrapperLoss) and seen[-1].loss not in seen:
        parent, child = seen[-1], seen[-1].loss
        parent.check_wrapped()
        err = standalone_error(child)
        if err is not None and not getattr(parent, "sparse_wrapper", False):
            raise ValueError(f"{parent.name} wraps {child.name}, but {child.name} must be wrapped directly by "
                             f"SpladeLoss or CSRLoss, which add the sparsity terms ({err})")
        seen.append(child)
