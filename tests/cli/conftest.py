"""A tiny random BERT sentence-transformers model for CLI tests (fast to compile)."""

import pytest

import tiny_models


@pytest.fixture(scope="session")
def tiny_cli_model(tmp_path_factory, minilm_path, stsb_dir):
    from stcore_jax.config.datasets import load_stsb

    root = tmp_path_factory.mktemp("tiny_cli")
    ds = load_stsb(str(stsb_dir), "train", 500)
    hf = tiny_models.build_hf("bert", str(root / "hf"), str(minilm_path), list(ds["sentence1"]) + list(ds["sentence2"]))
    return tiny_models.build_st(hf, str(root / "st"), max_seq_length=32)
