"""Bad input, catalogued: model loading, datasets, losses, arguments, configs, evaluators.

Every case must raise a clear error -- what is wrong, where (file, key, dataset/column/row, argument),
and how to fix it when there is a fix to name -- before anything is compiled (no XLA compilation
happens during the failing call; for ``train()`` cases the trainer's step-trace counter stays 0) and
without leaving anything half-written (``output_dir`` absent or empty).
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from typing import Callable

import jax
import numpy as np
import pytest
from datasets import Dataset
from safetensors.numpy import load_file, save_file

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.losses import CoSENTLoss, MatryoshkaLoss, MultipleNegativesRankingLoss

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
    # -- losses -------------------------------------------------------------------------------
    Case("loss/dict-missing-dataset",
         lambda c: SentenceTransformerTrainer(model=c.model, args=c.args(),
                                              train_dataset={"sts": _pairs(), "nli": _pairs(score=None)},
                                              loss={"sts": CoSENTLoss(c.model)}), ValueError,
         (r"\['sts'\]", r"datasets \['nli'\] have no loss", r"give every train/eval dataset name a loss")),
    Case("loss/matryoshka-dim-too-large",
         lambda c: MatryoshkaLoss(c.model, MultipleNegativesRankingLoss(c.model), [64, 16]), ValueError,
         (r"matryoshka_dims", r"embedding dimension of 32")),
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
    # -- configs (YAML runs, stcore_jax.config) ------------------------------------------------
    Case("config/file-missing", lambda c: __import__("stcore_jax.config", fromlist=["load_config"]).load_config(
        str(c.tmp / "missing.yaml")), Exception, (r"missing\.yaml", r"does not exist")),
    Case("config/invalid-yaml", lambda c: _config(c, "model: [unclosed\n"), Exception,
         (r"run\.yaml", r"not valid YAML", r"line")),
    Case("config/unknown-key", lambda c: _config(c, "modle:\n  name: x\n"), Exception,
         (r"'modle' is unknown", r"allowed keys", r"'model'")),
    # -- evaluators ---------------------------------------------------------------------------
    Case("evaluator/triplet-margin-keys",
         lambda c: __import__("stcore_jax.evaluation", fromlist=["TripletEvaluator"]).TripletEvaluator(
             ["a"], ["b"], ["c"], margin={"cosinus": 0.1}), ValueError,
         (r"margin", r"\['cosinus'\]", r"cosine.*dot.*manhattan.*euclidean")),
    Case("evaluator/unknown-similarity",
         lambda c: __import__("stcore_jax.evaluation", fromlist=["EmbeddingSimilarityEvaluator"]).EmbeddingSimilarityEvaluator(
             ["a", "b"], ["c", "d"], [0.1, 0.2], main_similarity="cosinus"), ValueError,
         (r"'cosinus'", r"SimilarityFunction")),
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
    assert {c.id.split("/")[0] for c in CASES} == {"model", "data", "loss", "args", "config", "evaluator"}


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
