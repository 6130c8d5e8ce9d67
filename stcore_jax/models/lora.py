"""LoRA adapters on the encoder's Linear layers (the PEFT use case of sentence-transformers).

Adapters are their own pytree, mirroring the encoder's parameter tree down to each adapted Linear,
where ``{"kernel": W}`` gets a sibling ``{"lora_A": A [in, r], "lora_B": B [r, out]}``. The adapted
weight is ``W + scale * A @ B`` (PEFT's ``W + scale * B_t @ A_t`` in our [in, out] layout, with
``scale = lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA). :func:`apply_lora` forms it: pure and
jit-friendly, it runs inside the jitted forward pass, so training and encoding see the same merged
weights that ``save_pretrained`` writes (the export is a plain model; PyTorch loads it without PEFT).

On the model, ``model.params`` gains a ``"lora"`` entry (``{"0": adapters}`` for the input module)
while adapters are attached and enabled; :meth:`SentenceTransformer.forward` folds it in and stops
gradients into the base weights, and the trainer gives the frozen base no optimizer state and no
update (``training/optim.py: freeze_params``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax.models.registry import BY_MODEL_TYPE

logger = logging.getLogger(__name__)

LORA_KEY = "lora"  # the adapters' entry in SentenceTransformer.params


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """PEFT ``LoraConfig`` names, for the subset stcore_jax implements.

    Args:
      r: adapter rank.
      lora_alpha: scale numerator: ``scale = lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``).
      target_modules: which Linear layers get adapters, by their Hugging Face module path inside the
        encoder (e.g. ``encoder.layer.3.attention.self.query``). As in PEFT, a string is a regex that
        must match the whole path, and a list matches a path equal to or ending in ``.<name>``.
        None: the architecture's attention query/value projections (its record's ``lora_targets``,
        ``models/registry.py``; ModernBERT fuses q, k and v into one Linear, which is then the target).
      lora_dropout: must be 0 (adapters are merged into the weight, so there is no separate branch
        to drop out).
      bias: must be ``"none"`` (biases stay frozen).
      init_lora_weights: True: A as PEFT (Kaiming-uniform, bound ``1/sqrt(in)``), B = 0, so the
        adapted model starts as the base model. False: B is Kaiming-uniform too (bound ``1/sqrt(r)``,
        PEFT's untouched ``nn.Linear`` init), for tests.
      task_type, inference_mode: accepted for PEFT compatibility, unused.
    """

    r: int = 8
    lora_alpha: float = 8.0
    target_modules: str | Sequence[str] | None = None
    lora_dropout: float = 0.0
    bias: str = "none"
    use_rslora: bool = False
    init_lora_weights: bool = True
    task_type: str | None = None
    inference_mode: bool = False

    def __post_init__(self):
        if not isinstance(self.r, int) or self.r < 1:
            raise ValueError(f"LoraConfig.r must be a positive int, got {self.r!r}")
        if self.lora_dropout:
            raise ValueError(f"LoraConfig.lora_dropout={self.lora_dropout} is not supported: stcore_jax merges "
                             "adapters into the weights (W + scale*A@B), so there is no adapter branch to drop out. "
                             "Use 0.0.")
        if self.bias != "none":
            raise ValueError(f"LoraConfig.bias={self.bias!r} is not supported; only 'none' (biases stay frozen)")
        if not isinstance(self.init_lora_weights, bool):
            raise ValueError(f"LoraConfig.init_lora_weights={self.init_lora_weights!r}: only True/False are supported")

    @property
    def scale(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def linear_paths(params: dict, prefix: tuple = ()) -> dict[str, tuple]:
    """Every Linear in a param tree: ``{"encoder.layer.0.attention.self.query": path tuple}``.

    A Linear is a node with a 2-D ``kernel`` (embedding tables are ``embedding``, norms ``scale``).
    """
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(linear_paths(v, prefix + (k,)))
        elif k == "kernel" and np.ndim(v) == 2:
            out[".".join(str(p) for p in prefix)] = prefix
    return out


def select_targets(params: dict, target_modules, model_type: str | None) -> dict[str, tuple]:
    """The Linear layers ``target_modules`` names (PEFT matching rules), or a clear error."""
    linears = linear_paths(params)
    if target_modules is None:
        if model_type not in BY_MODEL_TYPE:
            raise ValueError(f"LoraConfig.target_modules is None and there is no default for "
                             f"model_type={model_type!r}; name the Linear layers, "
                             f"e.g. target_modules={sorted(linears)[:2]}")
        target_modules = list(BY_MODEL_TYPE[model_type].lora_targets)
    if isinstance(target_modules, str):
        hits = {n: p for n, p in linears.items() if re.fullmatch(target_modules, n)}
    else:
        names = list(target_modules)
        hits = {n: p for n, p in linears.items() if any(n == t or n.endswith("." + t) for t in names)}
    if not hits:
        raise ValueError(f"LoraConfig.target_modules={target_modules!r} matches no Linear layer of the encoder; "
                         f"its Linear layers are named like {sorted(linears)[:4]}")
    return hits


def _set(tree: dict, path: tuple, value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _get(tree: dict, path: tuple):
    for p in path:
        tree = tree[p]
    return tree


def init_adapters(params: dict, targets: dict[str, tuple], config: LoraConfig, key) -> dict:
    """Adapters for ``targets``: ``A`` [in, r] ~ U(+-1/sqrt(in)) (PEFT's kaiming_uniform(a=sqrt(5)) on
    its [r, in] ``lora_A``), ``B`` [r, out] zeros (or U(+-1/sqrt(r)) with ``init_lora_weights=False``)."""
    adapters: dict = {}
    for i, (_, path) in enumerate(sorted(targets.items())):
        din, dout = _get(params, path)["kernel"].shape
        ka, kb = jax.random.split(jax.random.fold_in(key, i))
        a = jax.random.uniform(ka, (din, config.r), jnp.float32, -1.0, 1.0) / math.sqrt(din)
        if config.init_lora_weights:
            b = jnp.zeros((config.r, dout), jnp.float32)
        else:
            b = jax.random.uniform(kb, (config.r, dout), jnp.float32, -1.0, 1.0) / math.sqrt(config.r)
        _set(adapters, path, {"lora_A": a, "lora_B": b})
    return adapters


def apply_lora(params: dict, adapters: dict, scale: float) -> dict:
    """``params`` with ``kernel <- kernel + scale * lora_A @ lora_B`` wherever ``adapters`` has a pair.

    Pure (returns a new tree; untouched subtrees are shared), so it runs under jit and grad.
    """
    if "lora_A" in adapters:
        w = params["kernel"]
        delta = jnp.matmul(adapters["lora_A"], adapters["lora_B"], precision=jax.lax.Precision.HIGHEST)
        return {**params, "kernel": w + (scale * delta).astype(w.dtype)}
    out = dict(params)
    for k, sub in adapters.items():
        out[k] = apply_lora(params[k], sub, scale)
    return out


def count(tree) -> int:
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(tree)))


class LoraAdapterMixin:
    """The adapter API of :class:`stcore_jax.SentenceTransformer` (names after sentence-transformers'
    ``PeftAdapterMixin``). One adapter at a time, on the input module (the Transformer)."""

    adapters: dict | None = None  # {"0": adapter tree} while attached
    lora_config: LoraConfig | None = None
    _adapters_enabled: bool = True

    # -- attach / detach ----------------------------------------------------------------------
    def add_adapter(self, adapter_config: LoraConfig, adapter_name: str = "default", seed: int = 0) -> None:
        """Attach fresh LoRA adapters; from now on only they (and the modules after the encoder,
        e.g. Dense) are trained. ``seed`` draws ``A``."""
        if not isinstance(adapter_config, LoraConfig):
            raise TypeError(f"add_adapter expects a stcore_jax LoraConfig, got {type(adapter_config).__name__} "
                            "(PEFT configs are not read; build stcore_jax.LoraConfig(r=..., lora_alpha=..., ...))")
        if self.adapters is not None:
            raise ValueError(f"This model already has an adapter ({self.active_adapters()}); stcore_jax supports one "
                             "at a time: delete_adapter() or merge_and_unload() first")
        module = self.input_module
        if not hasattr(module, "config") or not isinstance(getattr(module, "params", None), dict):
            raise ValueError(f"add_adapter: the input module {type(module).__name__} is not a Transformer encoder")
        targets = select_targets(module.params, adapter_config.target_modules, module.config.model_type)
        self.adapters = {"0": init_adapters(module.params, targets, adapter_config, jax.random.key(seed))}
        self.lora_config = adapter_config
        self._adapter_name = adapter_name
        self._adapters_enabled = True
        self._invalidate()
        trainable, total = self.get_nb_trainable_parameters()
        logger.info("LoRA adapter %r on %d Linear layers (r=%d): %d trainable parameters of %d (%.2f%%)",
                    adapter_name, len(targets), adapter_config.r, trainable, total, 100.0 * trainable / max(total, 1))

    def active_adapters(self) -> list[str]:
        return [self._adapter_name] if self.adapters is not None and self._adapters_enabled else []

    def disable_adapters(self) -> None:
        """Use (and export) the base model; adapters are kept."""
        self._require_adapter("disable_adapters")
        self._adapters_enabled = False
        self._invalidate()

    def enable_adapters(self) -> None:
        self._require_adapter("enable_adapters")
        self._adapters_enabled = True
        self._invalidate()

    def delete_adapter(self, adapter_name: str = "default") -> None:
        self._require_adapter("delete_adapter")
        if adapter_name != self._adapter_name:
            raise ValueError(f"No adapter named {adapter_name!r}; the model has {self._adapter_name!r}")
        self.adapters, self.lora_config = None, None
        self._invalidate()

    def merge_and_unload(self):
        """Fold the adapters into the encoder's weights and drop them (PEFT's ``merge_and_unload``)."""
        self._require_adapter("merge_and_unload")
        merged = self.adapted_module_params()
        for k, p in merged.items():
            self.modules[int(k)].params = p
        self.adapters, self.lora_config = None, None
        self._invalidate()
        return self

    def _require_adapter(self, what):
        if self.adapters is None:
            raise ValueError(f"{what}: this model has no adapter; add one with model.add_adapter(LoraConfig(...))")

    # -- parameters ---------------------------------------------------------------------------
    def frozen_param_keys(self) -> frozenset:
        """Entries of ``params`` that training must leave alone: the adapted modules' base weights."""
        if self.adapters is None or not self._adapters_enabled:
            return frozenset()
        return frozenset(self.adapters)

    def num_trainable_parameters(self) -> int:
        return self.get_nb_trainable_parameters()[0]

    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, all)`` parameter counts (PEFT's name); all = base + adapters."""
        params, frozen = self.params, self.frozen_param_keys()
        trainable = count({k: v for k, v in params.items() if k not in frozen})
        return trainable, count(params)

    def with_merged_adapters(self, params: dict) -> dict:
        """``params`` without its ``"lora"`` entry, the adapted modules' weights replaced by
        ``W + scale * A @ B`` with gradients stopped at ``W`` (the base is frozen). No entry: unchanged."""
        if LORA_KEY not in params:
            return params
        out = {k: v for k, v in params.items() if k != LORA_KEY}
        scale = self.lora_config.scale
        for k, adapters in params[LORA_KEY].items():
            out[k] = apply_lora(jax.lax.stop_gradient(out[k]), adapters, scale)
        return out

    def adapted_module_params(self) -> dict:
        """``{module index: merged params}`` for the modules that carry enabled adapters (the export)."""
        if not self.frozen_param_keys():
            return {}
        merged = self.with_merged_adapters(self.params)
        return {k: merged[k] for k in self.adapters}
