"""The CrossEncoder's ``activation_fn`` (applied by ``predict``/``rank`` only) and its saved name.

sentence-transformers stores the activation as the dotted path of a torch module
(``"torch.nn.modules.activation.Sigmoid"``); here each such path maps to the JAX function it computes, so a
saved model keeps its activation both ways. An :class:`Activation` is a callable on a ``[B, C]`` array with
that path as ``.path``.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp

logger = logging.getLogger(__name__)

_ACT, _LIN = "torch.nn.modules.activation.", "torch.nn.modules.linear."
# torch dotted path -> what the module computes on [B, C] scores (torch's Softmax with dim=None on a 2-D input
# takes dim=1, the last axis).
TORCH_ACTIVATIONS = _TORCH = {
    _ACT + "Sigmoid": jax.nn.sigmoid,
    _LIN + "Identity": lambda x: x,
    _ACT + "Tanh": jnp.tanh,
    _ACT + "ReLU": jax.nn.relu,
    _ACT + "GELU": lambda x: jax.nn.gelu(x, approximate=False),
    _ACT + "SiLU": jax.nn.silu,
    _ACT + "Softplus": jax.nn.softplus,
    _ACT + "LogSigmoid": jax.nn.log_sigmoid,
    _ACT + "Softmax": lambda x: jax.nn.softmax(x, axis=-1),
    _ACT + "LogSoftmax": lambda x: jax.nn.log_softmax(x, axis=-1),
}
SIGMOID, IDENTITY = _ACT + "Sigmoid", _LIN + "Identity"


@dataclasses.dataclass(frozen=True)
class Activation:
    """A named activation: ``path`` is the torch module's dotted path written to the saved config."""

    path: str
    fn: Callable = dataclasses.field(compare=False)

    def __call__(self, x):
        return self.fn(x)

    def __repr__(self):
        return f"{self.path.rsplit('.', 1)[-1]}()"


def from_path(path: str, trust_remote_code: bool = False) -> Activation | None:
    """The activation a saved dotted path names; ``None`` (with a warning) for a path that cannot be used."""
    if path in _TORCH:
        return Activation(path, _TORCH[path])
    if not path.startswith("torch.") and trust_remote_code:
        module, _, name = path.rpartition(".")
        return Activation(path, getattr(importlib.import_module(module), name)())
    why = ("has no JAX equivalent in stcore_jax" if path.startswith("torch.") else
           "is not trusted; load the CrossEncoder with trust_remote_code=True to import it")
    logger.warning("Activation function path %r %s; using the default activation function instead", path, why)
    return None


def default(num_labels: int) -> Activation:
    """The reference's default: Sigmoid for one label, else Identity."""
    return from_path(SIGMOID if num_labels == 1 else IDENTITY)


def resolve(fn, trust_remote_code: bool = False) -> Activation | Callable:
    """An explicit ``activation_fn``: an :class:`Activation`, a dotted path, a torch module instance (mapped by
    its class path, e.g. ``torch.nn.Identity()``) or any JAX callable (kept as is; saved by its own name)."""
    if isinstance(fn, Activation):
        return fn
    if isinstance(fn, str):
        out = from_path(fn, trust_remote_code)
        if out is None:
            raise ValueError(f"activation_fn={fn!r} cannot be used (see the warning above)")
        return out
    cls = type(fn)
    path = f"{cls.__module__}.{cls.__qualname__}"
    if path in _TORCH:  # torch.nn.Sigmoid() etc.
        return Activation(path, _TORCH[path])
    if not callable(fn):
        raise TypeError(f"activation_fn must be callable or a dotted path, got {fn!r}")
    return fn


def path_of(fn) -> str:
    """The dotted path to save for ``fn`` (the reference's ``fullname``)."""
    if isinstance(fn, Activation):
        return fn.path
    for path, f in _TORCH.items():
        if f is fn:
            return path
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None) or type(fn).__module__
    logger.warning("activation_fn %r has no torch equivalent; it is saved as %r, which sentence-transformers "
                   "loads only with trust_remote_code=True", fn, f"{module}.{name}")
    return f"{module}.{name}"
