"""``SparseEncoder``: learned sparse (SPLADE) embeddings, sentence-transformers' ``SparseEncoder`` in JAX.

Design: the pipeline is the shared :class:`stcore_jax.base.model.BaseModel`, here an
:class:`~stcore_jax.models.mlm_transformer.MLMTransformer` (tokenizer + transformers' ``*ForMaskedLM`` as a pure
function, output the MLM logits) followed by :class:`~stcore_jax.models.splade_pooling.SpladePooling` (output
``sentence_embedding`` [B, V], decoder and pooling fused per token chunk). ``model.params`` (``{"0": ...}``),
the pure ``model.forward(params, features, dropout_key=None)`` that losses and trainers differentiate,
prompts and the bucketed, data-parallel inference are BaseModel's; this file adds loading, ``encode*``, the
sparse helpers and the export.

Outputs differ from the reference by design: ``encode`` returns a dense numpy ``[N, V]`` float32 array by
default (the reference: a torch sparse COO tensor). ``convert_to_tensor=True`` gives a dense ``jax.Array``;
``convert_to_sparse_tensor=True`` a ``scipy.sparse.csr_matrix`` ``[N, V]`` (``sparse_format="scipy"``, the
default) or the reference's coalesced torch sparse COO tensor (``sparse_format="torch"``), built batch by
batch so a corpus is never held dense. The helpers (``similarity``, ``sparsity``, ``decode``,
``intersection``) take any of these formats.

Pipelines: SPLADE (MLMTransformer + SpladePooling), inference-free SPLADE (a Router: SparseStaticEmbedding on
the query route, MLMTransformer + SpladePooling on the document route; ``encode_query``/``encode_document`` pick
the route) and CSR (Transformer + Pooling + SparseAutoEncoder; ``max_active_dims``, default the autoencoder's
``k``, is the number of latents it keeps). Layouts read: a Hugging Face checkpoint (``*ForMaskedLM`` -> SPLADE,
else the reference's default CSR build), a SentenceTransformer directory (+ a SparseAutoEncoder), the v5 and the
6.x sentence-transformers SparseEncoder directories (``sparse_encoder/load.py``). ``save_pretrained`` writes the
v5 layout, which releases 5.0-6.2 read.
"""

from __future__ import annotations

import copy
import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax.base.load import load_st_config
from stcore_jax.base.model import BaseModel
from stcore_jax.base.save import write_atomically
from stcore_jax.io.hub import resolve_model_path
from stcore_jax.models.mlm_transformer import MLMTransformer
from stcore_jax.models.module import write_json
from stcore_jax.models.pooling import Pooling
from stcore_jax.models.router import Router
from stcore_jax.models.sparse_autoencoder import SparseAutoEncoder
from stcore_jax.models.splade_pooling import SpladePooling, check_config
from stcore_jax.sentence_transformer.model_card import SPARSE_ENCODER, write_model_card as write_st_model_card
from stcore_jax.similarity import SimilarityFunction
from stcore_jax.sparse_encoder import embeddings as sp
from stcore_jax.sparse_encoder.load import load_sparse_modules

logger = logging.getLogger(__name__)

SUPPORTED_SIMILARITY_FN_NAMES = ("cosine", "dot", "euclidean", "manhattan")
TARGET_SPARSE_VERSION = "5.0.0"  # the first release with SparseEncoder; the layout written is its layout
# encode keywords of the reference that have no effect here (device placement, multi-process pools).
_IGNORED_ENCODE_KWARGS = ("device", "pool", "chunk_size", "save_to_cpu")


def _check_similarity_fn_name(value):
    if isinstance(value, SimilarityFunction):
        value = value.value
    if value is not None and value not in SUPPORTED_SIMILARITY_FN_NAMES:
        raise ValueError(f"SparseEncoder only supports similarity_fn_name in {SUPPORTED_SIMILARITY_FN_NAMES}, "
                         f"got {value!r}")
    return value


def _text_list(inputs) -> tuple[list[str], bool]:
    """``(texts, single)``: one string, or a list/array/iterable of strings (each checked)."""
    if isinstance(inputs, str):
        return [inputs], True
    if isinstance(inputs, dict) or inputs is None or not hasattr(inputs, "__iter__"):
        raise TypeError(f"encode expects a string or a list of strings, got {type(inputs).__name__}")
    texts = inputs.tolist() if isinstance(inputs, np.ndarray) else list(inputs)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"encode: input at index {i} is {type(t).__name__} ({t!r}), not a string")
    return texts, False


class SparseEncoder(BaseModel):
    """``SparseEncoder(model_name_or_path=None, *, modules=None, prompts=None, ..., similarity_fn_name=None,
    max_active_dims=None)``.

    Mirrors ``sentence_transformers.SparseEncoder`` (see the module docstring for layouts and output formats).
    ``similarity_fn_name`` defaults lazily to ``"dot"``; ``max_active_dims`` (top-k by ``|value|`` per row in
    ``encode``; a CSR model's autoencoder keeps that many latents) defaults to the saved one, else a
    SparseAutoEncoder's ``k``. JAX additions: ``compute_dtype`` (parameters stay float32), ``length_buckets``
    (padding lengths), ``seed`` (a fresh MLM head's or SparseAutoEncoder's initialisation).
    """

    model_type = "SparseEncoder"

    def __init__(self, model_name_or_path=None, *, modules=None, device=None, prompts=None, default_prompt_name=None,
                 cache_folder=None, trust_remote_code=False, revision=None, local_files_only=False, token=None,
                 model_kwargs=None, processor_kwargs=None, config_kwargs=None, model_card_data=None, backend="torch",
                 similarity_fn_name=None, max_active_dims=None, compute_dtype=jnp.float32, length_buckets=None,
                 seed=0, tokenizer_kwargs=None):
        self._similarity_fn_name = _check_similarity_fn_name(similarity_fn_name)
        max_active_dims = sp.check_max_active_dims(max_active_dims)
        saved, path = {}, None
        if modules is None:
            if model_name_or_path is None:
                raise ValueError("SparseEncoder needs model_name_or_path or modules=[...]")
            path = resolve_model_path(model_name_or_path, cache_folder=cache_folder, revision=revision, token=token,
                                      local_files_only=local_files_only)
            saved = load_st_config(path)
            t_kwargs = {"processor_kwargs": processor_kwargs or tokenizer_kwargs, "config_kwargs": config_kwargs,
                        "compute_dtype": compute_dtype, "seed": seed}
            modules = load_sparse_modules(path, saved, transformer_kwargs={k: v for k, v in t_kwargs.items()
                                                                           if v is not None})
        prompts = {**(saved.get("prompts") or {}), **(prompts or {})}
        super().__init__(None, modules, prompts=prompts, default_prompt_name=(
            default_prompt_name if default_prompt_name is not None else saved.get("default_prompt_name")),
            model_card_data=model_card_data, length_buckets=length_buckets)
        self.model_path, self._saved_config = path, saved
        self.trust_remote_code = trust_remote_code
        if not hasattr(self.input_module, "tokenize_ids"):
            raise TypeError(f"a SparseEncoder's first module must be an input module (MLMTransformer, Transformer, "
                            f"Router, SparseStaticEmbedding), got {type(self.input_module).__name__}")
        for pipeline in _pipelines(self.modules):  # the reference learns it at the first forward; the vocabulary
            mlm = next((m for m in pipeline if isinstance(m, MLMTransformer)), None)  # says it now
            for m in pipeline:
                if isinstance(m, SpladePooling) and m.embedding_dimension is None and mlm is not None:
                    m.embedding_dimension = mlm.vocab_size
        if self._similarity_fn_name is None and saved.get("similarity_fn_name") in SUPPORTED_SIMILARITY_FN_NAMES:
            self._similarity_fn_name = saved["similarity_fn_name"]
        if max_active_dims is None:
            max_active_dims = sp.check_max_active_dims(saved.get("max_active_dims"),
                                                       "config_sentence_transformers.json max_active_dims")
        sae = self.sparse_autoencoder
        self.max_active_dims = max_active_dims if max_active_dims is not None or sae is None else sae.k

    # -- similarity ----------------------------------------------------------------------------
    @property
    def similarity_fn_name(self) -> str:
        """The similarity of ``similarity``/``similarity_pairwise``; ``"dot"`` unless set or saved."""
        if self._similarity_fn_name is None:
            self._similarity_fn_name = "dot"
        return self._similarity_fn_name

    @similarity_fn_name.setter
    def similarity_fn_name(self, value):
        self._similarity_fn_name = _check_similarity_fn_name(value)

    def similarity(self, embeddings1, embeddings2):
        """``[N, M]`` float32 scores (``jax.Array``) with ``similarity_fn_name``; inputs in any format ``encode``
        returns (dense or sparse)."""
        fn = SimilarityFunction.to_similarity_fn(self.similarity_fn_name)
        return fn(jnp.asarray(sp.to_dense(embeddings1)), jnp.asarray(sp.to_dense(embeddings2)))

    def similarity_pairwise(self, embeddings1, embeddings2):
        """``[N]`` row-wise float32 scores with ``similarity_fn_name``."""
        fn = SimilarityFunction.to_similarity_pairwise_fn(self.similarity_fn_name)
        return fn(jnp.asarray(sp.to_dense(embeddings1)), jnp.asarray(sp.to_dense(embeddings2)))

    # -- the sparse helpers (static in the reference) --------------------------------------------
    sparsity = staticmethod(sp.sparsity)
    intersection = staticmethod(sp.intersection)

    def decode(self, embeddings, top_k: int | None = None):
        """``[(token, weight), ...]`` by descending weight (the non-zero dimensions, at most ``top_k``) for one
        embedding ``[V]``; a list of such lists for ``[N, V]``."""
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k <= 0):
            raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
        dense = sp.to_dense(embeddings)
        if dense.ndim not in (1, 2):
            raise ValueError(f"decode expects [V] or [N, V] embeddings, got shape {dense.shape}")
        out = []
        for row in np.atleast_2d(dense):
            ids, weights = sp.top_tokens(row, top_k)
            out.append(list(zip(self.tokenizer.convert_ids_to_tokens(ids.tolist()), weights.tolist())))
        return out[0] if dense.ndim == 1 else out

    # -- dimensions and settings -----------------------------------------------------------------
    def get_embedding_dimension(self) -> int | None:
        for m in reversed(self.modules):
            dim = m.get_embedding_dimension()
            if dim is not None:
                return dim
        return None

    get_sentence_embedding_dimension = get_embedding_dimension

    @property
    def sparse_autoencoder(self) -> SparseAutoEncoder | None:
        """The (top-level) SparseAutoEncoder of a CSR model, else None."""
        return next((m for m in self.modules if isinstance(m, SparseAutoEncoder)), None)

    def frozen_param_paths(self) -> list[tuple[str, ...]]:
        """Paths into ``params`` of modules built with ``frozen=True`` (SparseStaticEmbedding), e.g.
        ``[("0", "query_0_SparseStaticEmbedding")]``: their gradient is zero already (``stop_gradient``); an
        optimizer should also give them no update (AdamW's weight decay would still shrink them)."""
        out = []
        for i, m in enumerate(self.modules):
            subs = m.modules.items() if isinstance(m, Router) else [(None, m)]
            for mid, sub in subs:
                if getattr(sub, "frozen", False) and sub.params is not None:
                    out.append((str(i),) if mid is None else (str(i), mid))
        return out

    @property
    def splade_pooling(self) -> SpladePooling | None:
        return next((m for m in self.modules if isinstance(m, SpladePooling)), None)

    @property
    def splade_pooling_chunk_size(self) -> int | None:
        """SpladePooling's ``chunk_size`` (tokens per fused decoder+pooling chunk; None: automatic)."""
        pooling = self.splade_pooling
        if pooling is None:
            logger.warning("SpladePooling module not found. Cannot get chunk_size.")
            return None
        return pooling.chunk_size

    @splade_pooling_chunk_size.setter
    def splade_pooling_chunk_size(self, value):
        pooling = self.splade_pooling
        if pooling is None:
            logger.warning("SpladePooling module not found. Cannot set chunk_size.")
            return
        check_config(pooling.pooling_strategy, pooling.activation_function, value)
        pooling.chunk_size = value
        self._jit_cache = {}  # the traced computation changes

    # -- encode ---------------------------------------------------------------------------------
    def _encode_fn(self, mesh, task, max_active_dims):
        """``(params, features) -> [B, V]`` float32 on device: the jitted forward (one per device set, and per task
        for a Router; the task changes nothing otherwise) and, for ``max_active_dims``, a small jitted top-k
        after it, so that a new k compiles only the top-k.

        A CSR model's final SparseAutoEncoder keeps ``max_active_dims`` latents itself (the reference passes it as
        the autoencoder's k): it runs as its own small jitted function after the forward of the modules before
        it, so that, again, a new k compiles only the autoencoder."""
        task = task if isinstance(self.input_module, Router) else None
        last = len(self.modules) - 1
        sae = self.modules[last] if last > 0 and isinstance(self.modules[last], SparseAutoEncoder) else None
        body = self
        if sae is not None:  # the pipeline without its autoencoder; parameters are looked up by index, unchanged
            body = copy.copy(self)
            body.modules = self.modules[:last]
        key = ("sparse", tuple(d.id for d in mesh.devices.flat), task, sae is not None)
        if key not in self._jit_cache:
            def run(params, features):
                self.trace_count += 1  # Python side effect: runs only while tracing
                return body.forward(params, features, task=task)["sentence_embedding"].astype(jnp.float32)

            self._jit_cache[key] = jax.jit(run)
        forward = self._jit_cache[key]
        if sae is not None:
            k = max_active_dims if max_active_dims is not None else sae.k
            sae_key = ("sparse_autoencoder", id(sae), k)
            if sae_key not in self._jit_cache:
                sae_k = sae.with_k(k)
                self._jit_cache[sae_key] = jax.jit(
                    lambda p, x: sae_k.apply(p, {"sentence_embedding": x})["sentence_embedding"])
            encode_dense, autoencode = forward, self._jit_cache[sae_key]
            forward = lambda params, features: autoencode(params[str(last)], encode_dense(params, features))  # noqa: E731
        if max_active_dims is None:
            return forward
        top_key = ("max_active_dims", max_active_dims)
        if top_key not in self._jit_cache:
            self._jit_cache[top_key] = jax.jit(functools.partial(sp.select_max_active_dims, k=max_active_dims))
        top_k = self._jit_cache[top_key]
        return lambda params, features: top_k(forward(params, features))

    def encode(self, inputs=None, prompt_name=None, prompt=None, batch_size=32, show_progress_bar=None,
               convert_to_tensor=False, convert_to_sparse_tensor=False, convert_to_numpy=True, max_active_dims=None,
               sparse_format="scipy", task=None, **kwargs):
        """Sparse embeddings of ``inputs`` (a string or a list of strings).

        Returns dense numpy float32 ``[N, V]`` (``[V]`` for one string); ``convert_to_tensor``: a dense
        ``jax.Array``; ``convert_to_numpy=False``: a list of ``[V]`` rows; ``convert_to_sparse_tensor``: sparse,
        as ``sparse_format`` says ("scipy": ``csr_matrix [N, V]``, one string ``[1, V]``; "torch": the reference's
        coalesced COO tensor ``[N, V]`` or ``[V]``). ``max_active_dims`` (default: the model's) keeps the top-k
        ``|values|`` per row, computed on device. ``device``, ``pool``, ``chunk_size``, ``save_to_cpu``: the
        reference's, accepted without effect (all local devices are used). Inputs are sorted by length, padded
        to a few length buckets and a fixed batch sharded over the local devices: one compilation per bucket.
        """
        if inputs is None and "sentences" in kwargs:
            inputs = kwargs.pop("sentences")
        unknown = sorted(set(kwargs) - set(_IGNORED_ENCODE_KWARGS))
        if unknown:  # the reference raises too: a misspelt option must not be ignored
            raise ValueError(f"SparseEncoder.encode got unexpected keyword arguments {unknown}; "
                             f"see help(SparseEncoder.encode)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if convert_to_sparse_tensor and sparse_format not in sp.SPARSE_FORMATS:
            raise ValueError(f"sparse_format must be one of {sp.SPARSE_FORMATS}, got {sparse_format!r}")
        texts, single = _text_list(inputs)
        k = sp.check_max_active_dims(max_active_dims if max_active_dims is not None else self.max_active_dims)
        prompt = self._resolve_prompt(prompt_name, prompt)
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        dim = self.get_embedding_dimension()

        rows = [None] * len(texts)
        if texts:
            if prompt:
                texts = [prompt + t for t in texts]
            module, mesh = self._input_module_for(task), self._mesh()
            for idx, out in self._run_bucketed(module, module.tokenize_ids(texts), batch_size,
                                               self._encode_fn(mesh, task, k), mesh,
                                               show_progress_bar=show_progress_bar):
                batch = out[: len(idx)]
                if convert_to_sparse_tensor:
                    batch = sp.to_csr(batch)  # per batch: a corpus is never held dense
                for j, i in enumerate(idx):
                    rows[i] = batch[j]
        if convert_to_sparse_tensor:
            import scipy.sparse

            csr = scipy.sparse.vstack(rows, format="csr") if rows else scipy.sparse.csr_matrix((0, dim), np.float32)
            if sparse_format == "scipy":
                return csr
            out = sp.csr_to_torch(csr)
            return out[0] if single else out
        emb = np.stack(rows).astype(np.float32) if rows else np.zeros((0, dim), np.float32)
        if convert_to_tensor:
            emb = jnp.asarray(emb)
        elif not convert_to_numpy:
            emb = list(emb)
        return emb[0] if single else emb

    def encode_query(self, inputs=None, prompt_name=None, prompt=None, **kwargs):
        """``encode`` with the ``"query"`` prompt (when neither ``prompt`` nor ``prompt_name`` is given; an empty
        one then also blocks ``default_prompt_name``) and ``task="query"`` (a Router's query route)."""
        if prompt is None and prompt_name is None and "query" in self.prompts:
            prompt_name = "query"
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, task="query", **kwargs)

    def encode_document(self, inputs=None, prompt_name=None, prompt=None, **kwargs):
        """``encode`` with the first of the ``"document"``/``"passage"``/``"corpus"`` prompts (when none is given)
        and ``task="document"``."""
        if prompt is None and prompt_name is None:
            prompt_name = next((n for n in ("document", "passage", "corpus") if n in self.prompts), None)
        return self.encode(inputs, prompt_name=prompt_name, prompt=prompt, task="document", **kwargs)

    # -- save -----------------------------------------------------------------------------------
    def saved_config(self) -> dict:
        cfg = {**super().saved_config(), "similarity_fn_name": self.similarity_fn_name}
        if self.max_active_dims is not None:
            cfg["max_active_dims"] = self.max_active_dims  # read by 6.x; earlier releases ignore it
        return cfg

    def save_pretrained(self, path, model_name=None, create_model_card=True, train_datasets=None,
                        safe_serialization=True):
        """Write the v5 SparseEncoder layout, which sentence-transformers 5.0-6.2 read: the input module in the root
        (an MLMTransformer: ``config.json`` with ``*ForMaskedLM``, ``model.safetensors`` without the tied decoder,
        tokenizer, ``sentence_bert_config.json``; a CSR model's Transformer; an inference-free Router's
        ``router_config.json`` and one folder per sub-module), then ``{i}_{ClassName}/`` per module,
        ``modules.json`` with the v5 types (``sentence_transformers.sparse_encoder.models.*``,
        ``sentence_transformers.models.*``) and ``config_sentence_transformers.json`` (``model_type``
        "SparseEncoder", prompts, ``similarity_fn_name``, ``max_active_dims``). Atomic (staging directory + rename)."""
        if self.frozen_param_keys():
            raise NotImplementedError("save_pretrained with LoRA adapters is not supported for SparseEncoders yet")
        check_v5_export(self.modules)

        def write(staging):
            entries = []
            for i, m in enumerate(self.modules):
                sub = "" if i == 0 else f"{i}_{type(m).__name__}"  # the input module in the root, as the reference
                m.save(os.path.join(staging, sub) if sub else staging)
                entry = {"idx": i, "name": str(i), "path": sub, "type": m.st_type}
                if isinstance(m, Router):
                    entry["kwargs"] = ["task"]  # releases 5.x pass encode's task only to modules that list it
                entries.append(entry)
            write_json(os.path.join(staging, "modules.json"), entries)
            write_json(os.path.join(staging, "config_sentence_transformers.json"),
                       {"__version__": _versions(), **self.saved_config()})
            if create_model_card:
                self.write_model_card(staging, model_name)

        write_atomically(path, write)

    save = save_pretrained

    def write_model_card(self, path: str, model_name: str | None = None) -> None:
        """``README.md`` in the layout sentence-transformers 6.x writes for SparseEncoders: the model, usage, and
        after training the datasets, losses, hyperparameters, evaluation results and logs (``model_card_data``,
        filled by the trainer's model-card callback)."""
        if model_name and self.model_card_data is not None and not self.model_card_data.model_name:
            self.model_card_data.model_name = model_name
        write_st_model_card(self, path, SPARSE_ENCODER)


def _pipelines(modules) -> list[list]:
    """The module sequences a forward can run: the pipeline itself, or each route of a Router input module."""
    first = modules[0] if modules else None
    if isinstance(first, Router):
        return [routed + list(modules[1:]) for routed in first.sub_modules.values()]
    return [list(modules)]


def check_v5_export(modules) -> None:
    """Raise before anything is written if ``modules`` cannot be saved in the v5 layout: every module needs a
    sentence-transformers type, only the first may be an input module, Pooling needs its legacy config and a
    Router a saveable structure."""
    for i, m in enumerate(modules):
        if not m.st_type:
            raise ValueError(f"save_pretrained: module {i} ({type(m).__name__}) has no sentence-transformers type")
        if i > 0 and hasattr(m, "tokenize_ids"):
            raise ValueError(f"save_pretrained: module {i} ({type(m).__name__}) is an input module; only the first "
                             "module may be one")
        if isinstance(m, Pooling):
            m.legacy_config()
        if isinstance(m, Router):
            m.check_export()


def _versions() -> dict:
    import transformers

    out = {"sentence_transformers": TARGET_SPARSE_VERSION, "transformers": transformers.__version__}
    try:
        import torch

        out["pytorch"] = torch.__version__
    except ImportError:
        out["pytorch"] = "2.0.0"
    return out
