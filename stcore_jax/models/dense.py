"""Dense: ``act(x @ W + b)`` on the sentence embedding (sentence-transformers ``Dense``)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax.io.hf_keys import hf_to_params, params_to_hf
from stcore_jax.io.safetensors_io import load_safetensors, save_safetensors
from stcore_jax.models.module import Module, ensure_dir, read_json, write_json

# torch activation class path -> function; the path is what sentence-transformers stores.
ACTIVATIONS = {
    "torch.nn.modules.activation.Tanh": jnp.tanh,
    "torch.nn.modules.linear.Identity": lambda x: x,
    "torch.nn.modules.activation.ReLU": jax.nn.relu,
    "torch.nn.modules.activation.Sigmoid": jax.nn.sigmoid,
    "torch.nn.modules.activation.GELU": lambda x: jax.nn.gelu(x, approximate=False),
    "torch.nn.modules.activation.SiLU": jax.nn.silu,
}
_SHORT = {path.rsplit(".", 1)[1]: path for path in ACTIVATIONS}


def _activation_path(name) -> str:
    if name is None:
        return "torch.nn.modules.linear.Identity"
    name = str(name)
    if name in ACTIVATIONS:
        return name
    short = name.rsplit(".", 1)[-1]
    if short in _SHORT:
        return _SHORT[short]
    raise ValueError(f"Unsupported Dense activation_function {name!r}; supported: {sorted(_SHORT)}")


class Dense(Module):
    """``Dense(in_features, out_features, bias=True, activation_function="Tanh")``; params ``linear.{kernel,bias}``."""

    config_keys = ["in_features", "out_features", "bias", "activation_function"]
    st_type = "sentence_transformers.models.Dense"

    def __init__(self, in_features, out_features, bias=True, activation_function="torch.nn.modules.activation.Tanh",
                 params=None, rng=None, module_input_name="sentence_embedding", module_output_name=None,
                 use_residual=False):
        if use_residual:
            raise ValueError("Dense(use_residual=True) (a sentence-transformers 6.x option) is not supported yet")
        self.in_features, self.out_features, self.bias = int(in_features), int(out_features), bool(bias)
        self.activation_function = _activation_path(activation_function)
        self.module_input_name = module_input_name
        self.module_output_name = module_output_name or module_input_name
        if params is None:
            # torch.nn.Linear's default init: U(-1/sqrt(in), 1/sqrt(in)).
            rng = np.random.default_rng(0) if rng is None else rng
            bound = 1.0 / np.sqrt(self.in_features)
            kernel = rng.uniform(-bound, bound, (self.in_features, self.out_features)).astype(np.float32)
            params = {"linear": {"kernel": kernel}}
            if self.bias:
                params["linear"]["bias"] = rng.uniform(-bound, bound, (self.out_features,)).astype(np.float32)
        self.params = params

    def apply(self, params, features, *, dropout_key=None):
        x = features[self.module_input_name].astype(jnp.float32)
        y = x @ params["linear"]["kernel"]
        if self.bias:
            y = y + params["linear"]["bias"]
        features = dict(features)
        features[self.module_output_name] = ACTIVATIONS[self.activation_function](y)
        return features

    def get_embedding_dimension(self):
        return self.out_features

    def save(self, path):
        ensure_dir(path)
        write_json(os.path.join(path, "config.json"), self.get_config_dict())
        save_safetensors(params_to_hf(self.params), os.path.join(path, "model.safetensors"))

    def _abstract(self):
        tree = {"kernel": np.empty((self.in_features, self.out_features), np.float32)}
        if self.bias:
            tree["bias"] = np.empty((self.out_features,), np.float32)
        return {"linear": tree}

    @classmethod
    def load(cls, path, **kwargs):
        cfg = read_json(os.path.join(path, "config.json"))
        module = cls(**{k: v for k, v in cfg.items()
                        if k in cls.config_keys or k.startswith("module_") or k == "use_residual"}, params={})
        tensors = load_safetensors(path)
        module.params, _ = hf_to_params(tensors, module._abstract(), source=os.path.join(path, "model.safetensors"))
        return module
