"""``stcore-jax train`` configs for CrossEncoders (``model.family: cross_encoder``): the BCE hard-negative recipe
built from YAML equals the same recipe written in Python, a tiny random BertForSequenceClassification trains 2
steps through the CLI and its export equals the PyTorch reference's predictions, and bad configs (a bi-encoder
loss, unknown keys, ...) fail naming the key before a model loads."""

import json
import math
import os
import re

import numpy as np
import pytest
from datasets import Dataset

import tiny_models
from stcore_jax.cli import main
from stcore_jax.config import ConfigError, build, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "tpu_configs", "cross-encoder-bce-gpu-1x.yaml")
SIGMOID = "torch.nn.modules.activation.Sigmoid"


@pytest.fixture(scope="module")
def tiny_ce(tmp_path_factory, minilm_path, stsb_dir):
    """A tiny random BertForSequenceClassification (1 label, weights perturbed off their init), MiniLM's tokenizer."""
    import torch
    import transformers as tf

    from stcore_jax.config.datasets import load_stsb

    root = tmp_path_factory.mktemp("tiny_ce_cli")
    ds = load_stsb(str(stsb_dir), "train", 200)
    plain = tiny_models.build_hf("bert", str(root / "plain"), str(minilm_path), list(ds["sentence1"]) + list(ds["sentence2"]))
    torch.manual_seed(11)
    model = tf.AutoModelForSequenceClassification.from_config(tf.AutoConfig.from_pretrained(plain, num_labels=1))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(str(root / "cls1"))
    tf.AutoTokenizer.from_pretrained(plain).save_pretrained(str(root / "cls1"))
    return str(root / "cls1")


def _ce_yaml(tmp_path, ce, st, stsb_dir) -> str:
    text = f"""
model: {{family: cross_encoder, name_or_path: {ce}, num_labels: 1, activation_fn: sigmoid, max_seq_length: 16}}
data:
  train: {stsb_dir}
  eval: {stsb_dir}
  max_train_rows: 64
  max_eval_rows: 48
  hard_negatives:
    model: {st}
    min_label: 0.8
    kwargs: {{num_negatives: 3, range_min: 0, range_max: 100, sampling_strategy: top, output_format: labeled-pair,
             verbose: false}}
loss: {{name: BinaryCrossEntropyLoss, kwargs: {{pos_weight: 3}}}}
arguments:
  output_dir: {tmp_path / 'run'}
  max_steps: 2
  per_device_train_batch_size: 2
  learning_rate: 1.0e-3
  save_strategy: "no"
  logging_steps: 1
  length_buckets: [16]
evaluator:
  name: CrossEncoderRerankingEvaluator
  kwargs: {{name: stsb-dev, always_rerank_positives: false}}
  hard_negatives: {{model: {st}, min_label: 0.8, kwargs: {{num_negatives: 4, verbose: false}}}}
"""
    p = tmp_path / "ce.yaml"
    p.write_text(text)
    return str(p)


def _qa(stsb_dir, split, rows, min_score=0.8):
    from stcore_jax.config.datasets import load_stsb

    ds = load_stsb(str(stsb_dir), split, rows)
    keep = [i for i, s in enumerate(ds["score"]) if s >= min_score]
    return Dataset.from_dict({"sentence1": [ds["sentence1"][i] for i in keep],
                              "sentence2": [ds["sentence2"][i] for i in keep]})


def test_example_config_is_the_bce_recipe():
    """tpu_configs/cross-encoder-bce-gpu-1x.yaml (its mesh is checked with the other tpu_configs in test_config.py)."""
    from stcore_jax.cross_encoder import CrossEncoderTrainingArguments

    cfg = load_config(EXAMPLE)
    assert cfg.model.family == "cross_encoder" and cfg.model.num_labels == 1 and cfg.model.activation_fn == SIGMOID
    assert type(cfg.arguments) is CrossEncoderTrainingArguments
    assert cfg.loss.name == "BinaryCrossEntropyLoss" and cfg.loss.kwargs == {"pos_weight": 5}
    hn = cfg.data.hard_negatives
    assert hn.min_label == 0.8 and {k: hn.kwargs[k] for k in ("num_negatives", "range_min", "range_max",
                                                              "sampling_strategy", "output_format")} == {
        "num_negatives": 5, "range_min": 0, "range_max": 100, "sampling_strategy": "top",
        "output_format": "labeled-pair"}
    assert cfg.evaluator.name == "CrossEncoderRerankingEvaluator"
    assert cfg.evaluator.hard_negatives.kwargs["num_negatives"] == 30
    assert cfg.arguments.metric_for_best_model == "eval_stsb-dev_ndcg@10"


def test_config_builds_the_python_recipe(tmp_path, tiny_ce, tiny_cli_model, stsb_dir):
    """The YAML recipe's rows, evaluator samples, model and loss equal the ones the Python API builds."""
    import jax.numpy as jnp
    import torch

    from stcore_jax import CrossEncoder, SentenceTransformer
    from stcore_jax.cross_encoder.losses import BinaryCrossEntropyLoss
    from stcore_jax.util import mine_hard_negatives

    cfg = load_config(_ce_yaml(tmp_path, tiny_ce, tiny_cli_model, stsb_dir))
    train, ev = build.build_datasets(cfg)
    bi = SentenceTransformer(tiny_cli_model)
    expected = mine_hard_negatives(_qa(stsb_dir, "train", 64), bi, num_negatives=3, range_min=0, range_max=100,
                                   sampling_strategy="top", output_format="labeled-pair", verbose=False)
    assert train.column_names == ["sentence1", "sentence2", "label"] and len(train) > 10
    assert train.to_dict() == expected.to_dict()
    # min_label kept only the pairs scored >= 0.8 (of 64) as positives: a config that ignored it would differ
    positives = {(a, b) for a, b, y in zip(train["sentence1"], train["sentence2"], train["label"]) if y == 1}
    qa = _qa(stsb_dir, "train", 64)
    assert positives == set(zip(qa["sentence1"], qa["sentence2"])) and 3 < len(qa) < 40

    evaluator = build.build_evaluator(cfg, ev)
    hard = mine_hard_negatives(_qa(stsb_dir, "validation", 48), bi, num_negatives=4, include_positives=True,
                               output_format="n-tuple", verbose=False)
    samples = [{"query": r["sentence1"], "positive": [r["sentence2"]],
                "documents": [r[f"negative_{j}"] for j in range(1, 5)]} for r in hard]
    assert len(samples) > 3 and evaluator.samples == samples
    assert evaluator.name == "stsb-dev" and evaluator.always_rerank_positives is False

    model = build.build_model(cfg)
    assert isinstance(model, CrossEncoder) and model.num_labels == 1 and model.max_seq_length == 16
    assert model.activation_fn.path == SIGMOID
    loss = build.build_loss(cfg, model)
    assert type(loss) is BinaryCrossEntropyLoss and loss.pos_weight == 3.0
    # the loss the config built, on logits, equals torch's BCEWithLogitsLoss(pos_weight=3); without it, it differs
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=8).astype(np.float32), np.array([1, 0, 0, 0, 1, 0, 0, 0], np.float32)
    ours = float(loss.compute_loss_from_scores(jnp.asarray(logits), jnp.asarray(labels)))
    ref = float(torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(3.0))(torch.tensor(logits), torch.tensor(labels)))
    plain = float(torch.nn.BCEWithLogitsLoss()(torch.tensor(logits), torch.tensor(labels)))
    assert abs(ours - ref) <= 1e-6 * abs(ref) and abs(ours - plain) > 1e-2, (ours, ref, plain)


def test_cli_trains_a_tiny_cross_encoder(tmp_path, tiny_ce, tiny_cli_model, stsb_dir, capsys):
    """2 steps through ``stcore-jax train``; the export loads in PyTorch sentence-transformers with our predictions,
    and ``stcore-jax evaluate`` on it prints the metrics train printed."""
    from sentence_transformers import CrossEncoder as RefCrossEncoder

    from stcore_jax import CrossEncoder

    cfg = _ce_yaml(tmp_path, tiny_ce, tiny_cli_model, stsb_dir)
    assert main(["train", cfg]) == 0
    out = capsys.readouterr().out
    assert "trained 2 steps" in out
    trained = json.loads(out[out.index("{"): out.index("}") + 1])
    assert set(trained) >= {"stsb-dev_ndcg@10", "stsb-dev_map", "stsb-dev_base_ndcg@10"}
    losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "logs.jsonl") if '"loss"' in line]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)

    final = str(tmp_path / "run" / "final")
    pairs = [["A man is playing a flute.", "A man plays the flute."], ["A plane is taking off.", "A cat sleeps."],
             ["Hi", "The quick brown fox jumps over the lazy dog."]]
    ours = CrossEncoder(final).predict(pairs)
    ref = RefCrossEncoder(final, device="cpu")
    assert type(ref.activation_fn).__name__ == "Sigmoid"
    theirs = ref.predict(pairs)
    diff = float(np.abs(ours - theirs).max())
    assert diff <= 1e-5, diff
    before = CrossEncoder(tiny_ce).predict(pairs)
    assert float(np.abs(before - theirs).max()) > 100 * max(diff, 1e-7)  # trained: the comparison could fail

    assert main(["evaluate", final, cfg, "--output", str(tmp_path / "m.json")]) == 0
    evaluated = json.loads((tmp_path / "m.json").read_text())
    assert evaluated.keys() == trained.keys()
    np.testing.assert_allclose([evaluated[k] for k in trained], list(trained.values()), atol=1e-5)


def test_listwise_loss_objects_from_a_config():
    """LambdaLoss's weighting_scheme and PListMLELoss's lambda_weight by name: the built losses compute what the
    Python objects compute (and another mu, or no weighting, computes something else)."""
    import jax.numpy as jnp

    from stcore_jax.config import catalogue
    from stcore_jax.cross_encoder import losses as L

    rng = np.random.default_rng(1)
    scores = jnp.asarray(rng.normal(size=(4, 5)).astype(np.float32))
    labels = jnp.asarray(rng.integers(0, 4, size=(4, 5)).astype(np.float32))

    def value(loss):
        return float(loss.compute_loss_from_scores(scores, labels))

    def built(name, kwargs):
        catalogue.check_loss(name, kwargs, family="cross_encoder")
        return catalogue.build_loss(None, name, kwargs, family="cross_encoder")

    mu5 = built("LambdaLoss", {"weighting_scheme": {"name": "NDCGLoss2PPScheme", "mu": 5.0}, "k": 3})
    assert isinstance(mu5.weighting_scheme, L.NDCGLoss2PPScheme) and mu5.weighting_scheme.mu == 5.0
    assert value(mu5) == value(L.LambdaLoss(weighting_scheme=L.NDCGLoss2PPScheme(mu=5.0), k=3))
    assert abs(value(mu5) - value(built("LambdaLoss", {"weighting_scheme": "NDCGLoss2PPScheme", "k": 3}))) > 1e-4
    assert value(built("LambdaLoss", {"weighting_scheme": None})) == value(L.RankNetLoss())
    assert value(built("PListMLELoss", {"lambda_weight": None})) == value(L.ListMLELoss())
    assert value(built("PListMLELoss", {"lambda_weight": "PListMLELambdaWeight"})) == value(L.PListMLELoss())
    assert value(built("PListMLELoss", {})) != value(L.ListMLELoss())


GOOD = """
model: {family: cross_encoder, name_or_path: some/reranker}
data: {train: quickstart, eval: quickstart}
loss: {name: BinaryCrossEntropyLoss, kwargs: {pos_weight: 5}}
arguments: {output_dir: out, max_steps: 2}
evaluator: {name: CrossEncoderCorrelationEvaluator}
"""


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_good_cross_encoder_configs(tmp_path):
    cfg = load_config(_write(tmp_path, GOOD), ["model.activation_fn=Identity", "model.num_labels=1"])
    assert cfg.model.activation_fn == "torch.nn.modules.linear.Identity" and cfg.loss.kwargs == {"pos_weight": 5}
    three = load_config(_write(tmp_path, GOOD), ["model.num_labels=3", "loss.name=CrossEntropyLoss", "loss.kwargs={}",
                                                 "evaluator.name=CrossEncoderClassificationEvaluator"])
    assert three.model.num_labels == 3
    # NanoBEIR reads no rows: no data.eval needed; its datasets come from kwargs
    nano = load_config(_write(tmp_path, GOOD), ["data.eval=null", "evaluator.name=CrossEncoderNanoBEIREvaluator",
                                                "evaluator.kwargs={dataset_names: [nfcorpus], dataset_id: local/dir}"])
    assert nano.evaluator.kwargs["dataset_names"] == ["nfcorpus"]
    listwise = load_config(_write(tmp_path, GOOD), [
        "loss.name=LambdaLoss", "loss.kwargs={weighting_scheme: {name: NDCGLoss2PPScheme, mu: 5.0}, k: 10}"])
    assert listwise.loss.kwargs["weighting_scheme"] == {"name": "NDCGLoss2PPScheme", "mu": 5.0}


@pytest.mark.parametrize("overrides, match", [
    # a bi-encoder loss / evaluator given to a CrossEncoder config, and the other way round
    (["loss.name=CoSENTLoss", "loss.kwargs={}"],
     r"'loss.name': unknown loss 'CoSENTLoss'; CoSENTLoss is a sentence_transformer loss, and this config trains a "
     r"cross_encoder model \(model.family: cross_encoder\) — pick a cross_encoder loss, or set model.family: "
     r"sentence_transformer; allowed values: \['ADRMSELoss', 'BinaryCrossEntropyLoss', "),
    (["model.family=sentence_transformer"],
     r"'loss.name': unknown loss 'BinaryCrossEntropyLoss'; BinaryCrossEntropyLoss is a cross_encoder loss"),
    (["evaluator.name=EmbeddingSimilarityEvaluator"],
     r"'evaluator.name': unknown evaluator 'EmbeddingSimilarityEvaluator'; EmbeddingSimilarityEvaluator is a "
     r"sentence_transformer evaluator.*allowed values: \['CrossEncoderClassificationEvaluator', "),
    # unknown keys, at every level the CrossEncoder added
    (["model.num_lables=1"], r"config key 'model.num_lables' is unknown; allowed keys under 'model': \['activation_fn', "
                             r"'dtype', 'family', 'length_buckets', 'max_seq_length', 'name_or_path', 'num_labels'\]"),
    (["data.hard_negatives.num_negatives=5"], r"config key 'data.hard_negatives.num_negatives' is unknown; allowed keys "
                                             r"under 'data.hard_negatives': \['kwargs', 'min_label', 'model'\]"),
    (["evaluator.hard_negatives.modle=x"], r"'evaluator.hard_negatives.modle' is unknown"),
    (["arguments.learning_rat=1e-4"], r"'arguments.learning_rat' is unknown.*'learning_rate'"),
    (["loss.kwargs.pos_wieght=5"], r"'loss.kwargs.pos_wieght': BinaryCrossEntropyLoss has no argument 'pos_wieght'; "
                                   r"allowed: \['activation_fn', 'pos_weight'\]"),
    (["data.hard_negatives={model: m, kwargs: {num_negative: 5}}"],
     r"'data.hard_negatives.kwargs.num_negative': mine_hard_negatives has no argument 'num_negative'"),
    (["data.hard_negatives={model: m, kwargs: {cross_encoder: x}}"], r"has no argument 'cross_encoder' a config can set"),
    (["data.hard_negatives={min_label: 0.8}"], r"'data.hard_negatives.model': set the bi-encoder"),
    # values
    (["model.activation_fn=softsign"], r"'model.activation_fn': unknown activation 'softsign'; allowed values: \["),
    (["loss.kwargs.activation_fn=softsign"], r"'loss.kwargs.activation_fn': Unknown activation_fn 'softsign'"),
    (["model.num_labels=0"], r"'model.num_labels' must be >= 1, got 0"),
    (["model.num_labels=3"], r"'loss.name': BinaryCrossEntropyLoss needs a CrossEncoder with 1 label, but "
                             r"model.num_labels is 3; use CrossEntropyLoss"),
    (["model.family=sentence_transformer", "loss.name=CoSENTLoss", "loss.kwargs={}",
      "evaluator.name=EmbeddingSimilarityEvaluator", "model.num_labels=1"],
     r"'model.num_labels' applies to CrossEncoders only; set model.family: cross_encoder"),
    (["loss.name=LambdaLoss", "loss.kwargs={weighting_scheme: NDCG2}"],
     r"'loss.kwargs.weighting_scheme': unknown weighting_scheme 'NDCG2'; allowed values: \['LambdaRankScheme', "
     r"'NDCGLoss1Scheme', 'NDCGLoss2PPScheme', 'NDCGLoss2Scheme', 'NoWeightingScheme'\]"),
    (["loss.name=LambdaLoss", "loss.kwargs={weighting_scheme: {name: NDCGLoss2PPScheme, nu: 1}}"],
     r"'loss.kwargs.weighting_scheme.nu': NDCGLoss2PPScheme has no argument 'nu'"),
    (["loss.name=PListMLELoss", "loss.kwargs={lambda_weight: {name: PListMLELambdaWeight, rank_discount_fn: f}}"],
     r"'loss.kwargs.lambda_weight.rank_discount_fn': PListMLELambdaWeight has no argument 'rank_discount_fn' a config "
     r"can set"),
    (["evaluator.hard_negatives={model: m}"], r"'evaluator.hard_negatives': mined documents feed "
                                              r"CrossEncoderRerankingEvaluator only"),
    (["evaluator.name=CrossEncoderRerankingEvaluator", "evaluator.hard_negatives={model: m, kwargs: {output_format: "
      "triplet}}"], r"'evaluator.hard_negatives.kwargs.output_format': the reranking samples are built from 'n-tuple'"),
    (["evaluator.name=CrossEncoderRerankingEvaluator", "evaluator.kwargs={samples: []}"],
     r"'evaluator.kwargs.samples': CrossEncoderRerankingEvaluator has no argument 'samples'"),
    (["evaluator.name=CrossEncoderNanoBEIREvaluator", "evaluator.kwargs={aggregate_fn: max}"],
     r"'evaluator.kwargs.aggregate_fn': CrossEncoderNanoBEIREvaluator has no argument 'aggregate_fn'"),
    # the CrossEncoder's training arguments: one prompt per dataset, never per column
    (["arguments.prompts={train: {sentence1: 'q: '}}"], r"config key 'arguments': CrossEncoder prompts cannot be "
                                                        r"per-column"),
])
def test_bad_cross_encoder_config_names_the_key(tmp_path, overrides, match, monkeypatch):
    import stcore_jax.cross_encoder as ce

    def forbidden(*a, **k):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(ce.CrossEncoder, "__init__", forbidden)
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, GOOD), overrides)


def test_cli_rejects_a_bi_encoder_loss_before_loading(tmp_path, capsys, monkeypatch):
    import stcore_jax.config.build as b

    monkeypatch.setattr(b, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    assert main(["train", _write(tmp_path, GOOD), "--set", "loss.name=MultipleNegativesSymmetricRankingLoss",
                 "--set", "loss.kwargs={}"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"MultipleNegativesSymmetricRankingLoss is a sentence_transformer loss", err), err
