"""Loss and evaluator names a config may use, keyed by model family and name, with their keyword arguments
checked by signature.

Everything here runs before a model is loaded: a config naming an unknown loss, or giving a loss a
keyword its constructor does not take, fails with the key and the allowed values. Families share names
(the CrossEncoder's ``MultipleNegativesRankingLoss`` is not the bi-encoder's), so every lookup is
``(family, name)``; ``model.family`` in the config picks the family (default ``sentence_transformer``).
A name that belongs to the other family only is refused with a message that says so.
"""

from __future__ import annotations

import importlib
import inspect

from stcore_jax.config.errors import ConfigError

# family -> its package: ``<package>.losses`` and ``<package>.evaluation`` are imported when first needed.
FAMILIES = {"sentence_transformer": "stcore_jax.sentence_transformer", "cross_encoder": "stcore_jax.cross_encoder",
            "sparse_encoder": "stcore_jax.sparse_encoder"}
DEFAULT_FAMILY = "sentence_transformer"
# family -> (module, class) of its trainer and its training arguments (the YAML ``arguments`` section).
TRAINERS = {"sentence_transformer": ("stcore_jax.sentence_transformer.trainer", "SentenceTransformerTrainer"),
            "cross_encoder": ("stcore_jax.cross_encoder.trainer", "CrossEncoderTrainer"),
            "sparse_encoder": ("stcore_jax.sparse_encoder.trainer", "SparseEncoderTrainer")}
ARGUMENTS = {"sentence_transformer": ("stcore_jax.training.arguments", "SentenceTransformerTrainingArguments"),
             "cross_encoder": ("stcore_jax.cross_encoder.training_args", "CrossEncoderTrainingArguments"),
             "sparse_encoder": ("stcore_jax.sparse_encoder.training_args", "SparseEncoderTrainingArguments")}

# Evaluators a config can feed from rows: name -> what the rows' columns are, in order. The rows fill the
# constructor's first arguments (ROW_ARGS), which a config therefore cannot set.
EVALUATOR_COLUMNS = {
    "sentence_transformer": {
        "EmbeddingSimilarityEvaluator": ("sentences1", "sentences2", "scores"),
        "BinaryClassificationEvaluator": ("sentences1", "sentences2", "labels"),
        "TripletEvaluator": ("anchors", "positives", "negatives"),
    },
    "cross_encoder": {
        "CrossEncoderClassificationEvaluator": ("sentences1", "sentences2", "labels"),
        "CrossEncoderCorrelationEvaluator": ("sentences1", "sentences2", "scores"),
        # (query, positive, documents: list) or (query, positive, negative_1..n); see build.reranking_samples
        "CrossEncoderRerankingEvaluator": ("query", "positive", "documents"),
        "CrossEncoderNanoBEIREvaluator": (),  # reads no rows: its datasets are named in kwargs (dataset_id)
    },
    "sparse_encoder": {  # the bi-encoder's row evaluators over sparse embeddings (+ sparsity metrics)
        "SparseEmbeddingSimilarityEvaluator": ("sentences1", "sentences2", "scores"),
        "SparseBinaryClassificationEvaluator": ("sentences1", "sentences2", "labels"),
        "SparseTripletEvaluator": ("anchors", "positives", "negatives"),
    },
}
# Evaluators fed the rows' columns as positional lists (the bi-encoder families'); the others build their inputs.
COLUMN_FAMILIES = ("sentence_transformer", "sparse_encoder")
ROW_ARGS = {
    "CrossEncoderClassificationEvaluator": ("sentence_pairs", "labels"),
    "CrossEncoderCorrelationEvaluator": ("sentence_pairs", "scores"),
    "CrossEncoderRerankingEvaluator": ("samples",),
}
# Constructor arguments a config never sets (the model, or what the trainer decides), and callables.
_INTERNAL = {"self", "model", "num_shards", "args", "kwargs", "aggregate_fn"}
# Loss arguments that take an object: given by class name (looked up in the family's losses module, a subclass
# of the named base) or as ``{name: ClassName, <its keyword arguments>}``; null where the loss allows None.
OBJECT_ARGS = {"weighting_scheme": "BaseWeightingScheme", "lambda_weight": "PListMLELambdaWeight"}
# mine_hard_negatives arguments a config never sets (the data and the models come from the config itself).
_MINING_INTERNAL = {"dataset", "model", "cross_encoder"}


def family_module(family: str, what: str):
    """``<family package>.<what>`` (``losses`` or ``evaluation``), or a ConfigError naming the families."""
    if family not in FAMILIES:
        raise ConfigError(f"config key 'model.family': unknown model family {family!r}; "
                          f"allowed values: {sorted(FAMILIES)}")
    return importlib.import_module(f"{FAMILIES[family]}.{what}")


def family_class(table: dict, family: str):
    """The class ``table[family]`` names (TRAINERS, ARGUMENTS)."""
    family_module(family, "losses")  # the family check
    module, name = table[family]
    return getattr(importlib.import_module(module), name)


def _is_base(cls) -> bool:
    """The loss base classes (``base.loss.Loss``, a family's ``_common`` bases): not losses a config can train with."""
    return cls.__module__ == "stcore_jax.base.loss" or cls.__module__.endswith("._common")


def loss_classes(family: str = DEFAULT_FAMILY) -> dict:
    """``{name: class}`` of the losses a config of ``family`` may name."""
    from stcore_jax.base.loss import Loss

    losses = family_module(family, "losses")
    found = {n: getattr(losses, n) for n in losses.__all__}
    return {n: c for n, c in found.items() if inspect.isclass(c) and issubclass(c, Loss) and not _is_base(c)}


def evaluator_columns(family: str = DEFAULT_FAMILY) -> dict:
    """Evaluators a config of ``family`` can name: name -> the row columns they read (``()``: none)."""
    family_module(family, "evaluation")  # the family check
    return EVALUATOR_COLUMNS[family]


def _other_family(name: str, family: str, what: str) -> str:
    """`` ({name} is a <family> loss/evaluator ...)`` when another family has ``name`` and this one does not."""
    for other in FAMILIES:
        if other == family:
            continue
        names = loss_classes(other) if what == "loss" else evaluator_columns(other)
        if name in names:
            return (f"; {name} is a {other} {what}, and this config trains a {family} model (model.family: {family})"
                    f" — pick a {family} {what}, or set model.family: {other}")
    return ""


def _params(cls) -> dict:
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n not in _INTERNAL and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _object_spec(value, key: str):
    """``(class name, its kwargs)`` of an OBJECT_ARGS value (``"Name"`` or ``{name: Name, ...}``)."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        inner = {a: b for a, b in value.items() if a != "name"}
        return value["name"], inner.get("kwargs", inner)
    raise ConfigError(f"config key {key!r} must be a class name or a mapping with a 'name', e.g. "
                      f"NDCGLoss2PPScheme or {{name: NDCGLoss2PPScheme, mu: 10.0}}, got {value!r}")


def _object_classes(family: str, base_name: str) -> dict:
    """The classes an OBJECT_ARGS argument may name: ``base_name`` and its subclasses (an abstract ``Base*``
    left out)."""
    losses = family_module(family, "losses")
    base, out = getattr(losses, base_name), {}
    for n in losses.__all__:
        c = getattr(losses, n)
        if inspect.isclass(c) and issubclass(c, base) and not (c is base and n.startswith("Base")):
            out[n] = c
    return out


def _check_object(arg: str, value, key: str, family: str) -> None:
    if value is None:
        return
    name, kwargs = _object_spec(value, key)
    classes = _object_classes(family, OBJECT_ARGS[arg])
    if name not in classes:
        raise ConfigError(f"config key {key!r}: unknown {arg} {name!r}; allowed values: {sorted(classes)} (or null)")
    params = _params(classes[name])
    for k in kwargs:
        if k not in params or k.endswith("_fn"):
            raise ConfigError(f"config key '{key}.{k}': {name} has no argument {k!r} a config can set; "
                              f"allowed: {sorted(p for p in params if not p.endswith('_fn'))}")


def _check_activation(value, key: str) -> None:
    """A loss's ``activation_fn`` by name (``sigmoid``, ``identity``, a torch dotted path), checked by the losses' own
    resolver, so the message lists what it accepts."""
    if value is None:
        return
    from stcore_jax.cross_encoder.losses._common import resolve_activation

    if not isinstance(value, str):
        raise ConfigError(f"config key {key!r} must be an activation name (e.g. sigmoid, identity), got {value!r}")
    try:
        resolve_activation(value)
    except ValueError as e:
        raise ConfigError(f"config key {key!r}: {e}") from None


def check_loss(name, kwargs: dict, key: str = "loss", family: str = DEFAULT_FAMILY, num_labels: int | None = None,
               wrapped: bool = False):
    """Raise ValueError naming ``key`` if ``name``/``kwargs`` do not describe a known loss of ``family``
    (``num_labels``: the CrossEncoder's, where the config sets it; most CrossEncoder losses need 1;
    ``wrapped``: the inner loss of a wrapper, ``key`` ending in ``.kwargs.loss``)."""
    classes = loss_classes(family)
    if not isinstance(name, str) or name not in classes:
        hint = _other_family(name, family, "loss") if isinstance(name, str) else ""
        raise ConfigError(f"config key '{key}.name': unknown loss {name!r}{hint}; allowed values: {sorted(classes)}")
    cls = classes[name]
    params = _params(cls)
    for k, v in kwargs.items():
        if k not in params:
            raise ConfigError(f"config key '{key}.kwargs.{k}': {name} has no argument {k!r}; "
                              f"allowed: {sorted(params)}")
        if k in ("loss", "guide", "teacher"):
            if k == "loss":
                if not isinstance(v, dict) or "name" not in v:
                    raise ConfigError(f"config key '{key}.kwargs.loss' must be a mapping with a 'name' "
                                      f"(the inner loss), e.g. {{name: MultipleNegativesRankingLoss}}")
                inner = {a: b for a, b in v.items() if a != "name"}
                check_loss(v["name"], inner.get("kwargs", inner), f"{key}.kwargs.loss", family, num_labels, True)
            else:
                raise ConfigError(f"config key '{key}.kwargs.{k}': a model argument cannot come from a config; "
                                  "use the Python API for losses that need a second model")
        elif k in OBJECT_ARGS and family == "cross_encoder":
            _check_object(k, v, f"{key}.kwargs.{k}", family)
        elif k == "activation_fn" and family == "cross_encoder":
            _check_activation(v, f"{key}.kwargs.{k}")
    if family == "sparse_encoder":
        _check_sparse_loss(name, cls, kwargs, key, wrapped)
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"config key '{key}.kwargs': {name} needs {missing}")
    if num_labels is not None and num_labels != 1 and not getattr(cls, "any_num_labels", True):
        raise ConfigError(f"config key '{key}.name': {name} needs a CrossEncoder with 1 label, but model.num_labels is "
                          f"{num_labels}; use CrossEntropyLoss for several labels")


def _check_sparse_loss(name: str, cls, kwargs: dict, key: str, wrapped: bool) -> None:
    """The SparseEncoderTrainer's rules, before a model loads: a Sparse* ranking loss (or FlopsLoss) is wrapped by
    SpladeLoss or CSRLoss (alone it would not keep the embeddings sparse), SpladeLoss has its document weight and an
    embedding loss inside, and its regulariser objects are not set from a config (their thresholds are)."""
    wrap = ("{name: SpladeLoss, kwargs: {loss: {name: %s}, document_regularizer_weight: 3.0e-5, "
            "query_regularizer_weight: 5.0e-5}}")
    if not wrapped and callable(getattr(cls, "standalone_error", None)):
        raise ConfigError(f"config key '{key}.name': {name} should not be used alone; wrap it in SpladeLoss or "
                          f"CSRLoss, e.g. loss: {wrap % name}")
    inner = kwargs.get("loss")
    if isinstance(inner, dict) and not getattr(loss_classes("sparse_encoder").get(inner.get("name")),
                                                "can_be_base_loss", True):
        raise ConfigError(f"config key '{key}.kwargs.loss.name': {name} cannot wrap {inner['name']}; the base loss is "
                          f"an embedding loss such as SparseMultipleNegativesRankingLoss or SparseMarginMSELoss")
    for k in ("document_regularizer", "query_regularizer"):
        if kwargs.get(k) is not None:
            raise ConfigError(f"config key '{key}.kwargs.{k}': a regulariser object cannot come from a config; the "
                              f"default FlopsLoss is used (set {k}_threshold, {k}_weight)")
    if issubclass(cls, loss_classes("sparse_encoder")["SpladeLoss"]) and kwargs.get(
            "document_regularizer_weight") is None:
        example = wrap % "SparseMultipleNegativesRankingLoss"
        raise ConfigError(f"config key '{key}.kwargs.document_regularizer_weight': {name} needs it (the FLOPS "
                          f"weight on the documents; no default, as in sentence-transformers), e.g. {example}")


def _build_object(family: str, arg: str, value):
    if value is None:
        return None
    name, kwargs = _object_spec(value, arg)
    return _object_classes(family, OBJECT_ARGS[arg])[name](**kwargs)


def build_loss(model, name: str, kwargs: dict, family: str = DEFAULT_FAMILY):
    """The loss object for a checked config (nested ``loss`` and object arguments built first)."""
    kwargs = dict(kwargs)
    if "loss" in kwargs:
        inner = {a: b for a, b in kwargs["loss"].items() if a != "name"}
        kwargs["loss"] = build_loss(model, kwargs["loss"]["name"], inner.get("kwargs", inner), family)
    if family == "cross_encoder":
        for arg in OBJECT_ARGS:
            if arg in kwargs:
                kwargs[arg] = _build_object(family, arg, kwargs[arg])
    return loss_classes(family)[name](model, **kwargs)


def check_evaluator(name, kwargs: dict, key: str = "evaluator", family: str = DEFAULT_FAMILY) -> None:
    if name is None:
        return
    columns = evaluator_columns(family)
    if name not in columns:
        hint = _other_family(name, family, "evaluator") if isinstance(name, str) else ""
        raise ConfigError(f"config key '{key}.name': unknown evaluator {name!r}{hint}; allowed values: "
                          f"{sorted(columns)} (or null for none)")
    cls = getattr(family_module(family, "evaluation"), name)
    params = {n for n in _params(cls) if n not in columns[name] and n not in ROW_ARGS.get(name, ())}
    for k in kwargs:
        if k not in params:
            raise ConfigError(f"config key '{key}.kwargs.{k}': {name} has no argument {k!r}; allowed: {sorted(params)}")


def build_evaluator(name: str, args: list, kwargs: dict, family: str = DEFAULT_FAMILY):
    """``args``: the constructor's row arguments (for the bi-encoder's evaluators, the row lists in the order of
    ``evaluator_columns(family)[name]``)."""
    return getattr(family_module(family, "evaluation"), name)(*args, **kwargs)


def check_mining(kwargs: dict, key: str) -> None:
    """``mine_hard_negatives`` keyword arguments from a config (names by signature)."""
    from stcore_jax.util.hard_negatives import mine_hard_negatives

    params = {n for n in inspect.signature(mine_hard_negatives).parameters if n not in _MINING_INTERNAL}
    for k in kwargs:
        if k not in params:
            raise ConfigError(f"config key '{key}.{k}': mine_hard_negatives has no argument {k!r} a config can set; "
                              f"allowed: {sorted(params)}")


def activation_path(value, key: str) -> str:
    """A CrossEncoder's ``activation_fn`` from a config (``sigmoid``, ``Identity``, or the torch dotted path
    sentence-transformers saves) -> that dotted path, which the model maps to its JAX function."""
    from stcore_jax.cross_encoder.activation import TORCH_ACTIVATIONS

    short = {path.rsplit(".", 1)[1].lower(): path for path in TORCH_ACTIVATIONS}
    if isinstance(value, str) and value in TORCH_ACTIVATIONS:
        return value
    if isinstance(value, str) and value.lower() in short:
        return short[value.lower()]
    raise ConfigError(f"config key {key!r}: unknown activation {value!r}; allowed values: {sorted(short)} (or their "
                      f"torch paths, e.g. torch.nn.modules.activation.Sigmoid)")
