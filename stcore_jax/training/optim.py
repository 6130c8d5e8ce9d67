"""Learning-rate schedules (Hugging Face formulas) and the optax optimizer built from the arguments."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import optax

# Parameters that get weight decay: Linear kernels, embedding tables and LoRA adapter matrices.
# Biases and LayerNorm parameters (leaf "scale"/"bias") are excluded, as Hugging Face's Trainer does.
DECAYED_LEAVES = ("kernel", "embedding", "lora_A", "lora_B")


def warmup_steps_for(args, total_steps: int) -> int:
    """``warmup_steps`` (int steps, or a float < 1 as a ratio) else ``warmup_ratio`` of the total."""
    if args.warmup_steps and args.warmup_steps >= 1:
        return int(args.warmup_steps)
    ratio = args.warmup_steps if 0 < args.warmup_steps < 1 else args.warmup_ratio
    return int(math.ceil(ratio * total_steps))


def lr_multiplier(kind: str, total: int, warmup: int, kwargs=None):
    """Step -> multiplier of the peak lr, as ``transformers.get_scheduler`` (evaluated at optimizer step)."""
    kwargs = dict(kwargs or {})
    total, warmup = max(int(total), 1), int(warmup)

    def warm(step):
        return step / jnp.maximum(1.0, warmup)

    def progress(step):
        return (step - warmup) / jnp.maximum(1.0, total - warmup)

    def fn(count):
        step = jnp.asarray(count, jnp.float32)
        if kind == "constant":
            return jnp.ones_like(step)
        if kind == "constant_with_warmup":
            return jnp.where(step < warmup, warm(step), 1.0)
        if kind == "linear":
            after = jnp.maximum(0.0, (total - step) / jnp.maximum(1.0, total - warmup))
        elif kind == "cosine":
            cycles = kwargs.get("num_cycles", 0.5)
            after = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(math.pi * cycles * 2.0 * progress(step))))
        elif kind == "cosine_with_restarts":
            cycles = kwargs.get("num_cycles", 1)
            p = progress(step)
            after = jnp.where(p >= 1.0, 0.0, jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(math.pi * ((cycles * p) % 1.0)))))
        elif kind == "polynomial":
            lr_end, power, lr_init = kwargs.get("lr_end", 1e-7), kwargs.get("power", 1.0), kwargs["lr_init"]
            decay = (lr_init - lr_end) * (1 - progress(step)) ** power + lr_end
            after = jnp.where(step > total, lr_end / lr_init, decay / lr_init)
        else:
            raise ValueError(f"Unknown lr_scheduler_type {kind!r}")
        return jnp.where(step < warmup, warm(step), after)

    return fn


def make_schedule(args, total_steps: int, lr: float | None = None):
    lr = args.learning_rate if lr is None else lr
    kw = dict(args.lr_scheduler_kwargs or {})
    if args.lr_scheduler_type == "polynomial":
        kw.setdefault("lr_init", lr)
    mult = lr_multiplier(args.lr_scheduler_type, total_steps, warmup_steps_for(args, total_steps), kw)
    return lambda count: lr * mult(count)


def param_names(tree) -> dict:
    """Pytree of dotted export names ``"{module}.{hf key}"``
    (e.g. ``0.encoder.layer.11.attention.self.query.weight``)."""
    from stcore_jax.io.hf_keys import LEAF_TO_HF

    def name(path, _):
        keys = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
        if keys and keys[-1] in LEAF_TO_HF:
            keys[-1] = LEAF_TO_HF[keys[-1]][0]
        return ".".join(keys)

    return jax.tree_util.tree_map_with_path(name, tree)


def decay_mask(tree):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: str(getattr(path[-1], "key", "")) in DECAYED_LEAVES, tree)


def _base_optimizer(args, schedule):
    if args.optim == "sgd":
        return optax.sgd(schedule)
    if args.optim == "adafactor":
        return optax.adafactor(schedule)
    return optax.adamw(schedule, b1=args.adam_beta1, b2=args.adam_beta2, eps=args.adam_epsilon,
                       weight_decay=args.weight_decay, mask=decay_mask)


def clip_grad_norm(max_norm: float, subtree: str | None = None) -> optax.GradientTransformation:
    """Scale all gradients by ``min(1, max_norm / (global_norm + 1e-6))``: the rule of
    ``torch.nn.utils.clip_grad_norm_``, which the Hugging Face Trainer applies.

    ``subtree``: clip only ``updates[subtree]`` (norm and scaling), passing the rest through. The trainer clips
    ``"model"``: the Hugging Face Trainer clips ``model.parameters()``, so a loss's own parameters (SoftmaxLoss's
    classifier) are neither counted in the norm nor clipped.

    One scalar coefficient times each gradient, where ``optax.clip_by_global_norm`` divides every element by
    the norm: XLA then fuses the cheap multiply into each of Adam's moment updates instead of writing a
    scaled copy of the gradients first (on CPU that copy cost about as much as the Adam update itself).
    """

    def clip(tree):
        coef = jnp.minimum(max_norm / (optax.tree.norm(tree) + 1e-6), 1.0)
        return jax.tree_util.tree_map(lambda g: g * coef.astype(g.dtype), tree)

    def update(updates, state, params=None):
        del params
        if subtree is None:
            return clip(updates), state
        return {**updates, subtree: clip(updates[subtree])}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _no_match_error(pattern, names: list[list[str]]) -> ValueError:
    """The error for a ``learning_rate_mapping`` pattern that matches nothing: it lists the parameter paths
    (each with its other names), up to the leaf's parent module, so the user can write a pattern that does."""
    modules = {}
    for forms in names:
        modules.setdefault(" | ".join(f.rsplit(".", 1)[0] for f in forms), None)
    shown = list(modules)[:40]
    more = f" ... and {len(modules) - len(shown)} more" if len(modules) > len(shown) else ""
    return ValueError(f"learning_rate_mapping pattern {pattern!r} matches no parameter. Patterns are regular "
                      f"expressions searched in each parameter's path; the parameters live under these paths "
                      f"(alternative names separated by ' | '), each followed by a leaf such as '.weight' or "
                      f"'.bias':\n  " + "\n  ".join(shown) + more)


def make_optimizer(args, trainable, total_steps: int, aliases=None):
    """Clip by global norm, then AdamW with the schedule; ``learning_rate_mapping`` regexes give
    matching parameters their own peak lr (``optax.multi_transform``). Returns ``(tx, schedule)``.

    A pattern is searched in each parameter's export path (``param_names``) and in its other names,
    ``aliases(path) -> [str]`` (e.g. the reference's torch module path, or a path with module class names); a
    pattern that matches no parameter raises, naming the available paths."""
    schedule = make_schedule(args, total_steps)
    clip = [clip_grad_norm(args.max_grad_norm, "model")] if args.max_grad_norm and args.max_grad_norm > 0 else []
    mapping = args.learning_rate_mapping or {}
    if not mapping:
        return optax.chain(*clip, _base_optimizer(args, schedule)), schedule
    names = jax.tree_util.tree_map(lambda n: [n, *(aliases(n) if aliases else [])], param_names(trainable),
                                   is_leaf=lambda x: isinstance(x, str))
    flat_names = jax.tree_util.tree_leaves(names, is_leaf=lambda x: isinstance(x, list))
    for pattern in mapping:
        if not any(re.search(pattern, f) for forms in flat_names for f in forms):
            raise _no_match_error(pattern, flat_names)

    def label(forms):
        return next((p for p in mapping if any(re.search(p, f) for f in forms)), "__default__")

    labels = jax.tree_util.tree_map(label, names, is_leaf=lambda x: isinstance(x, list))
    transforms = {"__default__": _base_optimizer(args, schedule)}
    for pattern, lr in mapping.items():
        transforms[pattern] = _base_optimizer(args, make_schedule(args, total_steps, float(lr)))
    return optax.chain(*clip, optax.multi_transform(transforms, labels)), schedule


def freeze_params(tx, trainable, frozen_model_keys):
    """Wrap ``tx`` so that ``trainable["model"][k]`` for ``k`` in ``frozen_model_keys`` (the encoder's
    base weights under LoRA) gets no optimizer state and a zero update; the rest goes through ``tx``
    (whose gradient clipping then sees only the trained leaves). A key may also be a path, a tuple of keys
    into ``trainable["model"]`` (e.g. ``("0", "query_0_SparseStaticEmbedding")``, a frozen module inside a
    Router). No frozen keys: ``tx`` unchanged."""
    if not frozen_model_keys:
        return tx
    frozen = [k if isinstance(k, tuple) else (k,) for k in frozen_model_keys]

    def label(path, _):
        keys = tuple(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
        if keys[:1] != ("model",):
            return "train"
        return "frozen" if any(keys[1:1 + len(f)] == f for f in frozen) else "train"

    labels = jax.tree_util.tree_map_with_path(label, trainable)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
