"""``CrossEncoder``: a reranker that scores text pairs jointly (sentence-transformers' ``CrossEncoder``) in JAX.

Design: the pipeline is the shared :class:`stcore_jax.base.model.BaseModel` with one input module, a
:class:`~stcore_jax.models.sequence_classification.SequenceClassificationTransformer` (tokenizer + transformers'
``*ForSequenceClassification`` as a pure function), whose output is ``features["scores"]`` [B, num_labels].
So ``model.params`` (``{"0": ...}``), the pure ``model.forward(params, features, dropout_key=None)`` the losses
and the trainer differentiate, prompts and the bucketed, data-parallel inference are BaseModel's; this file
adds loading (both sentence-transformers layouts and plain checkpoints), ``predict``/``rank`` and the export.

Layouts read: a Hugging Face checkpoint (``*ForSequenceClassification``, or a plain encoder that gets a fresh
head and ``num_labels=1``); the v4-5.3 layout (that checkpoint with ``config.json["sentence_transformers"]``);
the 5.4+ ``modules.json`` layout (``config_sentence_transformers.json``: ``model_type`` "CrossEncoder",
``activation_fn``, prompts); another family's ``modules.json`` directory is converted (its encoder gets a
head; prompts are not inherited). ``save_pretrained`` writes the v4-5.3 layout, which releases 4.0-6.2 and
``AutoModelForSequenceClassification`` read.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax.base import model_card as mc
from stcore_jax.base.load import load_st_config
from stcore_jax.base.model import BaseModel
from stcore_jax.cross_encoder import activation as act
from stcore_jax.cross_encoder.model_card import CrossEncoderModelCardData, generate_model_card
from stcore_jax.io.hub import resolve_model_path
from stcore_jax.models.module import read_json, write_json
from stcore_jax.models.sequence_classification import SequenceClassificationTransformer

logger = logging.getLogger(__name__)

_POSITIONAL = ("num_labels", "max_length", "activation_fn", "device")  # keyword-only since 5.4; accepted, warned
_RENAMED = {"model_name": "model_name_or_path", "automodel_args": "model_kwargs", "tokenizer_args": "processor_kwargs",
            "tokenizer_kwargs": "processor_kwargs", "config_args": "config_kwargs", "cache_dir": "cache_folder",
            "default_activation_function": "activation_fn"}
TARGET_CE_VERSION = "4.0.0"  # the oldest release reading layout (A): no "saved with a newer version" warning
_IGNORED_PREDICT_KWARGS = ("num_workers",)  # the reference's no-ops


def _input_module_dir(path: str, saved: dict) -> tuple[str, dict]:
    """The directory holding the HF checkpoint + tokenizer, and the CrossEncoder settings to inherit."""
    mj = os.path.join(path, "modules.json")
    if not os.path.isfile(mj):
        return path, saved  # a Hugging Face checkpoint (layout A, or plain)
    entries = read_json(mj)
    first = entries[0] if entries else {}
    if not str(first.get("type", "")).endswith("Transformer"):
        raise ValueError(f"{mj}: the first module is {first.get('type')!r}; a CrossEncoder needs a Transformer")
    mpath = os.path.join(path, first.get("path", ""))
    if saved.get("model_type") != "CrossEncoder":
        # Another family's directory: its encoder becomes the CrossEncoder's (a fresh head), as the reference
        # converts it; its prompts and similarity settings are not inherited.
        logger.warning("Converting %s model %s to CrossEncoder.", saved.get("model_type", "SentenceTransformer"), path)
        return mpath, {}
    if len(entries) > 1:
        raise NotImplementedError(f"{mj}: CrossEncoders with modules after the Transformer "
                                  f"({[e.get('type') for e in entries[1:]]}) are not supported yet")
    cfg_path = os.path.join(mpath, "sentence_bert_config.json")
    task = read_json(cfg_path).get("transformer_task", "sequence-classification") if os.path.isfile(cfg_path) \
        else "sequence-classification"
    if task != "sequence-classification":
        raise NotImplementedError(f"{cfg_path}: transformer_task={task!r}; stcore_jax CrossEncoders support "
                                  f"'sequence-classification' only")
    return mpath, saved


def _pair_list(inputs) -> tuple[list, bool]:
    """``(pairs, single)`` as the reference's ``is_singular_input``: one pair, or a list of pairs."""
    if isinstance(inputs, np.ndarray) and inputs.dtype.kind in ("U", "O"):
        if inputs.size and inputs.ndim < 2:
            return [inputs.tolist()], True
        return inputs.tolist(), False
    if isinstance(inputs, (list, tuple)):
        if len(inputs) > 0 and not isinstance(inputs[0], (list, tuple)):
            return [list(inputs)], True
        return list(inputs), False
    if isinstance(inputs, str):
        raise TypeError("predict expects a pair of texts or a list of pairs, got a single string")
    return list(inputs), False


class CrossEncoder(BaseModel):
    """``CrossEncoder(model_name_or_path, *, num_labels=None, max_length=None, activation_fn=None, ...)``.

    Mirrors ``sentence_transformers.CrossEncoder`` (see the module docstring for the layouts). ``activation_fn``
    (used by ``predict``/``rank`` only): an explicit one, else the saved one, else Sigmoid for one label and
    Identity otherwise; torch modules and their dotted paths map to JAX functions (``cross_encoder/activation.py``).
    JAX additions: ``compute_dtype`` (parameters stay float32), ``length_buckets`` (padding lengths), ``seed``
    (a fresh head's initialisation).
    """

    model_type = "CrossEncoder"

    def __init__(self, model_name_or_path=None, *args, modules=None, device=None, prompts=None,
                 default_prompt_name=None, cache_folder=None, trust_remote_code=False, revision=None,
                 local_files_only=False, token=None, model_kwargs=None, processor_kwargs=None, config_kwargs=None,
                 model_card_data=None, backend="torch", num_labels=None, max_length=None, activation_fn=None,
                 keep_in_fp32_modules=None, compute_dtype=jnp.float32, length_buckets=None, seed=0, **legacy):
        given = {"num_labels": num_labels, "max_length": max_length, "activation_fn": activation_fn, "device": device}
        if len(args) > len(_POSITIONAL):
            raise TypeError(f"CrossEncoder takes at most {len(_POSITIONAL) + 1} positional arguments")
        for name, value in zip(_POSITIONAL, args):
            logger.warning("Passing `%s` as a positional argument to CrossEncoder is deprecated. Please use "
                           "`%s=%r` as a keyword argument instead.", name, name, value)
            if given[name] is None:
                given[name] = value
        num_labels, max_length, activation_fn = given["num_labels"], given["max_length"], given["activation_fn"]
        renamed = {"model_name_or_path": model_name_or_path, "model_kwargs": model_kwargs,
                   "processor_kwargs": processor_kwargs, "config_kwargs": config_kwargs, "cache_folder": cache_folder,
                   "activation_fn": activation_fn}
        if "classifier_dropout" in legacy:
            logger.warning("The CrossEncoder `classifier_dropout` argument is deprecated. Please use "
                           "`config_kwargs={'classifier_dropout': ...}` instead.")
            renamed["config_kwargs"] = {**(renamed["config_kwargs"] or {}),
                                        "classifier_dropout": legacy.pop("classifier_dropout")}
        for old in [k for k in legacy if k in _RENAMED]:
            logger.warning("The CrossEncoder `%s` argument was renamed and is now deprecated. Please use `%s` "
                           "instead.", old, _RENAMED[old])
            value = legacy.pop(old)
            if renamed[_RENAMED[old]] is None:
                renamed[_RENAMED[old]] = value
        if legacy:
            raise TypeError(f"CrossEncoder got unexpected keyword arguments {sorted(legacy)}")
        if keep_in_fp32_modules:
            raise NotImplementedError("keep_in_fp32_modules is not supported (parameters are float32 already)")
        if model_card_data is not None and not isinstance(model_card_data, CrossEncoderModelCardData):
            raise ValueError(f"model_card_data must be a stcore_jax.cross_encoder.CrossEncoderModelCardData, got "
                             f"{type(model_card_data).__name__}; build it with CrossEncoderModelCardData(language=..., "
                             f"license=..., model_id=...)")
        self.trust_remote_code = trust_remote_code
        config_kwargs = dict(renamed["config_kwargs"] or {})
        num_labels = num_labels if num_labels is not None else config_kwargs.pop("num_labels", None)
        processor_kwargs = dict(renamed["processor_kwargs"] or {})
        if max_length is not None:
            processor_kwargs["model_max_length"] = max_length  # as the reference: the tokenizer's length

        saved, path = {}, None
        if modules is None:
            name = renamed["model_name_or_path"]
            if name is None:
                raise ValueError("CrossEncoder needs model_name_or_path or modules=[...]")
            path = resolve_model_path(name, cache_folder=renamed["cache_folder"], revision=revision, token=token,
                                      local_files_only=local_files_only)
            mpath, saved = _input_module_dir(path, load_st_config(path))
            hf = {**read_json(os.path.join(mpath, "config.json")), **config_kwargs}
            if num_labels is None and not any(a.endswith("ForSequenceClassification")
                                              for a in hf.get("architectures") or []):
                num_labels = 1  # a plain encoder: one score (base/modules/transformer.py, 6.2)
            modules = [SequenceClassificationTransformer.from_pretrained(
                mpath, num_labels=num_labels, processor_kwargs=processor_kwargs, config_kwargs=config_kwargs,
                compute_dtype=compute_dtype, seed=seed)]
        prompts = {**(saved.get("prompts") or {}), **(prompts or {})}
        super().__init__(None, modules, prompts=prompts, default_prompt_name=(
            default_prompt_name if default_prompt_name is not None else saved.get("default_prompt_name")),
            model_card_data=model_card_data, length_buckets=length_buckets)
        self.prompts = prompts  # the reference's CrossEncoder has no default prompts
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name={self.default_prompt_name!r} is not in prompts {sorted(prompts)}")
        self.model_path, self._saved_config = path, saved
        if not isinstance(self.input_module, SequenceClassificationTransformer):
            raise TypeError(f"a CrossEncoder's first module must be a SequenceClassificationTransformer, got "
                            f"{type(self.input_module).__name__}")
        self.activation_fn = (act.resolve(renamed["activation_fn"], trust_remote_code)
                              if renamed["activation_fn"] is not None else self._saved_activation())
        self.model_card_data = model_card_data or CrossEncoderModelCardData(local_files_only=local_files_only)
        self.model_card_data.register_model(self)

    def _saved_activation(self):
        """The saved activation (6.x config, then v4-5.3 config.json key, then <= 3.x key), else the default."""
        hf = self.config
        for path in (self._saved_config.get("activation_fn"), (hf.get("sentence_transformers") or {}).get(
                "activation_fn"), hf.get("sbert_ce_default_activation_function")):
            if path is not None:
                resolved = act.from_path(path, self.trust_remote_code)
                if resolved is not None:  # an unusable one: the next source, as the reference tries them
                    return resolved
        return act.default(self.num_labels)

    # -- properties ----------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """The Hugging Face ``config.json`` dict of the encoder + head."""
        return self.input_module.config.hf

    @property
    def num_labels(self) -> int:
        return self.input_module.num_labels

    @property
    def max_length(self) -> int:
        logger.warning("The `max_length` property was renamed and is now deprecated. Please use `max_seq_length`.")
        return self.max_seq_length

    @max_length.setter
    def max_length(self, value: int):
        logger.warning("The `max_length` property was renamed and is now deprecated. Please use `max_seq_length`.")
        self.max_seq_length = value

    @property
    def default_activation_function(self):
        logger.warning("`default_activation_function` was renamed and is now deprecated. Use `activation_fn`.")
        return self.activation_fn

    # -- tokenization ---------------------------------------------------------------------------
    def preprocess(self, pairs, prompt=None, task=None):
        """Pairs -> padded features (``input_ids``, ``attention_mask``, ``token_type_ids`` where the tokenizer
        makes them), a prompt prepended to the *first* text of each pair, as the reference does."""
        return self.input_module.tokenize(self._with_prompt(pairs, prompt))

    @staticmethod
    def _with_prompt(pairs, prompt):
        return [(prompt + p[0], p[1]) for p in pairs] if prompt else [tuple(p) for p in pairs]

    # -- inference -------------------------------------------------------------------------------
    def _scores_fn(self, mesh):
        key = ("scores", tuple(d.id for d in mesh.devices.flat))
        if key not in self._jit_cache:
            def run(params, features):
                self.trace_count += 1  # Python side effect: runs only while tracing
                return self.forward(params, features)["scores"].astype(jnp.float32)

            self._jit_cache[key] = jax.jit(run)
        return self._jit_cache[key]

    def _logits(self, pairs, prompt, batch_size, show_progress_bar) -> np.ndarray:
        """Raw float32 logits [N, num_labels] in input order (length buckets, fixed batch, all local devices)."""
        module, mesh = self.input_module, self._mesh()
        ids = module.tokenize_ids(self._with_prompt(pairs, prompt))
        out = np.zeros((len(pairs), self.num_labels), np.float32)
        for idx, scores in self._run_bucketed(module, ids, batch_size, self._scores_fn(mesh), mesh,
                                              show_progress_bar=show_progress_bar):
            out[idx] = scores[: len(idx)]
        return out

    def predict(self, inputs=None, prompt_name=None, prompt=None, batch_size=32, show_progress_bar=None,
                activation_fn=None, apply_softmax=False, convert_to_numpy=True, convert_to_tensor=False, device=None,
                pool=None, chunk_size=None, **kwargs):
        """Scores for ``inputs`` (one pair ``(a, b)`` or a list of pairs).

        Returns ``[N]`` (one label) or ``[N, C]`` numpy float32 (``jax.Array`` with ``convert_to_tensor``, a list
        of rows with ``convert_to_numpy=False``); a single pair gives a scalar or ``[C]``. The activation
        (``activation_fn``, else the model's) is applied to the logits, ``[N, 1]`` squeezed, then softmax over
        labels with ``apply_softmax``. ``device``, ``pool``, ``chunk_size``: accepted, no effect (all local
        devices are used).
        """
        if inputs is None and "sentences" in kwargs:
            inputs = kwargs.pop("sentences")
        if activation_fn is None and "activation_fct" in kwargs:
            activation_fn = kwargs.pop("activation_fct")
        unknown = sorted(set(kwargs) - set(_IGNORED_PREDICT_KWARGS))
        if unknown:
            raise ValueError(f"predict got unexpected keyword arguments {unknown}; see help(CrossEncoder.predict)")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        pairs, single = _pair_list(inputs)
        for i, p in enumerate(pairs):
            if not isinstance(p, (list, tuple)) or len(p) != 2 or not all(isinstance(t, str) for t in p):
                raise TypeError(f"predict: input {i} is {p!r}, not a pair of two strings")
        prompt = self._resolve_prompt(prompt_name, prompt)
        fn = act.resolve(activation_fn, self.trust_remote_code) if activation_fn is not None else self.activation_fn
        if show_progress_bar is None:
            show_progress_bar = logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
        if not pairs:
            return jnp.zeros((0,), jnp.float32) if convert_to_tensor else ([] if not convert_to_numpy else np.array([]))

        scores = jnp.asarray(self._logits(pairs, prompt, batch_size, show_progress_bar))
        if fn is not None:
            scores = fn(scores)
        if self.num_labels == 1 and scores.ndim > 1:
            scores = scores[:, 0]
        if apply_softmax and scores.ndim > 1:
            scores = jax.nn.softmax(scores, axis=1)
        if convert_to_tensor:
            out = scores
        else:
            out = np.asarray(scores, dtype=np.float32)
            out = out if convert_to_numpy else list(out)
        return out[0] if single else out

    def rank(self, query, documents, top_k=None, return_documents=False, prompt_name=None, prompt=None,
             batch_size=32, show_progress_bar=None, activation_fn=None, device=None, pool=None, chunk_size=None,
             **kwargs):
        """``[{"corpus_id": i, "score": s[, "text": doc]}]`` sorted by descending score, cut to ``top_k``.
        Raises ValueError unless ``num_labels == 1``."""
        if self.num_labels != 1:
            raise ValueError(f"CrossEncoder.rank() only works for models with num_labels=1 (this model has "
                             f"{self.num_labels}). Consider using CrossEncoder.predict() with input pairs instead.")
        for k in ("apply_softmax", "convert_to_numpy", "convert_to_tensor"):  # the reference's no-ops on rank
            kwargs.pop(k, None)
        scores = self.predict([[query, doc] for doc in documents], prompt_name=prompt_name, prompt=prompt,
                              batch_size=batch_size, show_progress_bar=show_progress_bar, activation_fn=activation_fn,
                              convert_to_tensor=True, **kwargs).tolist()
        results = []
        for i, score in enumerate(scores):
            results.append({"corpus_id": i, "score": score})
            if return_documents:
                results[-1]["text"] = documents[i]
        results = sorted(results, key=lambda r: r["score"], reverse=True)
        return results[:top_k]

    # -- save ---------------------------------------------------------------------------------
    def save_pretrained(self, path, model_name=None, create_model_card=True, train_datasets=None,
                        safe_serialization=True):
        """Write the v4-5.3 layout (no ``modules.json``): transformers' ``*ForSequenceClassification`` checkpoint
        + tokenizer, with ``config.json["sentence_transformers"] = {"activation_fn": <torch path>, "version":
        "4.0.0"}``. Read by sentence-transformers 4.0-6.2 and ``AutoModelForSequenceClassification``. Atomic
        (staging directory + rename)."""
        from stcore_jax.base.save import write_atomically

        if self.frozen_param_keys():
            raise NotImplementedError("save_pretrained with LoRA adapters is not supported for CrossEncoders yet")
        if any(self.prompts.values()):
            logger.warning("save_pretrained: the v4-5.3 CrossEncoder layout stores no prompts; %s are not saved",
                           sorted(k for k, v in self.prompts.items() if v))
        fn_path = act.path_of(self.activation_fn)

        def write(staging):
            self.input_module.save(staging, self.params["0"])
            cfg_path = os.path.join(staging, "config.json")
            cfg = {k: v for k, v in read_json(cfg_path).items() if k != "sbert_ce_default_activation_function"}
            cfg["sentence_transformers"] = {"activation_fn": fn_path, "version": TARGET_CE_VERSION}
            cfg["sbert_ce_default_activation_function"] = fn_path  # what releases <= 3.x read
            write_json(cfg_path, cfg)
            if create_model_card:
                self.write_model_card(staging, model_name)

        write_atomically(path, write)

    save = save_pretrained

    def write_model_card(self, path: str, model_name: str | None = None) -> None:
        """``README.md``: sentence-transformers 6.2's CrossEncoder card from ``model_card_data`` (filled by the
        trainer; cross_encoder/model_card.py). ``model_name`` that is not a local path becomes the card's
        ``model_id`` when none is set, as the reference does."""
        card = self.model_card_data
        if model_name and not os.path.exists(model_name) and card is not None and not card.model_id:
            card.model_id = model_name
        curve = mc.copy_training_curve(getattr(card, "training_curve", None), path)  # the loss plot, linked
        try:
            text = generate_model_card(self, training_curve=curve)
        except Exception:  # noqa: BLE001 (as the reference: a card that fails to render must not fail the save)
            logger.exception("Error while generating the model card; README.md is not written")
            return
        with open(os.path.join(path, "README.md"), "w", encoding="utf-8") as f:
            f.write(text)

    def saved_config(self) -> dict:
        return {**super().saved_config(), "activation_fn": act.path_of(self.activation_fn)}
