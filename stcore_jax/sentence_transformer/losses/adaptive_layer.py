"""AdaptiveLayerLoss and Matryoshka2dLoss: train every encoder layer to produce usable embeddings.

These need **per-layer embeddings**: the model's output pipeline (pooling, dense, normalize, ...)
applied to the hidden states of every layer, not only the last. The pure function takes them as

``layer_embeddings[l][c]``: ``[B, D]`` embedding of input column ``c`` computed from hidden-state
``l``, for ``l = 0 .. L`` in the order of Hugging Face ``hidden_states`` (``0`` = embedding-layer
output, ``L`` = final layer, the normal model output).

The wrapped loss runs on the final layer (weight ``last_layer_weight``) and on
``n_layers_per_step`` of the prior layers ``0 .. L-1`` (all if ``n_layers_per_step <= 0`` or
``>= L``; else a random subset from ``key``, or explicit ``layer_indices``), each weighted
``layer_weight(l) / n * prior_layers_weight``. With ``kl_temperature > 0`` each chosen layer also
adds ``kl_temperature * kl_div_weight * KL(softmax(final / T) || softmax(layer / T))`` over the
rows of all columns (``batchmean``), the final layer acting as a gradient-free teacher.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from stcore_jax.base.loss import InputKind, Loss, WrapperLoss, row_mask
from stcore_jax.sentence_transformer.losses.matryoshka import MatryoshkaLoss, sample_indices


def check_layer_model(loss_name: str, model) -> None:
    """Raise ``ValueError`` unless ``model``'s input module is a Transformer encoder: per-layer embeddings are the
    pipeline after the encoder applied to each of its hidden states (the reference asserts ``model[0]`` is a
    ``Transformer``). A Router's routes pool inside the route, StaticEmbedding has no layers."""
    from stcore_jax.models.transformer import Transformer

    module = getattr(model, "input_module", None)
    if module is not None and not isinstance(module, Transformer):
        raise ValueError(f"{loss_name} trains the embeddings of every encoder layer, so the model's input module "
                         f"must be a Transformer encoder, but it is {type(module).__name__}, which has no hidden "
                         f"layers to embed from. Use the wrapped loss on its own (or MatryoshkaLoss) for this model.")


def layer_weight(layer_weighting: str | Callable[[int], float], layer_idx: int) -> float:
    if callable(layer_weighting):
        return layer_weighting(layer_idx)
    if layer_weighting == "log":
        return 1.0 / (1.0 + math.log(1 + layer_idx))
    if layer_weighting == "linear":
        return 1.0 / (1 + layer_idx)
    return 1.0


def _kl_to_teacher(teacher_probs, layer_columns, temperature, mask):
    student = jnp.concatenate([jnp.asarray(e, jnp.float32) for e in layer_columns], axis=0) / temperature
    log_q = jax.nn.log_softmax(student, axis=-1)
    per_row = jnp.sum(jax.scipy.special.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_q, axis=-1)
    if mask is None:
        return jnp.mean(per_row)
    valid = jnp.tile(row_mask(mask, layer_columns[0].shape[0]), len(layer_columns))
    return jnp.sum(jnp.where(valid, per_row, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def adaptive_layer_loss(loss_fn: Callable, layer_embeddings: Sequence[Sequence], labels=None, *,
                        n_layers_per_step: int = 1, last_layer_weight: float = 1.0, prior_layers_weight: float = 1.0,
                        kl_div_weight: float = 1.0, kl_temperature: float = 0.3,
                        layer_weighting: str | Callable[[int], float] = "uniform", key=None,
                        layer_indices: Sequence[int] | None = None, inner_key=None, mask=None, **loss_kwargs):
    """AdaptiveLayerLoss (2D Matryoshka Sentence Embeddings, Li et al. 2024; sentence-transformers 6.2).

    Args:
      loss_fn: ``(embeddings: list[[B, D]], labels, **kwargs) -> scalar`` (the wrapped loss).
      layer_embeddings: ``[L + 1][C]`` arrays ``[B, D]``; see the module docstring.
      labels: passed to every ``loss_fn`` call.
      n_layers_per_step, last_layer_weight, prior_layers_weight, kl_div_weight, kl_temperature,
        layer_weighting (``"uniform"``, ``"log"``, ``"linear"`` or ``layer_idx -> weight``): as in
        the reference (defaults 1, 1.0, 1.0, 1.0, 0.3, ``"uniform"``).
      key: ``jax.random`` key choosing the prior layers (when ``n_layers_per_step`` subsamples).
      layer_indices: explicit prior layers instead of ``key``.
      inner_key: when given, each ``loss_fn`` call gets its own ``key=`` split from it (for a
        wrapped loss that samples, e.g. Matryoshka2dLoss's inner MatryoshkaLoss).
      mask: optional ``[B] bool`` of real rows (forwarded to ``loss_fn`` and used in the KL term).
      **loss_kwargs: forwarded to ``loss_fn``.

    Returns:
      float32 scalar.
    """
    num_layers = len(layer_embeddings)
    final = [jnp.asarray(e, jnp.float32) for e in layer_embeddings[-1]]
    n_prior = num_layers - 1
    if layer_indices is not None:
        chosen, dynamic = [int(i) for i in layer_indices], False
    elif 0 < n_layers_per_step < n_prior:
        if key is None:
            raise ValueError(f"AdaptiveLayerLoss(n_layers_per_step={n_layers_per_step}) samples layers: pass key=.")
        chosen, dynamic = sample_indices(key, n_prior, n_layers_per_step), True
    else:
        chosen, dynamic = list(range(n_prior)), False
    count = n_layers_per_step if dynamic else len(chosen)
    call_keys = list(jax.random.split(inner_key, count + 1)) if inner_key is not None else [None] * (count + 1)
    if mask is not None:
        loss_kwargs["mask"] = mask

    def call(columns, k):
        kw = loss_kwargs if k is None else {**loss_kwargs, "key": k}
        return jnp.asarray(loss_fn(list(columns), labels, **kw), jnp.float32)

    loss = call(final, call_keys[0]) * last_layer_weight
    if count == 0:
        return loss
    if kl_temperature > 0:
        teacher = jax.lax.stop_gradient(
            jax.nn.softmax(jnp.concatenate(final, axis=0) / kl_temperature, axis=-1))

    weights = jnp.asarray([layer_weight(layer_weighting, i) for i in range(n_prior)], jnp.float32)
    if dynamic:
        stacked = [jnp.stack([jnp.asarray(layer_embeddings[i][c], jnp.float32) for i in range(n_prior)])
                   for c in range(len(final))]  # per column: [L, B, D]
    for j in range(count):
        if dynamic:
            idx = chosen[j]
            columns = [s[idx] for s in stacked]
            weight = weights[idx]
        else:
            idx = chosen[j]
            columns = layer_embeddings[idx]
            weight = layer_weight(layer_weighting, idx)
        loss = loss + call(columns, call_keys[j + 1]) * weight / count * prior_layers_weight
        if kl_temperature > 0:
            loss = loss + _kl_to_teacher(teacher, columns, kl_temperature, mask) * kl_temperature * kl_div_weight
    return loss


class AdaptiveLayerLoss(WrapperLoss):
    """Wraps another loss; same columns and labels. Declares ``InputKind.LAYER_EMBEDDINGS``: the dispatcher
    hands ``compute_loss_from_embeddings`` **per-layer** embeddings ``[L + 1][C]`` (see the module
    docstring) and, when ``n_layers_per_step`` subsamples (or the wrapped loss samples), a ``key=``.

    As in the reference, the model's input module must be a Transformer encoder (checked here when a model
    is given, and by ``validate_loss`` against the trained model), and the wrapped loss cannot be a GradCache
    loss (the reference warns that it is not compatible; here it is an error)."""

    def __init__(self, model, loss: Loss, n_layers_per_step: int = 1, last_layer_weight: float = 1.0,
                 prior_layers_weight: float = 1.0, kl_div_weight: float = 1.0, kl_temperature: float = 0.3,
                 layer_weighting: str | Callable[[int], float] = "uniform") -> None:
        super().__init__(model, loss)
        if not callable(layer_weighting) and layer_weighting not in ("uniform", "log", "linear"):
            raise ValueError(
                f'layer_weighting must be "uniform", "log", "linear", or a callable, but got {layer_weighting!r}.')
        if model is not None:
            check_layer_model(self.name, model)
        self.n_layers_per_step = n_layers_per_step
        self.last_layer_weight = last_layer_weight
        self.prior_layers_weight = prior_layers_weight
        self.kl_div_weight = kl_div_weight
        self.kl_temperature = kl_temperature
        self.layer_weighting = layer_weighting

    def derive_inputs(self, inner):
        return dataclasses.replace(inner, kind=InputKind.LAYER_EMBEDDINGS,
                                   needs_key=self.n_layers_per_step > 0 or inner.needs_key)

    def check_wrapped(self):
        super().check_wrapped()
        size = self.loss.inputs.mini_batch_size
        if size is not None:
            cached = self.loss
            while isinstance(cached, WrapperLoss):  # name the GradCache loss itself, not a modifier around it
                cached = cached.loss
            raise ValueError(
                f"{self.name} cannot wrap {cached.name}: per-layer losses are not supported with GradCache "
                f"(mini_batch_size={size}), as in sentence-transformers, which warns that they are not compatible. "
                f"Use the uncached loss (e.g. MultipleNegativesRankingLoss for CachedMultipleNegativesRankingLoss) "
                f"with a batch that fits in memory.")

    def get_layer_weight(self, layer_idx: int) -> float:
        return layer_weight(self.layer_weighting, layer_idx)

    def compute_loss_from_embeddings(self, embeddings, labels=None, *, key=None, layer_indices=None, **context):
        """``embeddings``: per-layer lists of per-column ``[B, D]`` arrays, final layer last."""
        layer_key = inner_key = None
        if key is not None:
            layer_key, inner_key = jax.random.split(key)
            if not self.loss.needs_key:
                inner_key = None
        return adaptive_layer_loss(
            self.loss.compute_loss_from_embeddings, embeddings, labels, n_layers_per_step=self.n_layers_per_step,
            last_layer_weight=self.last_layer_weight, prior_layers_weight=self.prior_layers_weight,
            kl_div_weight=self.kl_div_weight, kl_temperature=self.kl_temperature,
            layer_weighting=self.layer_weighting, key=layer_key, layer_indices=layer_indices, inner_key=inner_key,
            **context)

    def get_config_dict(self):
        weighting = self.layer_weighting if isinstance(self.layer_weighting, str) else getattr(
            self.layer_weighting, "__name__", "custom")
        return {"loss": self.loss.name, "n_layers_per_step": self.n_layers_per_step,
                "last_layer_weight": self.last_layer_weight, "prior_layers_weight": self.prior_layers_weight,
                "kl_div_weight": self.kl_div_weight, "kl_temperature": self.kl_temperature,
                "layer_weighting": weighting}


class Matryoshka2dLoss(AdaptiveLayerLoss):
    """``AdaptiveLayerLoss(MatryoshkaLoss(loss, ...))`` (2D Matryoshka, Li et al. 2024): each
    layer's loss is itself a Matryoshka loss over ``n_dims_per_step`` random dimensions. Takes
    per-layer embeddings and a ``key``; the KL term uses the full-dimension embeddings."""

    def __init__(self, model, loss: Loss, matryoshka_dims: Sequence[int],
                 matryoshka_weights: Sequence[float] | None = None, n_layers_per_step: int = 1,
                 n_dims_per_step: int = 1, last_layer_weight: float = 1.0, prior_layers_weight: float = 1.0,
                 kl_div_weight: float = 1.0, kl_temperature: float = 0.3,
                 layer_weighting: str | Callable[[int], float] = "uniform") -> None:
        matryoshka = MatryoshkaLoss(model, loss, matryoshka_dims, matryoshka_weights=matryoshka_weights,
                                    n_dims_per_step=n_dims_per_step)
        super().__init__(model, matryoshka, n_layers_per_step=n_layers_per_step,
                         last_layer_weight=last_layer_weight, prior_layers_weight=prior_layers_weight,
                         kl_div_weight=kl_div_weight, kl_temperature=kl_temperature,
                         layer_weighting=layer_weighting)

    def get_config_dict(self):
        return {**super().get_config_dict(), **self.loss.get_config_dict()}
