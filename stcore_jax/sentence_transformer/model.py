"""``SentenceTransformer``: load, encode and save sentence-transformers models in JAX.

The model is an ordered list of modules (Transformer -> Pooling -> Dense -> Normalize). Its
parameters are one pytree, ``model.params = {"0": transformer_params, "2": dense_params, ...}``
(keyed by module index, modules without parameters absent), and ``model.forward(params, features)``
is the pure function the encoder, the losses and the trainer all build on.
"""

from __future__ import annotations

import collections
import copy
import logging
import os
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from stcore_jax.base.load import load_modules, load_st_config
from stcore_jax.io.hub import resolve_model_path
from stcore_jax.models.layers import fold
from stcore_jax.models.lora import LORA_KEY, LoraAdapterMixin
from stcore_jax.batching.buckets import bucket_for, covering, default_buckets, round_up
from stcore_jax.models.pooling import Pooling
from stcore_jax.models.router import Router, with_task
from stcore_jax.models.config import EncoderConfig
from stcore_jax.models.transformer import Transformer, position_limit
from stcore_jax.similarity import SimilarityFunction, normalize as l2_normalize
from stcore_jax.util.quantization import PRECISIONS, quantize_embeddings

logger = logging.getLogger(__name__)

OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)
_MAX_IN_FLIGHT = 4  # encode batches dispatched ahead of the one being fetched


def _check_truncate_dim(value, where="truncate_dim"):
    """``value`` if None or a positive int; a negative one would drop dimensions from the end (``emb[:, :-1]``)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
        raise ValueError(f"{where} must be a positive integer (the dimensions to keep) or None, got {value!r}")
    return value


# encode keywords of the reference that have no effect here (its multi-process pool): accepted, ignored.
_IGNORED_ENCODE_KWARGS = ("pool", "chunk_size")


def _legacy_task_inputs(rows):
    """Asym-era input ``[{"query": text}, ...]`` -> ``("query", [text, ...])``; one task per call."""
    keys = {k for r in rows for k in r}
    if len(keys) != 1:
        raise ValueError(f"encode: dict inputs name the Router task as their only key, and all must name the same "
                         f"one; got keys {sorted(keys)}. Pass plain strings with task=... instead")
    task = keys.pop()
    return task, [r[task] for r in rows]


class SentenceTransformer(LoraAdapterMixin):
    """Load a sentence-transformers directory, a Hugging Face checkpoint, or a hub id (when online).

    Mirrors ``sentence_transformers.SentenceTransformer``; JAX additions: ``compute_dtype`` (e.g.
    ``jnp.bfloat16``; parameters stay float32) and ``length_buckets`` (padding lengths for encode).
    """

    def __init__(self, model_name_or_path=None, modules=None, device=None, prompts=None, default_prompt_name=None,
                 cache_folder=None, trust_remote_code=False, revision=None, local_files_only=False, token=None,
                 model_kwargs=None, processor_kwargs=None, tokenizer_kwargs=None, config_kwargs=None,
                 model_card_data=None, similarity_fn_name=None, truncate_dim=None, backend="torch",
                 compute_dtype=jnp.float32, length_buckets=None):
        from stcore_jax.distributed import maybe_initialize_distributed

        maybe_initialize_distributed()  # before the first device access, in multi-process launches
        st_cfg = {}
        if modules is None:
            if model_name_or_path is None:
                raise ValueError("SentenceTransformer needs model_name_or_path or modules=[...]")
            path = resolve_model_path(model_name_or_path, cache_folder=cache_folder, revision=revision, token=token,
                                      local_files_only=local_files_only)
            t_kwargs = {"model_kwargs": model_kwargs, "processor_kwargs": processor_kwargs or tokenizer_kwargs,
                        "config_kwargs": config_kwargs, "compute_dtype": compute_dtype}
            modules = load_modules(path, transformer_kwargs={k: v for k, v in t_kwargs.items() if v is not None})
            st_cfg = load_st_config(path)
            self.model_path = path
        else:
            self.model_path = None
        if not modules:
            raise ValueError("SentenceTransformer needs at least one module")
        self.modules = list(modules)
        self.prompts = {"query": "", "document": ""}
        self.prompts.update(st_cfg.get("prompts") or {})
        self.prompts.update(prompts or {})
        self.default_prompt_name = default_prompt_name if default_prompt_name is not None else st_cfg.get("default_prompt_name")
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name={self.default_prompt_name!r} is not in prompts {sorted(self.prompts)}")
        fn = similarity_fn_name if similarity_fn_name is not None else st_cfg.get("similarity_fn_name")
        self._similarity_fn_name = SimilarityFunction(fn).value if fn is not None else None
        self.truncate_dim = _check_truncate_dim(truncate_dim if truncate_dim is not None
                                                else st_cfg.get("truncate_dim"))
        self.model_card_data = model_card_data
        self.length_buckets = self.check_padding_lengths(length_buckets) if length_buckets else None
        self.trace_count = 0  # incremented each time the encode forward is traced (i.e. compiled)
        self._jit_cache = {}
        self._placed = None

    # -- pipeline ------------------------------------------------------------------------------
    def __len__(self):
        return len(self.modules)

    def __getitem__(self, i):
        return self.modules[i]

    def append(self, module):
        self.modules.append(module)
        self._invalidate()
        return self

    add_module = append

    @property
    def input_module(self) -> Transformer:
        return self.modules[0]

    @property
    def tokenizer(self):
        return self.input_module.tokenizer

    @property
    def max_seq_length(self) -> int:
        return self.input_module.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int):
        self.input_module.max_seq_length = value  # the module checks it (type, position table)

    def check_padding_lengths(self, lengths, where="length_buckets") -> tuple[int, ...]:
        """``lengths`` (padding lengths, tokens) as a tuple, or a ValueError naming ``where``: positive ints, none
        past the input module's position table (padding there embeds to NaN, and NaN keys spoil every row)."""
        lengths = tuple(lengths)
        if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1 for n in lengths):
            raise ValueError(f"{where} must be positive token lengths, got {lengths!r}")
        config = getattr(self.input_module, "config", None)  # a Transformer's; Router, StaticEmbedding: no table
        limit = position_limit(config) if isinstance(config, EncoderConfig) else None
        if limit is not None and lengths and max(lengths) > limit:
            raise ValueError(f"{where}={lengths!r}: {max(lengths)} exceeds the {limit} positions this "
                             f"{config.model_type} model has; pad to at most {limit} (max_seq_length is "
                             f"{self.max_seq_length})")
        return lengths

    @property
    def params(self) -> dict:
        """All parameters: ``{str(module_index): module.params}``, plus ``"lora"`` (the adapters,
        ``{"0": ...}``) while LoRA adapters are attached and enabled (``models/lora.py``)."""
        out = {str(i): m.params for i, m in enumerate(self.modules) if m.params is not None}
        if self.frozen_param_keys():
            out[LORA_KEY] = self.adapters
        return out

    @params.setter
    def params(self, value: dict):
        for k, v in value.items():
            if k == LORA_KEY:
                self.adapters = v
                continue
            self.modules[int(k)].params = v
        self._invalidate()

    @property
    def transformers_model(self):
        """The encoder's parameters (the reference's ``transformers_model``)."""
        return self.input_module.params

    def _invalidate(self):
        self._placed = None

    def forward(self, params, features, *, dropout_key=None, output_hidden_states=False, task=None):
        """Pure forward pass: ``features`` (``input_ids``, ``attention_mask``, …) -> features.

        ``task`` (or ``features["task"]``, a :class:`stcore_jax.models.router.Task`) picks a Router's route.

        Adds ``token_embeddings`` [B, T, H] and ``sentence_embedding`` [B, D]; with ``output_hidden_states``
        also ``all_layer_embeddings`` (``L + 1`` hidden states [B, T, H], embeddings first) and, when the
        input module is an encoder, ``layer_embeddings``: ``L + 1`` arrays [B, D], the pipeline's sentence
        embedding computed from each hidden state (the last is ``sentence_embedding``). ``dropout_key`` None
        means inference; a PRNG key, or one key per row ([B] typed keys), enables dropout (each
        module gets ``fold_in(key, index)``).
        """
        features = with_task(features, task)
        params = self.with_merged_adapters(params)  # LoRA: W + scale * A @ B, base frozen
        features = self.modules[0].apply(params.get("0") if self.modules[0].params is not None else None, features,
                                         dropout_key=fold(dropout_key, 0),
                                         **({"output_hidden_states": True} if output_hidden_states else {}))
        after_input = features
        features = self._apply_rest(params, features, dropout_key)
        if output_hidden_states and "all_layer_embeddings" in after_input:
            # Per-layer embeddings (AdaptiveLayerLoss): the modules after the encoder applied to each hidden state,
            # as the reference runs ``model[1:]`` on every layer's output; the last one is the normal output.
            hidden = after_input["all_layer_embeddings"]
            features["layer_embeddings"] = [
                self._apply_rest(params, {**after_input, "token_embeddings": h}, dropout_key)["sentence_embedding"]
                for h in hidden[:-1]] + [features["sentence_embedding"]]
        return features

    def _apply_rest(self, params, features, dropout_key):
        """Modules 1.. of the pipeline (everything after the input module), module ``i`` with ``fold(key, i)``."""
        for i, m in enumerate(self.modules[1:], start=1):
            features = m.apply(params.get(str(i)) if m.params is not None else None, features,
                               dropout_key=fold(dropout_key, i))
        return features

    def with_compute_dtype(self, dtype) -> "SentenceTransformer":
        """A shallow copy whose modules compute in ``dtype`` (e.g. ``jnp.bfloat16``); parameters are
        shared and stay float32, ``self`` is unchanged. The trainer's ``bf16=True`` runs its steps on
        such a view (like torch autocast: the model itself keeps its dtype for encode and export)."""
        modules = [m.with_compute_dtype(dtype) if hasattr(m, "with_compute_dtype") else m for m in self.modules]
        if all(a is b for a, b in zip(modules, self.modules)):
            return self
        out = copy.copy(self)
        out.modules, out._jit_cache, out._placed = modules, {}, None
        return out

    # -- similarity ----------------------------------------------------------------------------
    @property
    def similarity_fn_name(self) -> str:
        if self._similarity_fn_name is None:
            self._similarity_fn_name = "cosine"
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, value):
        self._similarity_fn_name = None if value is None else SimilarityFunction(value).value

    def similarity(self, embeddings1, embeddings2):
        """[N, M] scores with ``similarity_fn_name``."""
        return SimilarityFunction.to_similarity_fn(self.similarity_fn_name)(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        """[N] row-wise scores with ``similarity_fn_name``."""
        return SimilarityFunction.to_similarity_pairwise_fn(self.similarity_fn_name)(embeddings1, embeddings2)

    # -- dimensions ----------------------------------------------------------------------------
    def get_embedding_dimension(self) -> int | None:
        dim = None
        for m in reversed(self.modules):
            dim = m.get_embedding_dimension()
            if dim is not None:
                break
        if dim is not None and self.truncate_dim is not None:
            return min(dim, self.truncate_dim)
        return dim

    get_sentence_embedding_dimension = get_embedding_dimension

    @contextmanager
    def truncate_embeddings(self, truncate_dim):
        old, self.truncate_dim = self.truncate_dim, _check_truncate_dim(truncate_dim)
        try:
            yield self
        finally:
            self.truncate_dim = old

    # -- tokenization --------------------------------------------------------------------------
    def tokenize(self, texts):
        return self.input_module.tokenize(list(texts))

    def preprocess(self, texts, prompt=None, task=None):
        if prompt:
            texts = [prompt + t for t in texts]
        return self.tokenize(texts)

    def _prompt_length(self, prompt: str) -> int:
        """Tokens in ``prompt`` without a trailing special token (as the reference counts it)."""
        ids = self.input_module.tokenize_ids([prompt])["input_ids"][0]
        n = len(ids)
        if ids and ids[-1] in set(self.tokenizer.all_special_ids):
            n -= 1
        return n

    def _resolve_prompt(self, prompt_name, prompt):
        if prompt is None:
            if prompt_name is not None:
                if prompt_name not in self.prompts:
                    raise ValueError(f"Prompt name {prompt_name!r} not found. Available prompts: {sorted(self.prompts)}")
                prompt = self.prompts[prompt_name]
            elif self.default_prompt_name is not None:
                prompt = self.prompts.get(self.default_prompt_name)
        elif prompt_name is not None:
            logger.warning("Both prompt and prompt_name were given; using prompt (prompt_name is ignored)")
        return prompt or None

    # -- encode --------------------------------------------------------------------------------
    def _mesh(self):
        return Mesh(np.array(jax.local_devices()), ("data",))

    def _placed_params(self, mesh):
        if self._placed is None:
            self._placed = jax.device_put(self.params, NamedSharding(mesh, P()))
        return self._placed

    def _encode_fn(self, mesh, output_value, task=None):
        key = (output_value, tuple(d.id for d in mesh.devices.flat), task)
        if key not in self._jit_cache:
            batch_sharding = NamedSharding(mesh, P("data"))

            def run(params, features):
                self.trace_count += 1  # Python side effect: runs only while tracing
                out = self.forward(params, features, task=task)
                if output_value == "sentence_embedding":
                    return out["sentence_embedding"]
                return {k: v for k, v in out.items() if k in ("token_embeddings", "sentence_embedding", "attention_mask")}

            self._jit_cache[key] = (jax.jit(run), batch_sharding)
        return self._jit_cache[key]

    def encode(self, sentences, prompt_name=None, prompt=None, batch_size=32, show_progress_bar=None,
               output_value="sentence_embedding", precision="float32", convert_to_numpy=True,
               convert_to_tensor=False, device=None, normalize_embeddings=False, truncate_dim=None, task=None,
               **kwargs):
        """Embed ``sentences`` (a string or a list of strings).

        Returns ``[N, D]`` (numpy, or ``jax.Array`` with ``convert_to_tensor``), ``[D]`` for a single
        string; ``output_value="token_embeddings"`` gives a list of unpadded ``[Ti, H]`` arrays and
        ``None`` a list of per-input feature dicts. Inputs are sorted by length, padded to a few
        length buckets and a fixed batch (a multiple of the local device count, sharded over them),
        so the forward pass compiles at most once per bucket.
        """
        unknown = sorted(set(kwargs) - set(_IGNORED_ENCODE_KWARGS))
        if unknown:  # a misspelt option (normalise_embeddings=...) must not be ignored; the reference raises too
            raise ValueError(f"encode got unexpected keyword arguments {unknown}; see help(SentenceTransformer.encode)")
        single = isinstance(sentences, str)
        if single:
            sentences = [sentences]
        if isinstance(sentences, dict):  # list(dict) would encode its keys
            raise TypeError(f"encode expects a string or a list of strings, got a dict (keys {sorted(sentences)[:5]}); "
                            f"pass list(d.values()), or task=... for a Router model")
        if sentences is None or not hasattr(sentences, "__len__"):
            raise TypeError(f"encode expects a string or a list of strings, got {type(sentences).__name__}")
        sentences = list(sentences)
        if task is None and isinstance(self.input_module, Router) and sentences and all(isinstance(s, dict) for s in sentences):
            task, sentences = _legacy_task_inputs(sentences)
        for i, s in enumerate(sentences):
            if not isinstance(s, str):
                raise TypeError(f"encode: input at index {i} is {type(s).__name__} ({s!r}), not a string")
        if output_value not in OUTPUT_VALUES:
            raise ValueError(f"output_value must be one of {OUTPUT_VALUES}, got {output_value!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not supported; choose one of {PRECISIONS}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        truncate_dim = _check_truncate_dim(truncate_dim if truncate_dim is not None else self.truncate_dim)
        prompt = self._resolve_prompt(prompt_name, prompt)

        if not sentences:
            if output_value != "sentence_embedding":
                return []
            with self.truncate_embeddings(truncate_dim):  # capped at the model's dimension, as non-empty output is
                dim = self.get_embedding_dimension()
            empty = quantize_embeddings(np.zeros((0, dim), np.float32), precision)
            return jnp.asarray(empty) if convert_to_tensor else empty

        texts = [prompt + s for s in sentences] if prompt else sentences
        input_module = self._input_module_for(task)
        ids = input_module.tokenize_ids(texts)
        lengths = np.array([len(r) for r in ids["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        mesh = self._mesh()
        n_dev = mesh.devices.size
        bs = round_up(batch_size, n_dev)
        buckets = covering(self.length_buckets or default_buckets(self.max_seq_length), self.max_seq_length)
        fn, sharding = self._encode_fn(mesh, output_value, task)
        params = self._placed_params(mesh)
        prompt_length = self._prompt_length(prompt) if prompt and self._needs_prompt_length() else None

        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        results = [None] * len(texts)

        def collect(idx, out):
            out = jax.device_get(out)
            for j, i in enumerate(idx):
                if output_value == "sentence_embedding":
                    results[i] = out[j]
                else:
                    n_tok = int(out["attention_mask"][j].sum())
                    row = {"token_embeddings": out["token_embeddings"][j, :n_tok],
                           "sentence_embedding": out["sentence_embedding"][j],
                           "attention_mask": out["attention_mask"][j, :n_tok]}
                    results[i] = row["token_embeddings"] if output_value == "token_embeddings" else row

        # Dispatch is asynchronous: keep a few batches in flight and fetch the oldest, so the host
        # pads and transfers batch k+1 while the device computes batch k, without a host sync per
        # batch and without holding every batch's output (token embeddings can be large) on device.
        in_flight = collections.deque()
        for start in tqdm(range(0, len(texts), bs), desc="Batches", disable=not show_progress_bar):
            idx = order[start : start + bs]
            batch_ids = {k: [v[i] for i in idx] for k, v in ids.items()}
            length = bucket_for(int(lengths[idx].max()), buckets)
            feats = input_module.pad(batch_ids, length, bs)
            if prompt_length is not None:
                feats["prompt_length"] = np.int32(prompt_length)
            feats = {k: jax.device_put(v, sharding if np.ndim(v) else NamedSharding(mesh, P())) for k, v in feats.items()}
            out = fn(params, feats)
            for leaf in jax.tree_util.tree_leaves(out):
                leaf.copy_to_host_async()
            in_flight.append((idx, out))
            if len(in_flight) > _MAX_IN_FLIGHT:
                collect(*in_flight.popleft())
        while in_flight:
            collect(*in_flight.popleft())

        if output_value != "sentence_embedding":
            return results[0] if single else results
        emb = np.stack(results).astype(np.float32)
        if truncate_dim is not None:
            emb = emb[:, :truncate_dim]
        if normalize_embeddings:
            emb = np.asarray(l2_normalize(jnp.asarray(emb)))
        emb = quantize_embeddings(emb, precision) if precision != "float32" else emb
        if single:
            emb = emb[0]
        if convert_to_tensor:
            return jnp.asarray(emb)
        return emb

    def _needs_prompt_length(self) -> bool:
        mods = [s for m in self.modules for s in (m.modules.values() if isinstance(m, Router) else [m])]
        return any(isinstance(m, Pooling) and not m.include_prompt for m in mods)

    def _input_module_for(self, task):
        """The module that tokenizes inputs of ``task``: a Router's route input module, else ``input_module``."""
        m = self.input_module
        return m.input_module_for(task) if isinstance(m, Router) else m

    def encode_query(self, sentences, prompt_name=None, prompt=None, **kwargs):
        """``encode`` with the ``"query"`` prompt (when no prompt is given) and ``task="query"``."""
        if prompt is None and prompt_name is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, task="query", **kwargs)

    def encode_document(self, sentences, prompt_name=None, prompt=None, **kwargs):
        """``encode`` with the first of ``"document"``/``"passage"``/``"corpus"`` prompts and ``task="document"``."""
        if prompt is None and prompt_name is None:
            prompt_name = next((n for n in ("document", "passage", "corpus") if n in self.prompts), None)
        return self.encode(sentences, prompt_name=prompt_name, prompt=prompt, task="document", **kwargs)

    # -- save ----------------------------------------------------------------------------------
    def save_pretrained(self, path, model_name=None, create_model_card=True, train_datasets=None,
                        safe_serialization=True):
        """Write a directory that PyTorch ``sentence_transformers.SentenceTransformer`` (2.x-6.x) loads."""
        from stcore_jax.base.save import save_sentence_transformer

        save_sentence_transformer(self, path, create_model_card=create_model_card, model_name=model_name)

    save = save_pretrained

    def __repr__(self):
        body = "\n".join(f"  ({i}): {m!r}" for i, m in enumerate(self.modules))
        return f"SentenceTransformer(\n{body}\n)"
