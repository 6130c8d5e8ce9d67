"""Reading a SparseEncoder directory: a plain Hugging Face checkpoint, a sentence-transformers SparseEncoder
(``modules.json``) in the v5 layout (``sparse_encoder.models.*`` types) or the 6.x one (``base.modules...``,
``sparse_encoder.modules...``), or a SentenceTransformer directory.

What is built:
- a ``*ForMaskedLM`` checkpoint: MLMTransformer + SpladePooling("max") (SPLADE);
- any other checkpoint: the reference's default CSR model, Transformer + Pooling("mean") +
  SparseAutoEncoder(D, 4D, k=256, k_aux=512), the autoencoder freshly initialised;
- a SentenceTransformer directory: its modules + SparseAutoEncoder(D, 4D, k=D//4, k_aux=D//2), as the reference
  converts it;
- ``modules.json``: each entry by its class name. A ``Transformer`` is the MLMTransformer when its config says
  ``transformer_task: "fill-mask"``, else the plain encoder (CSR); a ``Router`` (inference-free SPLADE:
  SparseStaticEmbedding on the query route, MLMTransformer + SpladePooling on the document route) is read from its
  ``router_config.json`` with the same rule for its sub-modules.
Every entry (a Router's sub-modules included) is validated before any weights are read.
"""

from __future__ import annotations

import ast
import logging
import os

from stcore_jax.base.load import load_modules
from stcore_jax.models.mlm_transformer import FILL_MASK, MLMTransformer
from stcore_jax.models.module import module_class, read_json
from stcore_jax.models.pooling import Pooling
from stcore_jax.models.router import CONFIG_NAME as ROUTER_CONFIG, Router, _check_module_id
from stcore_jax.models.sparse_autoencoder import SparseAutoEncoder
from stcore_jax.models.sparse_static_embedding import SparseStaticEmbedding
from stcore_jax.models.splade_pooling import SpladePooling
from stcore_jax.models.transformer import ST_CONFIG_NAMES, Transformer

logger = logging.getLogger(__name__)

_INPUT_MODULES = (MLMTransformer, Transformer, Router, SparseStaticEmbedding)


def is_masked_lm(hf: dict) -> bool:
    return any(str(a).endswith("ForMaskedLM") for a in hf.get("architectures") or [])


def _transformer_task(mpath: str) -> str | None:
    for name in ST_CONFIG_NAMES:
        p = os.path.join(mpath, name)
        if os.path.isfile(p):
            return read_json(p).get("transformer_task")
    return None


def _module_class(type_path: str, mpath: str, where: str):
    """Our class for one ``modules.json`` / ``router_config.json`` type, or a clear error."""
    name = str(type_path or "").rsplit(".", 1)[-1]
    if name == "Transformer":
        task = _transformer_task(mpath)
        if task == FILL_MASK:
            return MLMTransformer
        if task not in (None, "feature-extraction"):
            raise NotImplementedError(f"{where}: a Transformer with transformer_task={task!r}; SparseEncoders use "
                                      f"'fill-mask' (SPLADE) or 'feature-extraction' (CSR) Transformers")
        return Transformer
    return module_class(type_path, where=where)


def _router_plan(path: str) -> dict:
    """``{config, classes}`` of the Router directory ``path``, every sub-module's class resolved (nothing loaded)."""
    cfg_path = os.path.join(path, ROUTER_CONFIG)
    if not os.path.isfile(cfg_path):
        cfg_path = os.path.join(path, "config.json")  # the legacy Asym layout
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"Router: no {ROUTER_CONFIG} (or legacy config.json) in {path!r}")
    cfg = read_json(cfg_path)
    for key in ("types", "structure"):
        if not isinstance(cfg.get(key), dict):
            raise ValueError(f"{cfg_path}: missing or malformed {key!r}; expected a Router config with 'types', "
                             "'structure' and 'parameters'")
    classes = {}
    for mid, type_path in cfg["types"].items():
        _check_module_id(mid, cfg_path)
        cls = _module_class(type_path, os.path.join(path, mid), f"{cfg_path}: module {mid!r}")
        if cls is Router:
            raise ValueError(f"{cfg_path}: module {mid!r} is another Router")
        classes[mid] = cls
    for route, ids in cfg["structure"].items():
        missing = [m for m in ids if m not in classes]
        if missing:
            raise ValueError(f"{cfg_path}: route {route!r} lists modules {missing} that are not in 'types'")
    return {"path": path, "cfg_path": cfg_path, "config": cfg, "classes": classes}


def _load_router(plan: dict, transformer_kwargs: dict) -> Router:
    """The Router of a :func:`_router_plan` (its parameters parsed as ``Router.load`` parses them)."""
    cfg, cfg_path = plan["config"], plan["cfg_path"]
    modules = {mid: _load_one(cls, os.path.join(plan["path"], mid), transformer_kwargs)
               for mid, cls in plan["classes"].items()}
    params = dict(cfg.get("parameters") or {})
    mappings = {}
    for key, target in (params.pop("route_mappings", None) or {}).items():
        try:
            mappings[ast.literal_eval(key) if isinstance(key, str) else tuple(key)] = target
        except (ValueError, SyntaxError):
            logger.warning("%s: cannot parse route_mappings key %r; skipped", cfg_path, key)
    unknown = set(params) - {"default_route", "allow_empty_key"}
    if unknown:
        raise ValueError(f"{cfg_path}: unknown Router parameters {sorted(unknown)}")
    return Router({route: [modules[m] for m in ids] for route, ids in cfg["structure"].items()},
                  route_mappings=mappings or None, **params)


def _load_one(cls, mpath: str, transformer_kwargs: dict):
    if cls is MLMTransformer:
        return MLMTransformer.load(mpath, **transformer_kwargs)
    if cls is Transformer:
        return Transformer.load(mpath, **{k: v for k, v in transformer_kwargs.items() if k != "seed"})
    if cls is SparseStaticEmbedding:
        return cls.load(mpath, processor_kwargs=transformer_kwargs.get("processor_kwargs"))
    return cls.load(mpath)


def csr_default_modules(path: str, transformer_kwargs: dict) -> list:
    """The reference's CSR build on a checkpoint without a masked-LM head: Transformer + mean Pooling +
    SparseAutoEncoder(D, 4D, k=256, k_aux=512) (a fresh autoencoder, initialised from ``seed``)."""
    kwargs = {k: v for k, v in transformer_kwargs.items() if k != "seed"}
    transformer = Transformer(path, **kwargs)
    pooling = Pooling(transformer.get_embedding_dimension(), "mean")
    dim = pooling.get_embedding_dimension()
    return [transformer, pooling, SparseAutoEncoder(dim, 4 * dim, k=256, k_aux=512,
                                                    seed=transformer_kwargs.get("seed", 0))]


def _converted_sentence_transformer(path: str, transformer_kwargs: dict) -> list:
    """A SentenceTransformer directory + SparseAutoEncoder(D, 4D, k=D//4, k_aux=D//2) (the reference's
    conversion; the autoencoder fresh)."""
    modules = load_modules(path, transformer_kwargs={k: v for k, v in transformer_kwargs.items() if k != "seed"})
    dim = next((d for d in (m.get_embedding_dimension() for m in reversed(modules)) if d is not None), None)
    if dim is None:
        raise ValueError(f"{path}: cannot tell the SentenceTransformer's embedding dimension for the SparseAutoEncoder")
    return modules + [SparseAutoEncoder(dim, 4 * dim, k=dim // 4, k_aux=dim // 2,
                                        seed=transformer_kwargs.get("seed", 0))]


def load_sparse_modules(path: str, saved: dict, *, transformer_kwargs: dict) -> list:
    """The pipeline of the SparseEncoder directory ``path`` (``saved``: its ``config_sentence_transformers.json``).

    ``transformer_kwargs`` (``processor_kwargs``, ``config_kwargs``, ``compute_dtype``, ``seed``) go to the
    input modules (``seed``: a fresh MLM head's or SparseAutoEncoder's initialisation).
    """
    mj = os.path.join(path, "modules.json")
    if not os.path.isfile(mj):
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"SparseEncoder: no modules.json or config.json in {path!r}")
        hf = {**read_json(cfg_path), **(transformer_kwargs.get("config_kwargs") or {})}
        if not is_masked_lm(hf):
            logger.info("%s: no masked-LM architecture (%s); building a CSR model (Transformer + mean Pooling + "
                        "SparseAutoEncoder)", path, hf.get("architectures"))
            return csr_default_modules(path, transformer_kwargs)
        mlm = MLMTransformer.from_pretrained(path, **transformer_kwargs)
        return [mlm, SpladePooling("max", embedding_dimension=mlm.vocab_size)]
    model_type = saved.get("model_type")
    if model_type == "SentenceTransformer":
        return _converted_sentence_transformer(path, transformer_kwargs)
    if model_type not in (None, "SparseEncoder"):
        raise NotImplementedError(f"{path} holds a {model_type}; stcore_jax reads SparseEncoder and "
                                  "SentenceTransformer directories as SparseEncoders")
    entries = read_json(mj)
    plans = []
    for i, e in enumerate(entries):
        mpath = os.path.join(path, e.get("path", ""))
        cls = _module_class(str(e.get("type", "")), mpath, f"{mj}: module {e.get('idx', i)}")
        plans.append((cls, mpath, _router_plan(mpath) if cls is Router else None))
    if not plans or plans[0][0] not in _INPUT_MODULES:
        raise ValueError(f"{mj}: a SparseEncoder's first module must be an input module (a Transformer, "
                         f"MLMTransformer, Router or SparseStaticEmbedding), got "
                         f"{plans[0][0].__name__ if plans else 'nothing'}")
    late = [cls.__name__ for cls, _, _ in plans[1:] if cls in _INPUT_MODULES]
    if late:
        raise ValueError(f"{mj}: only the first module may be an input module; later ones: {late}")
    return [_load_router(plan, transformer_kwargs) if plan is not None else _load_one(cls, mpath, transformer_kwargs)
            for cls, mpath, plan in plans]
