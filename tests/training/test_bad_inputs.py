"""Bad training input: a clear error (what, where, how to fix) before anything is compiled."""

import pytest
from datasets import Dataset

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.losses import CoSENTLoss, MultipleNegativesRankingLoss


@pytest.fixture(scope="module")
def model(tiny_bert_dir):
    return SentenceTransformer(tiny_bert_dir)


def _args(tmp_path, **kw):
    return SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "out"), disable_tqdm=True, **kw)


def _trainer(model, tmp_path, data, loss=None, **kw):
    return SentenceTransformerTrainer(model=model, args=_args(tmp_path, **kw), train_dataset=data,
                                      loss=loss or CoSENTLoss(model))


def test_wrong_column_count_names_columns_and_loss(model, tmp_path):
    data = Dataset.from_dict({"a": ["x y"], "b": ["y z"], "c": ["z w"], "score": [0.5]})
    with pytest.raises(ValueError, match=r"\['a', 'b', 'c'\].*CoSENTLoss.*2"):
        _trainer(model, tmp_path, data)


def test_missing_label(model, tmp_path):
    data = Dataset.from_dict({"a": ["x y"], "b": ["y z"]})
    with pytest.raises(ValueError, match="CoSENTLoss.*label"):
        _trainer(model, tmp_path, data)


def test_label_for_label_free_loss(model, tmp_path):
    data = Dataset.from_dict({"a": ["x y"], "b": ["y z"], "label": [1]})
    with pytest.raises(ValueError, match="MultipleNegativesRankingLoss.*no label"):
        _trainer(model, tmp_path, data, loss=MultipleNegativesRankingLoss(model))


def test_non_numeric_label(model, tmp_path):
    data = Dataset.from_dict({"a": ["x y", "u"], "b": ["y z", "v"], "score": ["high", "low"]})
    with pytest.raises(ValueError, match=r"label column 'score', row 0.*numbers"):
        _trainer(model, tmp_path, data)


def test_nan_label(model, tmp_path):
    data = Dataset.from_dict({"a": ["x y", "u v"], "b": ["y z", "v w"], "score": [0.5, float("nan")]})
    with pytest.raises(ValueError, match=r"row 1.*NaN"):
        _trainer(model, tmp_path, data)


def test_label_lists_of_different_lengths():
    data = Dataset.from_dict({"a": ["x y", "u v"], "b": ["y z", "v w"], "label": [[0.1, 0.2], [0.3]]})
    from stcore_jax.training.data import _check_labels

    with pytest.raises(ValueError, match=r"label column 'label'.*same length \(found lengths 1, 2\)"):
        _check_labels(data["label"], "train", "label")


@pytest.mark.parametrize("bad, what", [(None, "None"), ("", "empty"), ("   ", "empty")])
def test_none_or_empty_text(model, tmp_path, bad, what):
    data = Dataset.from_dict({"a": ["x y", "u v", "p q"], "b": ["y z", bad, "q r"], "score": [0.5, 0.1, 0.2]})
    with pytest.raises(ValueError, match=rf"column 'b', row 1.*{what}"):
        _trainer(model, tmp_path, data)


def test_reserved_column(model, tmp_path):
    data = Dataset.from_dict({"a": ["x"], "dataset_name": ["y"], "score": [0.5]})
    with pytest.raises(ValueError, match="dataset_name.*reserved"):
        _trainer(model, tmp_path, data)


def test_unknown_sampler_and_scheduler(tmp_path):
    with pytest.raises(ValueError, match="batch_sampler='random'.*no_duplicates"):
        _args(tmp_path, batch_sampler="random")
    with pytest.raises(ValueError, match="multi_dataset_batch_sampler"):
        _args(tmp_path, multi_dataset_batch_sampler="zigzag")
    with pytest.raises(ValueError, match="lr_scheduler_type='warmup_stable'.*cosine"):
        _args(tmp_path, lr_scheduler_type="warmup_stable")


@pytest.mark.parametrize("bad", [0, -2, (), (64, 32), (16, 0), "auto", 2.5])
def test_bad_length_buckets(tmp_path, bad):
    with pytest.raises(ValueError, match="length_buckets must be"):
        _args(tmp_path, length_buckets=bad)


def test_eval_steps_strategy_without_steps(tmp_path):
    with pytest.raises(ValueError, match='eval_strategy="steps" needs eval_steps'):
        _args(tmp_path, eval_strategy="steps")


def test_eval_strategy_without_eval_data(model, tmp_path):
    data = Dataset.from_dict({"a": ["x y"], "b": ["y z"], "score": [0.5]})
    with pytest.raises(ValueError, match="needs an eval_dataset or an evaluator"):
        _trainer(model, tmp_path, data, eval_strategy="epoch")


def test_global_batch_not_divisible(model, tmp_path):
    data = Dataset.from_dict({"a": ["x y"], "b": ["y z"], "score": [0.5]})
    with pytest.raises(ValueError, match="train_batch_size=12 is not divisible by the data-parallel size 8"):
        _trainer(model, tmp_path, data, train_batch_size=12)


def test_mesh_larger_than_devices(model, tmp_path):
    data = Dataset.from_dict({"a": ["x y"], "b": ["y z"], "score": [0.5]})
    with pytest.raises(ValueError, match="needs 16 devices but only 8"):
        _trainer(model, tmp_path, data, mesh_shape={"data": 16})


def test_fp16_rejected(tmp_path):
    with pytest.raises(ValueError, match="fp16.*bf16"):
        _args(tmp_path, fp16=True)


def test_dict_loss_missing_dataset(model, tmp_path):
    data = {"sts": Dataset.from_dict({"a": ["x y"], "b": ["y z"], "score": [0.5]}),
            "nli": Dataset.from_dict({"a": ["x y"], "b": ["y z"]})}
    with pytest.raises(ValueError, match=r"datasets \['nli'\] have no loss"):
        SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset=data, loss={"sts": CoSENTLoss(model)})


def test_resume_from_non_checkpoint(model, tmp_path):
    data = Dataset.from_dict({"a": ["x y"] * 16, "b": ["y z"] * 16, "score": [0.5] * 16})
    trainer = _trainer(model, tmp_path, data)
    (tmp_path / "junk").mkdir()
    with pytest.raises(ValueError, match="is not a stcore_jax checkpoint"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "junk"))
    with pytest.raises(ValueError, match="has no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)
    assert trainer.compile_count[0] == 0
