"""Bad input, catalogued: model loading, encode, datasets, losses, arguments, configs, evaluators, CLI.

Every case must raise a clear error -- what is wrong, where (file, key, dataset/column/row, argument),
and how to fix it when there is a fix to name -- before anything is compiled (no XLA compilation
happens during the failing call, as seen by a compile listener that ``test_compile_listener_sees_compiles``
shows does see compilations; for ``train()`` cases the trainer's step-trace counter stays 0) and
without leaving anything half-written (``output_dir`` absent or empty).

Many cases were silent wrong outputs before they were errors (NaN embeddings, a loss on wrapped class
ids, ignored options): ``SILENT_OUTPUTS.md`` beside this file lists what was tried, what happened, what
the PyTorch reference does, and which were fixed.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Callable

import jax
import numpy as np
import pytest
from datasets import Dataset
from safetensors.numpy import load_file, save_file

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.cli.commands import InputError
from stcore_jax.config import ConfigError
from stcore_jax.evaluation import EmbeddingSimilarityEvaluator
from stcore_jax.losses import (
    AdaptiveLayerLoss,
    CachedMultipleNegativesRankingLoss,
    CoSENTLoss,
    CosineSimilarityLoss,
    Matryoshka2dLoss,
    MatryoshkaLoss,
    MultipleNegativesRankingLoss,
    OnlineContrastiveLoss,
    SoftmaxLoss,
)

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@dataclasses.dataclass
class Case:
    id: str
    run: Callable  # (ctx) -> None; must raise
    exc: type
    patterns: tuple  # regexes the message must match (what / where / how to fix)


@dataclasses.dataclass
class Ctx:
    tmp: object
    out: str
    model: SentenceTransformer
    model_dir: str

    def args(self, **kw):
        return SentenceTransformerTrainingArguments(output_dir=self.out, disable_tqdm=True, **kw)

    def trainer(self, data, loss=None, **kw):
        return SentenceTransformerTrainer(model=self.model, args=self.args(**kw), train_dataset=data,
                                          loss=loss or CoSENTLoss(self.model))

    def model_copy(self, edit):
        dst = self.tmp / "model"
        shutil.copytree(self.model_dir, dst)
        edit(dst)
        return str(dst)


def _pairs(**cols):
    base = {"a": ["x y", "u v", "p q"], "b": ["y z", "v w", "q r"], "score": [0.5, 0.1, 0.2]}
    base.update(cols)
    return Dataset.from_dict({k: v for k, v in base.items() if v is not None})


def _edit_json(name, fn):
    def edit(d):
        p = d / name
        obj = json.loads(p.read_text())
        fn(obj)
        p.write_text(json.dumps(obj))
    return edit


def _edit_weights(fn):
    def edit(d):
        t = load_file(d / "model.safetensors")
        fn(t)
        save_file(t, d / "model.safetensors", metadata={"format": "pt"})
    return edit


def _resume(ctx, where):
    data = _pairs(a=["x y"] * 16, b=["y z"] * 16, score=[0.5] * 16)
    trainer = ctx.trainer(data)
    try:
        trainer.train(resume_from_checkpoint=where(ctx))
    finally:
        assert trainer.compile_count[0] == 0  # failed before the step was traced


def _write(ctx, name, text):
    p = ctx.tmp / name
    p.write_text(text)
    return str(p)


def _config(ctx, text):
    from stcore_jax.config import load_config

    return load_config(_write(ctx, "run.yaml", text))


def _assign(ctx, attr, value):
    """``model.attr = value`` on the shared model, restored whatever happens (a regression must not leak)."""
    old = getattr(ctx.model, attr)
    try:
        setattr(ctx.model, attr, value)
    finally:
        setattr(ctx.model, attr, old)


def _robertaish(max_seq_length):
    """The tiny BERT relabelled RoBERTa (positions from pad_token_id + 1 = 2: 158 of its 160 rows usable), with
    ``max_seq_length`` saved in sentence_bert_config.json."""
    def edit(d):
        _edit_json("config.json", lambda o: o.update(model_type="roberta", pad_token_id=1))(d)
        (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return edit


def _labelled(labels):
    return Dataset.from_dict({"a": ["x y", "u v", "p q"], "b": ["y z", "v w", "q r"], "label": labels})


def _encode_file(ctx, text):
    """``stcore-jax encode`` as the command line runs it, minus main()'s catching of InputError."""
    from stcore_jax.cli.main import build_parser

    args = build_parser().parse_args(["encode", ctx.model_dir, "--input", _write(ctx, "in.txt", text),
                                      "--output", str(ctx.tmp / "e.npy")])
    return args.func(args)


def _build_model(ctx, model_yaml):
    from stcore_jax.config.build import build_model

    return build_model(_config(ctx, f"model: {model_yaml}\n"))


def _per_layer_on_static(ctx, loss_knows_model=True):
    """AdaptiveLayerLoss for a StaticEmbedding model (no encoder layers), given to its trainer: built with the model
    (it checks it, as the reference asserts), or without (the trainer's check). The static table is
    the tiny BERT's word embeddings: a table of a shape already placed on the device, since placing a new one
    compiles a transfer, which the no-compile check would count."""
    from tokenizers import Tokenizer

    from stcore_jax.models import StaticEmbedding

    table = np.asarray(ctx.model.params["0"]["embeddings"]["word_embeddings"]["embedding"])
    static = SentenceTransformer(modules=[StaticEmbedding(Tokenizer.from_file(f"{ctx.model_dir}/tokenizer.json"),
                                                          embedding_weights=table)])
    given = static if loss_knows_model else None
    return SentenceTransformerTrainer(model=static, args=ctx.args(), train_dataset=_pairs(score=None),
                                      loss=AdaptiveLayerLoss(given, MultipleNegativesRankingLoss(given)))


BAD_LENGTH_BUCKETS = [0, -2, (), (64, 32), (16, 0), "auto", 2.5]


CASES = [
    # -- model loading ------------------------------------------------------------------------
    Case("model/path-missing", lambda c: SentenceTransformer(str(c.tmp / "nope")), FileNotFoundError,
         (r"nope", r"does not exist")),
    Case("model/hub-id-offline", lambda c: SentenceTransformer("some-org/not-cached-anywhere"), OSError,
         (r"some-org/not-cached-anywhere", r"offline", r"local directory")),
    Case("model/unsupported-architecture",
         lambda c: SentenceTransformer(c.model_copy(_edit_json("config.json", lambda o: o.update(model_type="gpt2")))),
         ValueError, (r"gpt2", r"bert.*distilbert.*mpnet.*roberta")),
    Case("model/weights-file-missing",
         lambda c: SentenceTransformer(c.model_copy(lambda d: (d / "model.safetensors").unlink())),
         FileNotFoundError, (r"model\.safetensors",)),
    Case("model/weight-wrong-shape",
         lambda c: SentenceTransformer(c.model_copy(_edit_weights(lambda t: t.__setitem__(
             "encoder.layer.1.attention.self.query.weight", np.zeros((32, 31), np.float32))))),
         ValueError, (r"encoder\.layer\.1\.attention\.self\.query\.weight", r"\(32, 31\)", r"\(32, 32\)")),
    Case("model/weight-missing",
         lambda c: SentenceTransformer(c.model_copy(_edit_weights(lambda t: t.pop("embeddings.LayerNorm.weight")))),
         ValueError, (r"embeddings\.LayerNorm\.weight",)),
    Case("model/unknown-module-type",
         lambda c: SentenceTransformer(c.model_copy(_edit_json(
             "modules.json", lambda o: o[1].update(type="my_package.FancyPooling")))),
         ValueError, (r"FancyPooling", r"supported")),
    # a length past the position table used to embed to NaN (XLA's gather fills out-of-range rows with NaN)
    Case("model/max-seq-length-past-positions", lambda c: _assign(c, "max_seq_length", 161), ValueError,
         (r"max_seq_length=161", r"exceeds the 160 positions", r"at most 160")),
    Case("model/max-seq-length-past-positions-on-load", lambda c: SentenceTransformer(c.model_copy(_robertaish(159))),
         ValueError, (r"sentence_bert_config\.json", r"max_seq_length=159", r"158 positions",
                      r"max_position_embeddings=160 less 2", r"at most 158")),
    Case("model/max-seq-length-not-an-integer", lambda c: _assign(c, "max_seq_length", 2.7), ValueError,
         (r"max_seq_length", r"positive integer", r"2\.7")),
    Case("model/length-buckets-past-positions", lambda c: SentenceTransformer(c.model_dir, length_buckets=(32, 256)),
         ValueError, (r"length_buckets=\(32, 256\)", r"256 exceeds the 160 positions")),
    Case("model/truncate-dim-negative", lambda c: SentenceTransformer(c.model_dir, truncate_dim=-4), ValueError,
         (r"truncate_dim", r"positive integer", r"-4")),
    Case("model/unknown-similarity-fn-name", lambda c: _assign(c, "similarity_fn_name", "cosinus"), ValueError,
         (r"'cosinus'", r"SimilarityFunction")),
    # -- encode -------------------------------------------------------------------------------
    Case("encode/truncate-dim-negative", lambda c: c.model.encode(["x y"], truncate_dim=-1), ValueError,
         (r"truncate_dim", r"positive integer", r"-1")),
    Case("encode/unknown-keyword", lambda c: c.model.encode(["x y"], normalise_embeddings=True), ValueError,
         (r"unexpected keyword", r"normalise_embeddings")),
    Case("encode/dict-input", lambda c: c.model.encode({"query": "x y"}), TypeError,
         (r"got a dict", r"\['query'\]", r"list\(d\.values\(\)\)")),
    Case("encode/prompt-name-unknown", lambda c: c.model.encode(["x y"], prompt_name="qeury"), ValueError,
         (r"'qeury' not found", r"document.*query")),
    Case("encode/batch-size-negative", lambda c: c.model.encode(["x y"], batch_size=-8), ValueError,
         (r"batch_size", r"positive", r"-8")),
    # -- datasets -----------------------------------------------------------------------------
    Case("data/column-count", lambda c: c.trainer(_pairs(c=["z w"] * 3)), ValueError,
         (r"'train'", r"\['a', 'b', 'c'\]", r"CoSENTLoss", r"2")),
    Case("data/label-missing", lambda c: c.trainer(_pairs(score=None)), ValueError,
         (r"'train'", r"CoSENTLoss", r"label/labels/score/scores")),
    Case("data/label-for-label-free-loss",
         lambda c: c.trainer(_pairs(score=None, label=[1, 0, 1]), MultipleNegativesRankingLoss(c.model)), ValueError,
         (r"MultipleNegativesRankingLoss", r"no label", r"'label'")),
    Case("data/label-not-a-number", lambda c: c.trainer(_pairs(score=["high", "low", "mid"])), ValueError,
         (r"'train'", r"label column 'score', row 0", r"numbers")),
    Case("data/label-nan", lambda c: c.trainer(_pairs(score=[0.5, float("nan"), 0.2])), ValueError,
         (r"'train'", r"'score', row 1", r"NaN")),
    Case("data/text-none", lambda c: c.trainer(_pairs(b=["y z", None, "q r"])), ValueError,
         (r"'train', column 'b', row 1", r"None", r"drop or fill", r"filter")),
    Case("data/text-empty", lambda c: c.trainer(_pairs(b=["y z", "   ", "q r"])), ValueError,
         (r"'train', column 'b', row 1", r"empty", r"drop or fill")),
    Case("data/text-not-a-string", lambda c: c.trainer(_pairs(b=[7, 8, 9])), ValueError,
         (r"'train', column 'b', row 0", r"expected a string, got int", r"one text")),
    Case("data/reserved-column", lambda c: c.trainer(_pairs(dataset_name=["s", "s", "s"])), ValueError,
         (r"'train'", r"dataset_name", r"reserved", r"rename")),
    Case("data/no-input-columns", lambda c: c.trainer(Dataset.from_dict({"score": [0.5]})), ValueError,
         (r"'train'", r"no input columns", r"\['score'\]")),
    Case("data/streaming-without-max-steps", lambda c: c.trainer(_pairs().to_iterable_dataset()), ValueError,
         (r"train_dataset", r"IterableDataset", r"no length", r"set max_steps", r"from_generator|take")),
    Case("data/streaming-eval",
         lambda c: SentenceTransformerTrainer(model=c.model, args=c.args(), train_dataset=_pairs(),
                                              eval_dataset=_pairs().to_iterable_dataset(), loss=CoSENTLoss(c.model)),
         ValueError,
         (r"eval", r"IterableDataset", r"train_dataset only", r"from_generator|take")),
    Case("data/not-a-dataset", lambda c: c.trainer([("x y", "y z", 0.5)]), ValueError,
         (r"train", r"datasets\.Dataset, DatasetDict or dict", r"got list")),
    Case("data/eval-strategy-without-eval-data", lambda c: c.trainer(_pairs(), eval_strategy="epoch"), ValueError,
         (r"eval_strategy='epoch'", r"eval_dataset or an evaluator")),
    Case("data/empty", lambda c: c.trainer(_pairs().select([])), ValueError,
         (r"Dataset 'train' is empty", r"0 rows", r"split, filter or select")),
    Case("data/empty-in-dict",
         lambda c: SentenceTransformerTrainer(model=c.model, args=c.args(), train_dataset={"sts": _pairs(),
                                              "nli": _pairs().select([])}, loss=CoSENTLoss(c.model)),
         ValueError, (r"Dataset 'nli' is empty", r"0 rows")),
    Case("data/label-lists-ragged", lambda c: c.trainer(_pairs(score=[[0.1, 0.2], [0.3], [0.4, 0.5]])), ValueError,
         (r"'train', label column 'score'", r"same length \(found lengths 1, 2\)")),
    # labels a loss cannot use: they trained silently (class id 3 of 3 gathered NaN and the step was skipped,
    # -1 wrapped to the last class, 1.5 was truncated; OnlineContrastiveLoss ignored label 2; cosine chased 4.2)
    Case("data/softmax-label-out-of-range", lambda c: c.trainer(_labelled([0, 3, -1]), SoftmaxLoss(c.model, 32, 3)),
         ValueError, (r"'train', label column 'label', row 1", r"SoftmaxLoss needs integer class ids 0\.\.2",
                      r"num_labels=3", r"got 3", r"2 row\(s\)")),
    Case("data/softmax-label-not-integer", lambda c: c.trainer(_labelled([0, 1.5, 1]), SoftmaxLoss(c.model, 32, 3)),
         ValueError, (r"row 1", r"integer class ids", r"got 1\.5")),
    Case("data/online-contrastive-label", lambda c: c.trainer(_labelled([0, 2, 1]), OnlineContrastiveLoss(c.model)),
         ValueError, (r"row 1", r"OnlineContrastiveLoss needs labels 0 or 1", r"ignored", r"got 2")),
    Case("data/cosine-score-range", lambda c: c.trainer(_pairs(score=[0.5, 4.2, 2.0]), CosineSimilarityLoss(c.model)),
         ValueError, (r"'score', row 1", r"\[-1, 1\]", r"divided by 5", r"got 4\.2", r"2 row\(s\)")),
    Case("data/cosine-score-range-under-matryoshka",
         lambda c: c.trainer(_pairs(score=[0.5, 4.2, 2.0]),
                             MatryoshkaLoss(c.model, CosineSimilarityLoss(c.model), [32, 16])),
         ValueError, (r"'score', row 1", r"CosineSimilarityLoss needs scores in \[-1, 1\]")),
    # -- losses -------------------------------------------------------------------------------
    Case("loss/dict-missing-dataset",
         lambda c: SentenceTransformerTrainer(model=c.model, args=c.args(),
                                              train_dataset={"sts": _pairs(), "nli": _pairs(score=None)},
                                              loss={"sts": CoSENTLoss(c.model)}), ValueError,
         (r"\['sts'\]", r"datasets \['nli'\] have no loss", r"give every train/eval dataset name a loss")),
    Case("loss/matryoshka-dim-too-large",
         lambda c: MatryoshkaLoss(c.model, MultipleNegativesRankingLoss(c.model), [64, 16]), ValueError,
         (r"matryoshka_dims", r"embedding dimension of 32")),
    # per-layer losses (AdaptiveLayerLoss, Matryoshka2dLoss) where they cannot train: these used to raise
    # NotImplementedError at the first traced step, whatever the setup
    Case("loss/per-layer-with-packing",
         lambda c: c.trainer(_pairs(score=None), AdaptiveLayerLoss(c.model, MultipleNegativesRankingLoss(c.model)),
                             sequence_packing=True), ValueError,
         (r"sequence_packing=True", r"AdaptiveLayerLoss", r"per-layer", r"sequence_packing=None")),
    *[Case(f"loss/per-layer-static-embedding{suffix}", lambda c, k=knows: _per_layer_on_static(c, k), ValueError,
           (r"AdaptiveLayerLoss", r"input module must be a Transformer encoder", r"StaticEmbedding",
            r"wrapped loss on its own")) for suffix, knows in (("", True), ("-in-trainer", False))],
    Case("loss/per-layer-around-gradcache",
         lambda c: Matryoshka2dLoss(c.model, CachedMultipleNegativesRankingLoss(c.model), [32, 16]), ValueError,
         (r"Matryoshka2dLoss cannot wrap CachedMultipleNegativesRankingLoss", r"GradCache", r"mini_batch_size=32",
          r"not compatible", r"uncached loss")),
    Case("loss/matryoshka-around-per-layer",
         lambda c: MatryoshkaLoss(c.model, AdaptiveLayerLoss(c.model, MultipleNegativesRankingLoss(c.model)), [32]),
         ValueError, (r"MatryoshkaLoss cannot wrap AdaptiveLayerLoss", r"layer_embeddings", r"other way round",
                      r"Matryoshka2dLoss")),
    Case("loss/matryoshka-weights-length",
         lambda c: MatryoshkaLoss(c.model, MultipleNegativesRankingLoss(c.model), [32, 16], matryoshka_weights=[1.0]),
         ValueError, (r"matryoshka_weights", r"same length as matryoshka_dims")),
    # -- arguments ----------------------------------------------------------------------------
    Case("args/scheduler", lambda c: c.args(lr_scheduler_type="warmup_stable"), ValueError,
         (r"lr_scheduler_type='warmup_stable'", r"cosine", r"linear")),
    Case("args/batch-sampler", lambda c: c.args(batch_sampler="random"), ValueError,
         (r"batch_sampler='random'", r"no_duplicates", r"callable")),
    Case("args/fp16", lambda c: c.args(fp16=True), ValueError, (r"fp16=True", r"bf16=True")),
    Case("args/eval-steps-missing", lambda c: c.args(eval_strategy="steps"), ValueError,
         (r'eval_strategy="steps"', r"needs eval_steps")),
    Case("args/batch-size-zero", lambda c: c.args(per_device_train_batch_size=0), ValueError,
         (r"per_device_train_batch_size", r"positive integer", r"got 0")),
    Case("args/nonfinite-policy", lambda c: c.args(nonfinite_policy="explode"), ValueError,
         (r"nonfinite_policy", r"'skip' or 'stop'", r"'explode'")),
    Case("args/best-model-without-eval", lambda c: c.args(load_best_model_at_end=True), ValueError,
         (r"load_best_model_at_end", r"eval_strategy other than 'no'")),
    Case("args/global-batch-not-divisible", lambda c: c.trainer(_pairs(), train_batch_size=12), ValueError,
         (r"train_batch_size=12", r"data-parallel size 8", r"multiple of 8")),
    Case("args/mesh-too-large", lambda c: c.trainer(_pairs(), mesh_shape={"data": 16}), ValueError,
         (r"mesh_shape", r"needs 16 devices but only 8", r"at most the device count")),
    Case("args/mesh-unknown-axis", lambda c: c.trainer(_pairs(), mesh_shape={"model": 8}), ValueError,
         (r"unknown axes \['model'\]", r"allowed axes: data, fsdp")),
    Case("args/resume-not-a-checkpoint", lambda c: _resume(c, lambda c: str((c.tmp / "junk").mkdir() or c.tmp / "junk")),
         ValueError, (r"junk", r"is not a stcore_jax checkpoint", r"state/ and trainer_state\.json", r"checkpoint-500")),
    Case("args/resume-true-without-checkpoints", lambda c: _resume(c, lambda c: True), ValueError,
         (r"resume_from_checkpoint=True", r"has no complete checkpoint")),
    Case("args/multi-dataset-batch-sampler", lambda c: c.args(multi_dataset_batch_sampler="zigzag"), ValueError,
         (r"multi_dataset_batch_sampler='zigzag'", r"round_robin", r"proportional")),
    *[Case(f"args/length-buckets-{i}", lambda c, b=b: c.args(length_buckets=b), ValueError,
           (r"length_buckets must be", re.escape(repr(b)))) for i, b in enumerate(BAD_LENGTH_BUCKETS)],
    Case("args/length-buckets-past-positions", lambda c: c.trainer(_pairs(), length_buckets=(32, 512)), ValueError,
         (r"length_buckets=\(32, 512\)", r"512 exceeds the 160 positions", r"at most 160")),
    # optax would train with these; torch.optim.AdamW refuses them
    Case("args/learning-rate-negative", lambda c: c.args(learning_rate=-1e-4), ValueError,
         (r"learning_rate must be a number >= 0", r"-0\.0001")),
    Case("args/adam-beta-one", lambda c: c.args(adam_beta2=1.0), ValueError, (r"adam_beta2", r"in \[0, 1\)")),
    Case("args/save-steps-negative", lambda c: c.args(save_steps=-5), ValueError,
         (r"save_steps must be a number of steps", r"-5")),
    # -- configs (YAML runs, stcore_jax.config) ------------------------------------------------
    Case("config/file-missing", lambda c: __import__("stcore_jax.config", fromlist=["load_config"]).load_config(
        str(c.tmp / "missing.yaml")), ConfigError, (r"missing\.yaml", r"does not exist")),
    Case("config/invalid-yaml", lambda c: _config(c, "model: [unclosed\n"), ConfigError,
         (r"run\.yaml", r"not valid YAML", r"line")),
    Case("config/unknown-key", lambda c: _config(c, "modle:\n  name: x\n"), ConfigError,
         (r"'modle' is unknown", r"allowed keys", r"'model'")),
    Case("config/max-seq-length-past-positions",
         lambda c: _build_model(c, f"{{name_or_path: {c.model_dir}, max_seq_length: 400}}"), ConfigError,
         (r"config key 'model\.max_seq_length'", r"400 exceeds the 160 positions")),
    Case("config/length-buckets-past-positions",
         lambda c: _build_model(c, f"{{name_or_path: {c.model_dir}, length_buckets: [16, 400]}}"), ConfigError,
         (r"config key 'model\.length_buckets'", r"400 exceeds the 160 positions")),
    # -- evaluators ---------------------------------------------------------------------------
    Case("evaluator/triplet-margin-keys",
         lambda c: __import__("stcore_jax.evaluation", fromlist=["TripletEvaluator"]).TripletEvaluator(
             ["a"], ["b"], ["c"], margin={"cosinus": 0.1}), ValueError,
         (r"margin", r"\['cosinus'\]", r"cosine.*dot.*manhattan.*euclidean")),
    Case("evaluator/unknown-similarity",
         lambda c: EmbeddingSimilarityEvaluator(
             ["a", "b"], ["c", "d"], [0.1, 0.2], main_similarity="cosinus"), ValueError,
         (r"'cosinus'", r"SimilarityFunction")),
    Case("evaluator/unknown-similarity-fn-names",  # were skipped: no metric at all
         lambda c: EmbeddingSimilarityEvaluator(["a", "b"], ["c", "d"], [0.1, 0.2], similarity_fn_names=["cosinus"]),
         ValueError, (r"similarity_fn_names \['cosinus'\]", r"cosine.*manhattan.*euclidean.*dot")),
    Case("evaluator/nan-score",  # was ranked as a number
         lambda c: EmbeddingSimilarityEvaluator(["a", "b"], ["c", "d"], [0.1, float("nan")]), ValueError,
         (r"scores must be finite", r"scores\[1\] is nan", r"drop those pairs")),
    # -- command line -------------------------------------------------------------------------
    Case("cli/encode-blank-line", lambda c: _encode_file(c, "first\n\nthird\n"), InputError,  # rows shifted
         (r"in\.txt", r"line\(s\) \[2\] are blank", r"output row i is input line i")),
]


@pytest.fixture(scope="module")
def model(tiny_bert):
    return SentenceTransformer(tiny_bert)


@pytest.fixture
def compiles():
    """Backend compilations recorded while the test body runs."""
    events = []

    def listener(event, duration, **kw):
        if event == COMPILE_EVENT:
            events.append(kw.get("fun_name", "?"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    yield events
    jax.monitoring.unregister_event_duration_listener(listener)


def test_catalogue_is_large_and_covers_every_area():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    assert {c.id.split("/")[0] for c in CASES} == {"model", "encode", "data", "loss", "args", "config", "evaluator",
                                                   "cli"}


def test_compile_listener_sees_compiles(compiles):
    """Positive control for the catalogue's "nothing compiled" check: the same listener records a compilation
    (a fresh jitted function, with a constant no cache has seen; the library's encode and train steps are
    jitted functions too)."""
    import uuid

    import jax.numpy as jnp

    offset = uuid.uuid4().int % 10**6 / 7.0
    jax.jit(lambda x: x * 2.0 + offset)(jnp.arange(3.0)).block_until_ready()
    assert "jit(<lambda>)" in compiles, compiles


def test_silent_outputs_fixed_without_an_error(model, tiny_bert, tmp_path):
    """Silent wrong outputs of SILENT_OUTPUTS.md fixed by giving the right output rather than an error."""
    from stcore_jax.evaluation import InformationRetrievalEvaluator

    # A 6.x directory keeps max_seq_length as the tokenizer's model_max_length; past the 160 positions it was
    # used as is (NaN for long texts). Capped at the table, as the reference caps it.
    dst = tmp_path / "m"
    shutil.copytree(tiny_bert, dst)
    _edit_json("tokenizer_config.json", lambda o: o.update(model_max_length=1000))(dst)
    assert "max_seq_length" not in json.loads((dst / "sentence_bert_config.json").read_text())
    assert SentenceTransformer(str(dst)).max_seq_length == 160

    # An empty input with truncate_dim past the dimension: [0, 64] where any other input gives [N, 32].
    assert model.encode([], truncate_dim=64).shape == (0, 32)
    # A relevant document given as a bare id string was iterated as characters (none a corpus id: recall 0).
    corpus, queries = {"d1": "x", "d2": "y"}, {"q1": "x", "q2": "y"}
    ranking = np.array([[0, 1], [0, 1]])  # both queries rank d1 first
    metrics = [InformationRetrievalEvaluator(queries, corpus, qrels).compute_metrics_from_ranking(ranking)
               for qrels in ({"q1": "d1", "q2": "d2"}, {"q1": {"d1"}, "q2": {"d2"}})]
    as_str, as_set = metrics
    assert as_str == as_set and as_set["mrr@k"][10] == 0.75


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case, model, tiny_bert, tmp_path, compiles, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ctx = Ctx(tmp_path, str(tmp_path / "out"), model, tiny_bert)
    with pytest.raises(case.exc) as info:
        case.run(ctx)
    message = str(info.value)
    for pattern in case.patterns:
        assert re.search(pattern, message, re.S), f"{case.id}: {pattern!r} not in: {message}"
    assert compiles == [], f"{case.id}: compiled {compiles} before failing"
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir()), f"{case.id}: left {sorted(out.iterdir())}"
