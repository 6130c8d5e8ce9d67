"""``SentenceTransformer``: the bi-encoder family's model: load, encode and save sentence-transformers models in JAX.

The pipeline (modules, the parameter pytree ``{"0": transformer_params, "2": dense_params, ...}``, the pure
``forward(params, features)``, prompts, LoRA, bucketed inference, save/load) is
:class:`stcore_jax.base.model.BaseModel`; this file adds sentence embeddings on top of it.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax.base.model import BaseModel
from stcore_jax.models.router import Router
from stcore_jax.similarity import SimilarityFunction, normalize as l2_normalize
from stcore_jax.util.quantization import PRECISIONS, quantize_embeddings

logger = logging.getLogger(__name__)

OUTPUT_VALUES = ("sentence_embedding", "token_embeddings", None)


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


class SentenceTransformer(BaseModel):
    """Load a sentence-transformers directory, a Hugging Face checkpoint, or a hub id (when online).

    Mirrors ``sentence_transformers.SentenceTransformer``; JAX additions: ``compute_dtype`` (e.g.
    ``jnp.bfloat16``; parameters stay float32) and ``length_buckets`` (padding lengths for encode).
    The pipeline, its parameters, forward, prompts, LoRA and save/load are the shared
    :class:`stcore_jax.base.model.BaseModel`'s; this class adds embeddings: ``encode``, similarity and
    ``truncate_dim``.
    """

    def __init__(self, model_name_or_path=None, modules=None, device=None, prompts=None, default_prompt_name=None,
                 cache_folder=None, trust_remote_code=False, revision=None, local_files_only=False, token=None,
                 model_kwargs=None, processor_kwargs=None, tokenizer_kwargs=None, config_kwargs=None,
                 model_card_data=None, similarity_fn_name=None, truncate_dim=None, backend="torch",
                 compute_dtype=jnp.float32, length_buckets=None):
        super().__init__(model_name_or_path, modules, prompts=prompts, default_prompt_name=default_prompt_name,
                         cache_folder=cache_folder, revision=revision, local_files_only=local_files_only, token=token,
                         model_kwargs=model_kwargs, processor_kwargs=processor_kwargs or tokenizer_kwargs,
                         config_kwargs=config_kwargs, model_card_data=model_card_data, compute_dtype=compute_dtype,
                         length_buckets=length_buckets)
        saved = self._saved_config
        fn = similarity_fn_name if similarity_fn_name is not None else saved.get("similarity_fn_name")
        self._similarity_fn_name = SimilarityFunction(fn).value if fn is not None else None
        self.truncate_dim = _check_truncate_dim(truncate_dim if truncate_dim is not None else saved.get("truncate_dim"))

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

    # -- encode ---------------------------------------------------------------------------------
    def _encode_fn(self, mesh, output_value, task=None):
        key = (output_value, tuple(d.id for d in mesh.devices.flat), task)
        if key not in self._jit_cache:
            def run(params, features):
                self.trace_count += 1  # Python side effect: runs only while tracing
                out = self.forward(params, features, task=task)
                if output_value == "sentence_embedding":
                    return out["sentence_embedding"]
                keep = ("token_embeddings", "sentence_embedding", "attention_mask")
                return {k: v for k, v in out.items() if k in keep}

            self._jit_cache[key] = jax.jit(run)
        return self._jit_cache[key]

    def encode(self, sentences, prompt_name=None, prompt=None, batch_size=32, show_progress_bar=None,
               output_value="sentence_embedding", precision="float32", convert_to_numpy=True,
               convert_to_tensor=False, device=None, normalize_embeddings=False, truncate_dim=None, task=None,
               **kwargs):
        """Embed ``sentences`` (a string or a list of strings).

        Returns ``[N, D]`` (numpy, or ``jax.Array`` with ``convert_to_tensor``), ``[D]`` for a single
        string; ``output_value="token_embeddings"`` gives a list of unpadded ``[Ti, H]`` arrays and
        ``None`` a list of per-input feature dicts. Inputs are sorted by length, padded to a few
        length buckets and a fixed batch (a multiple of the mesh's device count, sharded over them: all
        processes' devices on a multi-process runtime, where every process must call ``encode`` with the same
        inputs and runs only its block of each batch), so the forward pass compiles at most once per bucket.
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
        if (task is None and isinstance(self.input_module, Router) and sentences
                and all(isinstance(s, dict) for s in sentences)):
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
        mesh = self._mesh()
        fn = self._encode_fn(mesh, output_value, task)
        prompt_length = self._prompt_length(prompt) if prompt and self._needs_prompt_length() else None
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        results = [None] * len(texts)
        extra = None if prompt_length is None else {"prompt_length": np.int32(prompt_length)}
        batches = self._run_bucketed(input_module, input_module.tokenize_ids(texts), batch_size, fn, mesh,
                                     extra=extra, show_progress_bar=show_progress_bar)
        for idx, out in batches:
            for j, i in enumerate(idx):
                if output_value == "sentence_embedding":
                    results[i] = out[j]
                else:
                    n_tok = int(out["attention_mask"][j].sum())
                    row = {"token_embeddings": out["token_embeddings"][j, :n_tok],
                           "sentence_embedding": out["sentence_embedding"][j],
                           "attention_mask": out["attention_mask"][j, :n_tok]}
                    results[i] = row["token_embeddings"] if output_value == "token_embeddings" else row

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

    # -- save (the directory itself: BaseModel.save_pretrained) ----------------------------------
    def saved_config(self) -> dict:
        cfg = {**super().saved_config(), "similarity_fn_name": self.similarity_fn_name}
        if self.truncate_dim is not None:
            cfg["truncate_dim"] = self.truncate_dim
        return cfg

    def write_model_card(self, path: str) -> None:
        from stcore_jax.sentence_transformer.model_card import write_model_card

        write_model_card(self, path)
