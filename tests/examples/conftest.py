"""A tiny random BERT sentence-transformers model (MiniLM's tokenizer) shared by the example smoke tests."""

import os
import sys

import pytest

import tiny_models

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "examples")


@pytest.fixture(scope="session")
def tiny_st(tmp_path_factory, minilm_path, stsb_dir):
    from stcore_jax.config.datasets import load_stsb

    root = tmp_path_factory.mktemp("tiny_examples")
    ds = load_stsb(str(stsb_dir), "train", 500)
    hf = tiny_models.build_hf("bert", str(root / "hf"), str(minilm_path), list(ds["sentence1"]) + list(ds["sentence2"]))
    return tiny_models.build_st(hf, str(root / "st"), max_seq_length=32)


@pytest.fixture(scope="session")
def examples_on_path():
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    return EXAMPLES
