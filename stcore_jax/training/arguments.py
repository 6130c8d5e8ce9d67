"""Training arguments: sentence-transformers / Hugging Face names and defaults.

``TrainingArguments`` holds every argument of the generic loop (training/trainer.py); as in
sentence-transformers 6, whose ``BaseTrainingArguments`` all three families share, the data arguments
(``prompts``, ``router_mapping``, the samplers) are among them, and each family has its named subclass
(``SentenceTransformerTrainingArguments`` here, importable from where it always was).

Everything is validated in ``__post_init__`` so a bad argument fails before any data is read or
anything is compiled. JAX additions: ``mesh_shape`` (data, fsdp), ``fsdp_min_size``, ``length_buckets``,
``sequence_packing`` and ``compute_dtype``; ``bf16`` selects bfloat16 compute with float32 master weights.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import numbers
from collections.abc import Callable
from typing import Any

SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
STRATEGIES = ("no", "steps", "epoch")
HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
OPTIMIZERS = ("adamw_torch_fused", "adamw_torch", "adamw_hf", "adamw", "adamw_jax", "sgd", "adafactor")


class BatchSamplers(str, enum.Enum):
    BATCH_SAMPLER = "batch_sampler"
    NO_DUPLICATES = "no_duplicates"
    NO_DUPLICATES_HASHED = "no_duplicates_hashed"
    GROUP_BY_LABEL = "group_by_label"


class MultiDatasetBatchSamplers(str, enum.Enum):
    ROUND_ROBIN = "round_robin"
    PROPORTIONAL = "proportional"


def _enum_or_callable(value, enum_cls, field):
    if callable(value) and not isinstance(value, (str, enum.Enum)):
        return value
    try:
        return enum_cls(value.value if isinstance(value, enum.Enum) else value)
    except ValueError:
        raise ValueError(
            f"{field}={value!r} is not a known sampler; use one of {[e.value for e in enum_cls]} or a callable/class"
        ) from None


def _maybe_json(value, field):
    if isinstance(value, str) and field != "prompts":
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{field} must be a dict or a JSON object string, got {value!r}: {e}") from None
    if isinstance(value, str) and value.strip().startswith("{"):
        return json.loads(value)
    return value


@dataclasses.dataclass
class TrainingArguments:
    output_dir: str | None = None
    overwrite_output_dir: bool = False
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: dict | None = None
    warmup_steps: float = 0
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch_fused"
    optim_args: str | None = None
    bf16: bool = False
    fp16: bool = False
    seed: int = 42
    data_seed: int | None = None
    eval_strategy: str = "no"
    eval_steps: float | None = None
    eval_on_start: bool = False
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None
    save_only_model: bool = False
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    logging_strategy: str = "steps"
    logging_steps: float = 500
    logging_first_step: bool = False
    logging_nan_inf_filter: bool = True
    report_to: Any = "none"
    run_name: str | None = None
    disable_tqdm: bool = False
    dataloader_drop_last: bool = False
    dataloader_num_workers: int = 0
    gradient_checkpointing: bool = False
    batch_sampler: Any = BatchSamplers.BATCH_SAMPLER
    multi_dataset_batch_sampler: Any = MultiDatasetBatchSamplers.PROPORTIONAL
    prompts: Any = None
    router_mapping: Any = dataclasses.field(default_factory=dict)
    learning_rate_mapping: Any = dataclasses.field(default_factory=dict)
    # Hugging Face Hub (transformers' names and defaults; uploads run in the background: training/hub_upload.py)
    push_to_hub: bool = False
    hub_model_id: str | None = None  # None: the basename of output_dir, in the token's namespace
    hub_strategy: str = "every_save"
    hub_private_repo: bool | None = None
    hub_token: str | None = None
    # JAX additions
    train_batch_size: int | None = None  # global batch; overrides per_device_train_batch_size when set
    mesh_shape: dict | None = None  # e.g. {"data": 8} or {"data": 4, "fsdp": 2}; default: all devices on data
    fsdp_min_size: int = 2**14  # with an fsdp axis: arrays of fewer elements stay replicated (training/sharding.py)
    length_buckets: tuple | int | None = None  # lengths; or how many to fit to the training batches (None: 4)
    sequence_packing: bool | None = None  # several sentences per encoder row; None: wherever the model and loss allow
    nonfinite_policy: str = "skip"  # "skip" the update and count it, or "stop"
    save_final_model: bool = True  # export output_dir/final in sentence-transformers format at the end
    # persistent XLA compilation cache (stcore_jax/compile_cache.py): None: $STCORE_JAX_COMPILATION_CACHE or
    # ~/.cache/stcore_jax/xla; a directory; or "off". A JAX_COMPILATION_CACHE_DIR the user set always wins.
    compilation_cache_dir: str | None = None
    aot_compile: bool = True  # compile the epoch's step shapes in a background thread while the first steps run

    def __post_init__(self):
        if self.output_dir is None:
            self.output_dir = "tmp_trainer"
        positive_ints = ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps")
        for f in positive_ints:
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{f} must be a positive integer, got {v!r}")
        # torch.optim.AdamW refuses these at the reference's first step; optax would run with them (a negative
        # learning rate ascends the loss, a beta >= 1 never forgets), so refuse them here.
        non_negative, below_one = (lambda v: v >= 0, ">= 0"), (lambda v: 0 <= v < 1, "in [0, 1)")
        for f, (ok, need) in (("learning_rate", non_negative), ("weight_decay", non_negative),
                              ("adam_epsilon", non_negative), ("adam_beta1", below_one), ("adam_beta2", below_one)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not ok(v):
                raise ValueError(f"{f} must be a number {need}, got {v!r}")
        for f in ("logging_steps", "save_steps", "eval_steps"):  # a negative one would act every step
            v = getattr(self, f)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or v < 0 or v > 1 and v != int(v):
                raise ValueError(f"{f} must be a number of steps (an integer), or a float in (0, 1) for a ratio of the "
                                 f"total steps; got {v!r}")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise ValueError(f"lr_scheduler_type={self.lr_scheduler_type!r} is not supported; "
                             f"choose one of {SCHEDULERS}")
        if self.optim not in OPTIMIZERS:
            raise ValueError(f"optim={self.optim!r} is not supported; choose one of {OPTIMIZERS}")
        for f in ("eval_strategy", "save_strategy", "logging_strategy"):
            v = getattr(self, f)
            v = v.value if isinstance(v, enum.Enum) else v
            if v not in STRATEGIES + (("best",) if f == "save_strategy" else ()):
                raise ValueError(f"{f}={v!r} is not supported; choose one of {STRATEGIES}")
            setattr(self, f, v)
        if self.eval_strategy == "steps" and not self.eval_steps:
            raise ValueError(
                'eval_strategy="steps" needs eval_steps (a number of steps, or a float < 1 for a ratio of the '
                'total steps)'
            )
        if self.save_strategy == "steps" and not self.save_steps:
            raise ValueError('save_strategy="steps" needs save_steps > 0')
        if self.logging_strategy == "steps" and not self.logging_steps:
            raise ValueError('logging_strategy="steps" needs logging_steps > 0')
        if self.warmup_steps < 0 or self.warmup_ratio < 0 or self.warmup_ratio >= 1:
            raise ValueError("warmup_steps must be >= 0 and warmup_ratio in [0, 1)")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ValueError("Set num_train_epochs > 0 or max_steps > 0")
        if self.load_best_model_at_end:
            if self.eval_strategy == "no":
                raise ValueError("load_best_model_at_end needs an eval_strategy other than 'no'")
            if self.save_strategy != self.eval_strategy and self.save_strategy != "best":
                raise ValueError(
                    f"load_best_model_at_end needs save_strategy == eval_strategy (got {self.save_strategy!r} and "
                    f"{self.eval_strategy!r})"
                )
            if self.save_strategy == "steps" and self.save_steps % self.eval_steps:
                raise ValueError(f"load_best_model_at_end needs save_steps ({self.save_steps}) to be a multiple of "
                                 f"eval_steps ({self.eval_steps})")
        if self.metric_for_best_model is None and self.load_best_model_at_end:
            self.metric_for_best_model = "loss"
        if self.metric_for_best_model is not None and not self.metric_for_best_model.startswith("eval_"):
            self.metric_for_best_model = "eval_" + self.metric_for_best_model
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        if self.fp16:
            raise ValueError(
                "fp16=True is not supported (it needs loss scaling, and TPUs have no fast float16): "
                "use bf16=True, native on TPU and recent GPUs"
            )
        if self.nonfinite_policy not in ("skip", "stop"):
            raise ValueError(f"nonfinite_policy must be 'skip' or 'stop', got {self.nonfinite_policy!r}")
        lb = self.length_buckets
        if lb is not None:
            if isinstance(lb, (list, tuple)):
                bad = any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in lb)
                if not lb or bad or list(lb) != sorted(lb):
                    raise ValueError(f"length_buckets must be increasing positive token lengths, e.g. (32, 64, 128), "
                                     f"or the number of buckets to fit to the data, e.g. 4; got {lb!r}")
                self.length_buckets = tuple(lb)
            elif not isinstance(lb, int) or isinstance(lb, bool) or lb < 1:
                raise ValueError(f"length_buckets must be a tuple of token lengths or a positive number of buckets to "
                                 f"fit to the data; got {lb!r}")
        self._check_hub_arguments()
        if self.sequence_packing not in (None, True, False):
            raise ValueError(f"sequence_packing must be True, False or None (pack wherever possible), "
                             f"got {self.sequence_packing!r}")
        if not isinstance(self.fsdp_min_size, int) or self.fsdp_min_size < 0:
            raise ValueError(f"fsdp_min_size must be an integer >= 0 (elements), got {self.fsdp_min_size!r}")
        self.batch_sampler = _enum_or_callable(self.batch_sampler, BatchSamplers, "batch_sampler")
        self.multi_dataset_batch_sampler = _enum_or_callable(
            self.multi_dataset_batch_sampler, MultiDatasetBatchSamplers, "multi_dataset_batch_sampler")
        self.prompts = _maybe_json(self.prompts, "prompts")
        self.router_mapping = _maybe_json(self.router_mapping, "router_mapping") or {}
        self.learning_rate_mapping = _maybe_json(self.learning_rate_mapping, "learning_rate_mapping") or {}
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to == "none" else [self.report_to]

    def _check_hub_arguments(self):
        """transformers' hub arguments, checked here so a typo fails before training, not at the first push."""
        strategy = self.hub_strategy.value if isinstance(self.hub_strategy, enum.Enum) else self.hub_strategy
        if strategy not in HUB_STRATEGIES:
            raise ValueError(f"hub_strategy={strategy!r} is not supported; choose one of {HUB_STRATEGIES}")
        self.hub_strategy = strategy
        if not isinstance(self.push_to_hub, bool):
            raise ValueError(f"push_to_hub must be True or False, got {self.push_to_hub!r}")
        if self.hub_private_repo not in (None, True, False):
            raise ValueError(f"hub_private_repo must be True, False or None (the namespace's default), "
                             f"got {self.hub_private_repo!r}")
        if self.hub_token is not None and (not isinstance(self.hub_token, str) or not self.hub_token):
            raise ValueError("hub_token must be a non-empty string (a Hugging Face access token) or None")
        repo = self.hub_model_id
        if repo is not None and (not isinstance(repo, str) or repo.count("/") > 1
                                 or not all(part.strip() for part in repo.split("/"))):
            raise ValueError(f"hub_model_id must be a repo name or 'namespace/name', got {repo!r}")

    @property
    def compute_dtype(self):
        import jax.numpy as jnp

        return jnp.bfloat16 if self.bf16 else jnp.float32

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.value if isinstance(v, enum.Enum) else (repr(v) if callable(v) else v)
        if out.get("hub_token") is not None:  # as transformers: never written into logs or model cards
            out["hub_token"] = "<HUB_TOKEN>"
        return out


@dataclasses.dataclass
class SentenceTransformerTrainingArguments(TrainingArguments):
    """The arguments of :class:`stcore_jax.SentenceTransformerTrainer` (the bi-encoder family)."""


def non_default_args(args: TrainingArguments) -> dict:
    """The arguments that differ from the defaults of their class (for the model card)."""
    default = type(args)(output_dir=args.output_dir)
    a, d = args.to_dict(), default.to_dict()
    return {k: v for k, v in a.items() if v != d[k]}


Sampler = Callable[..., Any]
