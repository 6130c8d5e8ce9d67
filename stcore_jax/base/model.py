"""The pipeline model every family shares: modules, one parameter pytree, the pure forward, prompts, LoRA,
bucketed inference and directory save/load.

A model is an ordered list of modules (Transformer -> Pooling -> Dense -> Normalize, or a Router, or a
StaticEmbedding first). Its parameters are one pytree, ``model.params = {"0": transformer_params,
"2": dense_params, ...}`` (keyed by module index, modules without parameters absent), and
``model.forward(params, features)`` is the pure function that inference, the losses and the trainer build
on. A family (:class:`stcore_jax.SentenceTransformer`, and the CrossEncoder and SparseEncoder to come) adds
what it computes from the pipeline's output (``encode``, ``predict``, ...) and its own configuration.
"""

from __future__ import annotations

import collections
import copy
import logging

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from stcore_jax.base.load import load_modules, load_st_config
from stcore_jax.batching.buckets import bucket_for, covering, default_buckets, round_up
from stcore_jax.io.hub import resolve_model_path
from stcore_jax.models.config import EncoderConfig
from stcore_jax.models.layers import fold
from stcore_jax.models.lora import LORA_KEY, LoraAdapterMixin
from stcore_jax.models.pooling import Pooling
from stcore_jax.models.router import Router, with_task
from stcore_jax.models.transformer import Transformer, position_limit

logger = logging.getLogger(__name__)

_MAX_IN_FLIGHT = 4  # inference batches dispatched ahead of the one being fetched


def _spans_processes(mesh: Mesh) -> bool:
    """Whether ``mesh`` holds devices of other processes (multi-process inference)."""
    return any(d.process_index != jax.process_index() for d in mesh.devices.flat)


def _local_rows(sharding: NamedSharding, n: int) -> tuple[int, int]:
    """``(lo, hi)``: the rows of an ``[n, ...]`` batch that this process's devices hold under ``sharding``
    (one contiguous block on a process-major 1-D mesh)."""
    slices = [idx[0] for idx in sharding.addressable_devices_indices_map((n,)).values()]
    lo, hi = min(s.start or 0 for s in slices), max(n if s.stop is None else s.stop for s in slices)
    covered = sum((n if s.stop is None else s.stop) - (s.start or 0) for s in slices)
    if covered != hi - lo:
        raise ValueError(f"this process's devices do not hold one contiguous block of the batch: {slices}")
    return lo, hi


def _local_value(x):
    """A host copy of ``x``, whose value every process holds the same: an array replicated across processes
    is read from this process's copy, one sharded across them (fsdp) is all-gathered (collective)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _global_from_local(local, sharding: NamedSharding, global_shape=None):
    """The global array of ``sharding`` whose rows on this process's devices come from ``local`` (this
    process's block; the whole value when replicated)."""
    return jax.make_array_from_process_local_data(sharding, local, local.shape if global_shape is None
                                                  else global_shape)


def _replicate_fn(cache: dict, mesh: Mesh):
    """A jitted identity whose outputs are replicated on ``mesh`` (an all-gather across processes)."""
    key = ("replicate", tuple(d.id for d in mesh.devices.flat))
    if key not in cache:
        cache[key] = jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, P()))
    return cache[key]


class BaseModel(LoraAdapterMixin):
    """The module pipeline; subclasses add what they compute from it (see the module docstring).

    ``__init__`` loads ``modules`` from ``model_name_or_path`` (a sentence-transformers directory, a plain
    Hugging Face checkpoint or a hub id when online) unless they are given, and returns the directory's
    ``config_sentence_transformers.json`` settings as ``self._saved_config`` for the subclass to read.
    """

    def __init__(self, model_name_or_path=None, modules=None, *, prompts=None, default_prompt_name=None,
                 cache_folder=None, revision=None, local_files_only=False, token=None, model_kwargs=None,
                 processor_kwargs=None, config_kwargs=None, model_card_data=None, compute_dtype=None,
                 length_buckets=None):
        from stcore_jax.distributed import maybe_initialize_distributed

        maybe_initialize_distributed()  # before the first device access, in multi-process launches
        name = type(self).__name__
        saved = {}
        if modules is None:
            if model_name_or_path is None:
                raise ValueError(f"{name} needs model_name_or_path or modules=[...]")
            path = resolve_model_path(model_name_or_path, cache_folder=cache_folder, revision=revision, token=token,
                                      local_files_only=local_files_only)
            t_kwargs = {"model_kwargs": model_kwargs, "processor_kwargs": processor_kwargs,
                        "config_kwargs": config_kwargs, "compute_dtype": compute_dtype}
            modules = load_modules(path, transformer_kwargs={k: v for k, v in t_kwargs.items() if v is not None})
            saved = load_st_config(path)
            self.model_path = path
        else:
            self.model_path = None
        if not modules:
            raise ValueError(f"{name} needs at least one module")
        self.modules = list(modules)
        self._saved_config = saved
        self.prompts = {"query": "", "document": ""}
        self.prompts.update(saved.get("prompts") or {})
        self.prompts.update(prompts or {})
        self.default_prompt_name = (default_prompt_name if default_prompt_name is not None
                                    else saved.get("default_prompt_name"))
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name={self.default_prompt_name!r} is not in prompts "
                             f"{sorted(self.prompts)}")
        self.model_card_data = model_card_data
        self.length_buckets = self.check_padding_lengths(length_buckets) if length_buckets else None
        self.trace_count = 0  # incremented each time an inference forward is traced (i.e. compiled)
        self._jit_cache = {}
        self._placed = None
        self.rows_run_here = 0  # inference rows this process ran (its share when multi-process; tests read it)

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

    def with_compute_dtype(self, dtype) -> BaseModel:
        """A shallow copy whose modules compute in ``dtype`` (e.g. ``jnp.bfloat16``); parameters are
        shared and stay float32, ``self`` is unchanged. The trainer's ``bf16=True`` runs its steps on
        such a view (like torch autocast: the model itself keeps its dtype for encode and export)."""
        modules = [m.with_compute_dtype(dtype) if hasattr(m, "with_compute_dtype") else m for m in self.modules]
        if all(a is b for a, b in zip(modules, self.modules)):
            return self
        out = copy.copy(self)
        out.modules, out._jit_cache, out._placed = modules, {}, None
        return out

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
                    raise ValueError(f"Prompt name {prompt_name!r} not found. "
                                     f"Available prompts: {sorted(self.prompts)}")
                prompt = self.prompts[prompt_name]
            elif self.default_prompt_name is not None:
                prompt = self.prompts.get(self.default_prompt_name)
        elif prompt_name is not None:
            logger.warning("Both prompt and prompt_name were given; using prompt (prompt_name is ignored)")
        return prompt or None

    # -- bucketed inference ----------------------------------------------------------------------
    def _mesh(self):
        """The inference mesh, one ``"data"`` axis: the local devices, or on a multi-process runtime every
        process's devices (process-major), so that each process runs only its share of every batch."""
        if jax.process_count() > 1:
            from stcore_jax.distributed import process_major_devices

            return Mesh(np.array(process_major_devices()), ("data",))
        return Mesh(np.array(jax.local_devices()), ("data",))

    def _placed_params(self, mesh):
        if self._placed is None:
            if _spans_processes(mesh):
                # Every process holds the same values (host arrays, or arrays replicated over the trainer's
                # mesh): each places its local copies (no cross-process transfer).
                self._placed = jax.tree_util.tree_map(
                    lambda x: _global_from_local(_local_value(x), NamedSharding(mesh, P())), self.params)
            else:
                self._placed = jax.device_put(self.params, NamedSharding(mesh, P()))
        return self._placed

    def _needs_prompt_length(self) -> bool:
        mods = [s for m in self.modules for s in (m.modules.values() if isinstance(m, Router) else [m])]
        return any(isinstance(m, Pooling) and not m.include_prompt for m in mods)

    def _input_module_for(self, task):
        """The module that tokenizes inputs of ``task``: a Router's route input module, else ``input_module``."""
        m = self.input_module
        return m.input_module_for(task) if isinstance(m, Router) else m

    def _inference_buckets(self) -> tuple[int, ...]:
        return covering(self.length_buckets or default_buckets(self.max_seq_length), self.max_seq_length)

    def _run_bucketed(self, input_module, ids, batch_size, fn, mesh, *, extra=None, show_progress_bar=False):
        """Run ``fn(params, features)`` over tokenized inputs ``ids`` (``{"input_ids": [[...]], ...}``) in
        batches sorted by length, each padded to a length bucket and to a fixed batch (``batch_size``
        rounded up to the mesh's device count, sharded over them): one compilation per bucket. On a mesh
        over several processes every process must call this with the same ``ids`` (SPMD); each runs only
        its devices' block of every batch (counted in ``rows_run_here``) and yields the whole output.

        ``extra``: features added to every batch (scalars, replicated). Yields ``(row indices, output)`` per
        batch, the output already copied to the host (numpy), in dispatch order.
        """
        lengths = np.array([len(r) for r in ids["input_ids"]])
        order = np.argsort(-lengths, kind="stable")
        bs = round_up(batch_size, mesh.devices.size)
        buckets = self._inference_buckets()
        sharding, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
        params = self._placed_params(mesh)
        # Across processes (SPMD: every process calls this with the same inputs) each global batch is the
        # same rows and bucket as on one process; a process pads and places only its contiguous block of
        # rows ``lo:hi`` (its devices' shards), and the output is all-gathered so every process gets it all.
        multi = _spans_processes(mesh)
        lo, hi = _local_rows(sharding, bs) if multi else (0, bs)
        # Dispatch is asynchronous: keep a few batches in flight and fetch the oldest, so the host
        # pads and transfers batch k+1 while the device computes batch k, without a host sync per
        # batch and without holding every batch's output (token embeddings can be large) on device.
        in_flight = collections.deque()
        for start in tqdm(range(0, len(lengths), bs), desc="Batches", disable=not show_progress_bar):
            idx = order[start : start + bs]
            mine = idx[lo:hi]
            self.rows_run_here += len(mine)
            batch_ids = {k: [v[i] for i in mine] for k, v in ids.items()}
            feats = input_module.pad(batch_ids, bucket_for(int(lengths[idx].max()), buckets), hi - lo)
            feats.update(extra or {})
            if multi:
                feats = {k: _global_from_local(np.asarray(v), sharding if np.ndim(v) else replicated,
                                               (bs, *np.shape(v)[1:]) if np.ndim(v) else ())
                         for k, v in feats.items()}
                out = _replicate_fn(self._jit_cache, mesh)(fn(params, feats))
                out = jax.tree_util.tree_map(lambda a: a.addressable_data(0), out)  # this process's full copy
            else:
                feats = {k: jax.device_put(v, sharding if np.ndim(v) else replicated) for k, v in feats.items()}
                out = fn(params, feats)
            for leaf in jax.tree_util.tree_leaves(out):
                leaf.copy_to_host_async()
            in_flight.append((idx, out))
            if len(in_flight) > _MAX_IN_FLIGHT:
                idx, out = in_flight.popleft()
                yield idx, jax.device_get(out)
        while in_flight:
            idx, out = in_flight.popleft()
            yield idx, jax.device_get(out)

    # -- save ----------------------------------------------------------------------------------
    def save_pretrained(self, path, model_name=None, create_model_card=True, train_datasets=None,
                        safe_serialization=True):
        """Write a sentence-transformers directory that the PyTorch package (2.x-6.x) loads."""
        from stcore_jax.base.save import save_model_dir

        save_model_dir(self, path, create_model_card=create_model_card, model_name=model_name)

    save = save_pretrained

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool | None = None,
                    safe_serialization: bool = True, commit_message: str | None = None,
                    local_model_path: str | None = None, exist_ok: bool = False, replace_model_card: bool = False,
                    train_datasets: list[str] | None = None, revision: str | None = None,
                    create_pr: bool = False) -> str:
        """Upload the model to the Hugging Face Hub repo ``repo_id``, creating it (``private``) unless it exists
        (an existing repo is an error unless ``exist_ok`` or ``create_pr``). As sentence-transformers: the model
        is saved (``save_pretrained``, the model card's ``model_id`` set to the repo) into a temporary directory
        and uploaded as one commit, or ``local_model_path`` is uploaded as it is; the model card is written only
        if the repo has no README.md yet, unless ``replace_model_card``; ``revision`` is a branch (created from
        ``main`` if missing); ``create_pr`` opens a pull request instead of committing to the branch.
        ``train_datasets`` is accepted and ignored, as in sentence-transformers 6. Returns the commit's URL (the
        pull request's with ``create_pr``)."""
        import tempfile

        from stcore_jax.io.hub import create_hub_repo, hub_file_exists, upload_folder

        name = type(self).__name__
        repo_id = create_hub_repo(repo_id, token=token, private=private, exist_ok=exist_ok or create_pr,
                                  branch=revision)
        card = self.model_card_data
        if card is not None and hasattr(card, "set_model_id"):
            card.set_model_id(repo_id)
        elif card is not None and hasattr(card, "model_id"):
            card.model_id = repo_id
        commit_message = commit_message or f"Add new {name} model"
        description = None
        if create_pr:
            description = (f"Hello!\n\nThis pull request has been automatically generated to add {name} "
                           f"compatibility.\n\n## Full Model Architecture:\n```\n{self}\n```")
        push = dict(repo_id=repo_id, commit_message=commit_message, token=token, revision=revision,
                    create_pr=create_pr, commit_description=description)
        if local_model_path:
            info = upload_folder(local_model_path, **push)
        else:
            write_card = replace_model_card
            if not write_card:
                # Keep a card the repo already has; if we cannot tell, keep it too (never overwrite blindly).
                try:
                    write_card = not hub_file_exists(repo_id, "README.md", token=token, revision=revision)
                except Exception as e:  # noqa: BLE001 - as the reference: warn and skip the card
                    logger.warning("Could not check for an existing README.md on %r (%s: %s). Skipping model card "
                                   "creation to avoid overwriting any existing card.", repo_id, type(e).__name__, e)
            with tempfile.TemporaryDirectory() as tmp:
                self.save_pretrained(tmp, model_name=repo_id, create_model_card=write_card,
                                     train_datasets=train_datasets, safe_serialization=safe_serialization)
                info = upload_folder(tmp, **push)
        if create_pr:
            logger.info("A pull request has been created at %s", info.pr_url)
            return info.pr_url
        return info.commit_url

    def saved_config(self) -> dict:
        """This family's ``config_sentence_transformers.json`` entries (besides ``__version__``)."""
        return {"model_type": type(self).__name__, "prompts": dict(self.prompts),
                "default_prompt_name": self.default_prompt_name}

    def write_model_card(self, path: str) -> None:
        """Write the family's ``README.md`` into ``path`` (none by default)."""

    def __repr__(self):
        body = "\n".join(f"  ({i}): {m!r}" for i, m in enumerate(self.modules))
        return f"{type(self).__name__}(\n{body}\n)"
