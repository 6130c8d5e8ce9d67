"""SparseAutoEncoder: a dense embedding -> ``k`` active latents of ``hidden_dim`` (CSR, "Beyond Matryoshka", Wen et
al. 2025; sentence-transformers' ``SparseAutoEncoder``).

``z = W (x - b_pre) + b_lat`` (``W`` [hidden, in], no bias), output ``relu(TopK_k(z))``: the ``k`` largest
pre-activations kept, the rest zeroed. The decoder is tied: ``x_hat = W^T z + b_pre``. ``normalize=True``
standardises ``x`` per row first (mean 0, unbiased std 1) and undoes it on the reconstructions.

Inference (the default) computes the latents only. Training outputs (what :mod:`stcore_jax.sparse_encoder.losses.csr`
consumes) are computed when the features carry the dead-latent state under :data:`STATE_KEY`: the key's presence is
static under ``jit``, so the trainer asks for them by threading the state, and gets the updated state back under
the same key. Two optional keys qualify the update: :data:`ROW_MASK_KEY` (bool [B], the real rows of a padded
batch: padding rows fire no latent) and :data:`UPDATE_KEY` (a Python bool, default True; False: the reference's
``eval()``/``no_grad`` forward of an evaluation loss, the state read, not changed). The state,
``stats_last_nonzero`` (int [hidden]: training forward passes since each latent last fired), is no parameter
(no gradient, no optimizer): :func:`update_stats_last_nonzero` is its pure update, and the module keeps the value
it was loaded or saved with (``module.stats_last_nonzero``; the trainer writes the trained counts back to it).

Parameters: ``{"encoder": {"kernel": W^T [in, hidden]}, "pre_bias": [in], "latent_bias": [hidden]}``; names
(``optim.param_names``) ``{i}.encoder.weight``, ``{i}.pre_bias``, ``{i}.latent_bias``, as the reference's, and weight
decay on the kernel only (the reference's biases are excluded by name). Saved as the reference saves the tied
weight: ``decoder.linear.weight`` [hidden, in] (``encoder.weight`` also read), ``pre_bias``, ``latent_bias`` and
``stats_last_nonzero`` as int64.
"""

from __future__ import annotations

import copy
import os

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax.io.safetensors_io import load_safetensors, save_safetensors
from stcore_jax.models.module import Module, ensure_dir, read_json, write_json

#: The features key of the dead-latent state ([hidden] int32): present -> training outputs and the updated state.
STATE_KEY = "sae_stats_last_nonzero"
#: Optional features key with STATE_KEY: bool [B], the rows whose top-k updates the state (a padded batch's real rows).
ROW_MASK_KEY = "sae_row_mask"
#: Optional features key with STATE_KEY: a Python bool, whether the forward updates the state (default True).
UPDATE_KEY = "sae_update_state"
#: The training outputs, as the reference names them (the CSR losses read the ``decoded_*`` ones and the backbone).
TRAIN_OUTPUT_KEYS = ("sentence_embedding_backbone", "sentence_embedding_encoded", "sentence_embedding_encoded_4k",
                     "auxiliary_embedding", "decoded_embedding_k", "decoded_embedding_4k", "decoded_embedding_aux",
                     "decoded_embedding_k_pre_bias")
WEIGHT_KEYS = ("decoder.linear.weight", "encoder.weight")  # the reference writes the first (shared-tensor dedup)
FIRED = 1e-5  # a latent "fires" when its top-k value exceeds this (the reference's threshold)


# -- the pure pieces: shapes [B, D] inputs, [B, H] latents ------------------------------------------------------
def standardize(x_bd, eps: float = 1e-5):
    """``((x - mu) / (std + eps), mu [B, 1], std [B, 1])`` with the unbiased std (``torch.std``), per row."""
    mu = jnp.mean(x_bd, axis=-1, keepdims=True)
    centred = x_bd - mu
    std = jnp.std(centred, axis=-1, keepdims=True, ddof=1)
    return centred / (std + eps), mu, std


def encode_pre_act(params, x_bd):
    """``(x - b_pre) @ W^T + b_lat``: ``[B, D]`` -> ``[B, H]`` pre-activations."""
    return (x_bd - params["pre_bias"]) @ params["encoder"]["kernel"] + params["latent_bias"]


def top_k_latents(z_bh, k: int):
    """``(relu(TopK_k(z)) [B, H], top-k values [B, k], top-k indices [B, k])``: the ``k`` largest entries of each row
    kept (then relu), the rest 0."""
    values, indices = jax.lax.top_k(z_bh, k)
    rows = jnp.arange(z_bh.shape[0])[:, None]
    return jax.nn.relu(jnp.zeros_like(z_bh).at[rows, indices].set(values)), values, indices


def decode_latents(params, latents_bh):
    """The tied decoder without its bias: ``latents @ W`` (``[B, H]`` -> ``[B, D]``)."""
    return latents_bh @ params["encoder"]["kernel"].T


def update_stats_last_nonzero(stats_h, indices_bk, values_bk, row_mask_b=None):
    """The dead-latent state after one top-k: latents that fired (a top-k value > 1e-5 in any row) restart at 0,
    then every latent ages by one. ``stats_h`` int [H]; ``indices_bk``/``values_bk`` from :func:`top_k_latents`;
    ``row_mask_b``: optional [B] bool of real rows (padding rows fire nothing). Returns int [H], the dtype of
    ``stats_h``."""
    fired = values_bk > FIRED
    if row_mask_b is not None:
        fired = fired & row_mask_b[:, None]
    hit = jnp.zeros(stats_h.shape, jnp.int32).at[indices_bk.reshape(-1)].max(fired.reshape(-1).astype(jnp.int32))
    return (stats_h * (1 - hit) + 1).astype(stats_h.dtype)


def sae_latents(params, x_bd, *, k: int, normalize: bool = False):
    """Inference: the ``k`` active latents ``[B, H]`` of ``x_bd``."""
    if normalize:
        x_bd, _, _ = standardize(x_bd)
    return top_k_latents(encode_pre_act(params, x_bd), k)[0]


def sae_train_outputs(params, x_bd, stats_h, *, k: int, k_aux: int, normalize: bool = False,
                      dead_threshold: int = 30, row_mask_b=None, update_state: bool = True):
    """The training forward: ``(outputs, new stats_h)``, the reference module's forward outside inference mode.

    ``outputs``: :data:`TRAIN_OUTPUT_KEYS` plus ``sentence_embedding`` (the top-k latents). The state is updated
    after the top-k (the auxiliary top-``k_aux`` then masks latents dead for more than ``dead_threshold`` passes,
    counting this one) and again after the top-4k, in the reference's order. ``update_state=False``: the
    reference's ``eval()``/``no_grad`` forward (an evaluation loss), the state read but not changed.
    ``auxiliary_embedding`` and ``decoded_embedding_aux`` are None when ``k_aux`` is 0.
    """
    update = update_stats_last_nonzero if update_state else (lambda stats, *unused: stats)
    x_prepared, mu, std = standardize(x_bd) if normalize else (x_bd, None, None)
    z = encode_pre_act(params, x_prepared)
    latents_k, values, indices = top_k_latents(z, k)
    stats_h = update(stats_h, indices, values, row_mask_b)
    latents_aux = None
    if k_aux:
        latents_aux = top_k_latents(z * (stats_h > dead_threshold), k_aux)[0]
    latents_4k, values, indices = top_k_latents(z, 4 * k)
    stats_h = update(stats_h, indices, values, row_mask_b)

    def reconstruct(latents):
        out = decode_latents(params, latents) + params["pre_bias"]
        return out * std + mu if normalize else out

    recons_k = reconstruct(latents_k)
    recons_aux = None if latents_aux is None else decode_latents(params, latents_aux) + params["pre_bias"]
    decoder_bias = params["pre_bias"]
    if normalize:  # as the reference: the auxiliary reconstruction is scaled, not shifted
        decoder_bias = decoder_bias * std
        recons_aux = None if recons_aux is None else recons_aux * std
    outputs = {"sentence_embedding_backbone": x_bd, "sentence_embedding_encoded": z,
               "sentence_embedding_encoded_4k": latents_4k, "auxiliary_embedding": latents_aux,
               "decoded_embedding_k": recons_k, "decoded_embedding_4k": reconstruct(latents_4k),
               "decoded_embedding_aux": recons_aux, "decoded_embedding_k_pre_bias": recons_k - decoder_bias,
               "sentence_embedding": latents_k}
    return outputs, stats_h


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"SparseAutoEncoder: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class SparseAutoEncoder(Module):
    """``SparseAutoEncoder(input_dim, hidden_dim=512, k=8, k_aux=512, normalize=False, dead_threshold=30)``.

    Input ``features["sentence_embedding"]`` ``[B, input_dim]``, output ``[B, hidden_dim]`` with at most ``k``
    non-zeros (see the module docstring for the training outputs). ``seed``: JAX addition, the fresh encoder's
    init (``nn.Linear``'s: uniform in ``±1/sqrt(input_dim)``; biases 0).
    """

    config_keys = ["input_dim", "hidden_dim", "k", "k_aux", "normalize", "dead_threshold"]
    st_type = "sentence_transformers.sparse_encoder.models.SparseAutoEncoder"  # v5 name: read by 5.0-6.2

    def __init__(self, input_dim: int, hidden_dim: int = 512, k: int = 8, k_aux: int = 512, normalize: bool = False,
                 dead_threshold: int = 30, *, seed: int = 0):
        self.input_dim = _check_int("input_dim", input_dim, 1)
        self.hidden_dim = _check_int("hidden_dim", hidden_dim, 1)
        self.k = _check_int("k", k, 1)
        self.k_aux = _check_int("k_aux", k_aux, 0)
        self.normalize = bool(normalize)
        self.dead_threshold = _check_int("dead_threshold", dead_threshold, 0)
        bound = 1.0 / np.sqrt(self.input_dim)
        kernel = np.random.default_rng(seed).uniform(-bound, bound, (self.input_dim, self.hidden_dim))
        self.params = {"encoder": {"kernel": jnp.asarray(kernel, jnp.float32)},
                       "pre_bias": jnp.zeros(self.input_dim, jnp.float32),
                       "latent_bias": jnp.zeros(self.hidden_dim, jnp.float32)}
        self.stats_last_nonzero = np.zeros(self.hidden_dim, np.int32)

    def with_k(self, k: int) -> SparseAutoEncoder:
        """A shallow copy keeping ``k`` latents (``max_active_dims`` at inference); parameters shared."""
        if k == self.k:
            return self
        out = copy.copy(self)
        out.k = _check_int("max_active_dims", k, 1)
        return out

    def initial_state(self):
        """The dead-latent state to thread through training forwards (:data:`STATE_KEY`): int32 [hidden]."""
        return jnp.asarray(self.stats_last_nonzero, jnp.int32)

    # -- forward ------------------------------------------------------------------------------
    def _check_k(self, k):
        if k > self.hidden_dim:
            raise ValueError(f"SparseAutoEncoder: cannot keep {k} of {self.hidden_dim} latents (k={self.k}, "
                             f"k_aux={self.k_aux}, 4k in training); use a larger hidden_dim or a smaller "
                             "k / max_active_dims")

    def apply(self, params, features, *, dropout_key=None):
        """``sentence_embedding`` [B, input_dim] -> [B, hidden_dim] latents; with ``features[STATE_KEY]`` also the
        training outputs and the updated state (module docstring; ``features[ROW_MASK_KEY]`` and
        ``features[UPDATE_KEY]`` qualify the update)."""
        features = dict(features)
        x = features["sentence_embedding"].astype(jnp.float32)
        if STATE_KEY not in features:
            self._check_k(self.k)
            features["sentence_embedding"] = sae_latents(params, x, k=self.k, normalize=self.normalize)
            return features
        self._check_k(max(4 * self.k, self.k_aux))
        outputs, features[STATE_KEY] = sae_train_outputs(
            params, x, features[STATE_KEY], k=self.k, k_aux=self.k_aux, normalize=self.normalize,
            dead_threshold=self.dead_threshold, row_mask_b=features.get(ROW_MASK_KEY),
            update_state=bool(features.get(UPDATE_KEY, True)))
        features.update(outputs)
        return features

    def get_embedding_dimension(self) -> int:
        return self.hidden_dim

    # -- save / load --------------------------------------------------------------------------
    def save(self, path, params=None) -> None:
        ensure_dir(path)
        p = jax.device_get(params or self.params)
        save_safetensors({WEIGHT_KEYS[0]: np.asarray(p["encoder"]["kernel"], np.float32).T,
                          "pre_bias": np.asarray(p["pre_bias"], np.float32),
                          "latent_bias": np.asarray(p["latent_bias"], np.float32),
                          "stats_last_nonzero": np.asarray(self.stats_last_nonzero, np.int64)},
                         os.path.join(path, "model.safetensors"))
        write_json(os.path.join(path, "config.json"), self.get_config_dict())

    @classmethod
    def load(cls, path, **kwargs) -> SparseAutoEncoder:
        """A module folder: ``config.json`` (the six init arguments) and ``model.safetensors``. A missing
        ``stats_last_nonzero`` starts at zeros."""
        path = str(path)
        cfg_path = os.path.join(path, "config.json")
        config = read_json(cfg_path)
        unknown = set(config) - set(cls.config_keys)
        if unknown:
            raise ValueError(f"{cfg_path}: unknown SparseAutoEncoder config keys {sorted(unknown)}")
        module = cls(**config)
        tensors = load_safetensors(path)
        source = os.path.join(path, "model.safetensors")
        weight = next((tensors[k] for k in WEIGHT_KEYS if k in tensors), None)
        missing = [k for k in ("pre_bias", "latent_bias") if k not in tensors] + (
            [" or ".join(WEIGHT_KEYS)] if weight is None else [])
        if missing:
            raise ValueError(f"SparseAutoEncoder: {source} lacks {missing}; keys: {sorted(tensors)}")
        expected = {"weight": (module.hidden_dim, module.input_dim), "pre_bias": (module.input_dim,),
                    "latent_bias": (module.hidden_dim,)}
        got = {"weight": weight.shape, "pre_bias": tensors["pre_bias"].shape,
               "latent_bias": tensors["latent_bias"].shape}
        for name, shape in expected.items():
            if tuple(got[name]) != shape:
                raise ValueError(f"SparseAutoEncoder: {source}: {name} has shape {tuple(got[name])}, the config "
                                 f"({cfg_path}) needs {shape}")
        module.params = {"encoder": {"kernel": jnp.asarray(np.asarray(weight, np.float32).T)},
                         "pre_bias": jnp.asarray(tensors["pre_bias"], jnp.float32),
                         "latent_bias": jnp.asarray(tensors["latent_bias"], jnp.float32)}
        if "stats_last_nonzero" in tensors:
            module.stats_last_nonzero = np.asarray(tensors["stats_last_nonzero"]).astype(np.int32)
        return module

    def __repr__(self):
        return f"SparseAutoEncoder({self.get_config_dict()})"
