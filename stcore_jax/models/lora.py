"""LoRA adapters on the encoder's Linear layers (the PEFT use case of sentence-transformers).

Adapters are their own pytree, mirroring the encoder's parameter tree down to each adapted Linear,
where ``{"kernel": W}`` gets a sibling ``{"lora_A": A [in, r], "lora_B": B [r, out]}``. The adapted
weight is ``W + scale * A @ B`` (PEFT's ``W + scale * B_t @ A_t`` in our [in, out] layout, with
``scale = lora_alpha / r``, or ``/ sqrt(r)`` with rsLoRA). :func:`apply_lora` forms it: pure and
jit-friendly, it runs inside the jitted forward pass, so training and encoding see the same merged
weights that ``save_pretrained`` writes (the export is a plain model; PyTorch loads it without PEFT).

Modules to save (PEFT's ``modules_to_save``, e.g. a CrossEncoder's ``classifier`` with ``task_type="SEQ_CLS"``)
are trained in full, as a copy: the adapter tree holds ``{"modules_to_save": copy of the module's params}`` at
the module's path, and :func:`apply_lora` puts the copy in place of the frozen original (PEFT's
``ModulesToSaveWrapper``: the original stays for ``disable_adapters``, the copy is what trains and merges).

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
SAVED_KEY = "modules_to_save"  # in the adapter tree: the trainable copy of a saved module's params
SEQ_CLS_HEAD_NAMES = ("classifier", "score")  # PEFT's PeftModelForSequenceClassification adds these for SEQ_CLS


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
      modules_to_save: modules trained in full beside the adapters (PEFT's rule: a module whose path ends
        with one of the names, e.g. ``["classifier"]``); they get no adapters.
      task_type: ``"SEQ_CLS"`` adds ``"classifier"`` and ``"score"`` to ``modules_to_save``, as PEFT's
        ``get_peft_model`` (``PeftModelForSequenceClassification``) does, so a CrossEncoder's head trains.
        Other values: accepted, unused (as PEFT's ``inject_adapter_in_model``, which freezes the head).
      inference_mode: accepted for PEFT compatibility, unused.
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
    modules_to_save: Sequence[str] | None = None

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
        if self.modules_to_save is not None:
            names = self.modules_to_save
            if isinstance(names, str) or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"LoraConfig.modules_to_save must be a list of module names, e.g. ['classifier'], "
                                 f"got {names!r}")
            object.__setattr__(self, "modules_to_save", tuple(names))

    @property
    def saved_module_names(self) -> tuple[str, ...]:
        """``modules_to_save``, plus the classification head's names for ``task_type="SEQ_CLS"`` (as PEFT)."""
        names = tuple(self.modules_to_save or ())
        if self.task_type == "SEQ_CLS":
            names += tuple(n for n in SEQ_CLS_HEAD_NAMES if n not in names)
        return names

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


def module_paths(params: dict, prefix: tuple = ()) -> dict[str, tuple]:
    """Every module (inner node) of a param tree: ``{"classifier": ("classifier",), ...}``."""
    out = {}
    for k, v in params.items():
        if isinstance(v, dict):
            path = prefix + (k,)
            out[".".join(str(p) for p in path)] = path
            out.update(module_paths(v, path))
    return out


def select_saved(params: dict, config: LoraConfig) -> dict[str, tuple]:
    """The modules ``config`` trains in full: PEFT's ``_set_trainable`` rule (the module's path ends with a
    name), outermost matches only. An explicit ``modules_to_save`` name that matches nothing is an error; the
    SEQ_CLS defaults may match nothing (a bi-encoder has no head)."""
    modules = module_paths(params)
    names = config.saved_module_names
    matches = {n: p for n, p in modules.items() if any(n.endswith(t) for t in names)}
    missing = [t for t in config.modules_to_save or () if not any(n.endswith(t) for n in matches)]
    if missing:
        raise ValueError(f"LoraConfig.modules_to_save={list(config.modules_to_save)!r}: {missing} match no module "
                         f"of the input module; its top-level modules are {sorted(params)}")
    outer = set(matches.values())
    return {n: p for n, p in matches.items() if not any(p[:i] in outer for i in range(1, len(p)))}


def select_targets(params: dict, target_modules, model_type: str | None, exclude=()) -> dict[str, tuple]:
    """The Linear layers ``target_modules`` names (PEFT matching rules), or a clear error. Linears inside the
    module paths ``exclude`` (the modules to save) are never targets, as in PEFT."""
    exclude = tuple(exclude)
    linears = {n: p for n, p in linear_paths(params).items() if not any(p[:len(e)] == e for e in exclude)}
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


def add_saved_copies(adapters: dict, params: dict, saved: dict[str, tuple]) -> dict:
    """``adapters`` with ``{"modules_to_save": copy}`` at each saved module's path (copies: the trainable
    copy and the frozen original must not share buffers, which a train step may donate)."""
    for path in saved.values():
        _set(adapters, path, {SAVED_KEY: jax.tree_util.tree_map(jnp.copy, _get(params, path))})
    return adapters


def apply_lora(params: dict, adapters: dict, scale: float) -> dict:
    """``params`` with ``kernel <- kernel + scale * lora_A @ lora_B`` wherever ``adapters`` has a pair.

    A saved module's copy (``{"modules_to_save": ...}``) replaces the module's params. Pure (returns a new
    tree; untouched subtrees are shared), so it runs under jit and grad.
    """
    if SAVED_KEY in adapters:
        return adapters[SAVED_KEY]
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
        """Attach fresh LoRA adapters; from now on only they, the modules to save (a copy of each) and the
        modules after the encoder (e.g. Dense) are trained. ``seed`` draws ``A``."""
        if not isinstance(adapter_config, LoraConfig):
            raise TypeError(f"add_adapter expects a stcore_jax LoraConfig, got {type(adapter_config).__name__} "
                            "(PEFT configs are not read; build stcore_jax.LoraConfig(r=..., lora_alpha=..., ...))")
        if self.adapters is not None:
            raise ValueError(f"This model already has an adapter ({self.active_adapters()}); stcore_jax supports one "
                             "at a time: delete_adapter() or merge_and_unload() first")
        module = self.input_module
        if not hasattr(module, "config") or not isinstance(getattr(module, "params", None), dict):
            raise ValueError(f"add_adapter: the input module {type(module).__name__} is not a Transformer encoder")
        saved = select_saved(module.params, adapter_config)
        targets = select_targets(module.params, adapter_config.target_modules, module.config.model_type,
                                 exclude=saved.values())
        adapters = init_adapters(module.params, targets, adapter_config, jax.random.key(seed))
        self.adapters = {"0": add_saved_copies(adapters, module.params, saved)}
        if getattr(module, "peft_task_type", None) == "SEQ_CLS" and not saved:
            logger.warning("add_adapter: the classification head stays frozen (as with PEFT's inject_adapter_in_model);"
                           " pass LoraConfig(task_type='SEQ_CLS') or modules_to_save=['classifier'] to train it")
        self.lora_config = adapter_config
        self._adapter_name = adapter_name
        self._adapters_enabled = True
        self._invalidate()
        trainable, total = self.get_nb_trainable_parameters()
        logger.info("LoRA adapter %r on %d Linear layers (r=%d), modules to save %s: %d trainable parameters of %d "
                    "(%.2f%%)", adapter_name, len(targets), adapter_config.r, sorted(saved), trainable, total,
                    100.0 * trainable / max(total, 1))

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
        """Fold the adapters into the encoder's weights, the trained copies of the modules to save in place
        of the originals, and drop them (PEFT's ``merge_and_unload``)."""
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
