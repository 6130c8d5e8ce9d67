import pytest
from datasets import Dataset

import tiny_models
from stcore_jax.util import read_sts


@pytest.fixture(scope="session")
def stsb_train(stsb_dir):
    return read_sts(stsb_dir / "sts-train.csv")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path, stsb_train):
    s1, s2, _ = stsb_train
    root = tmp_path_factory.mktemp("tiny_bert_train")
    hf = tiny_models.build_hf("bert", str(root / "hf"), str(minilm_path), s1[:500] + s2[:500])
    return tiny_models.build_st(hf, str(root / "st"), max_seq_length=32)


@pytest.fixture
def pairs(stsb_train):
    """128 STS-B train pairs with scores in [0, 1]."""
    s1, s2, sc = stsb_train
    return Dataset.from_dict({"sentence1": s1[:128], "sentence2": s2[:128], "score": [x / 5 for x in sc[:128]]})
