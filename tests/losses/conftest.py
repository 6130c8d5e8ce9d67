"""Fixtures for the loss tests: a tiny random sentence-transformers model (no network)."""

import pytest

from losses_reference import build_tiny_sentence_transformer


@pytest.fixture(scope="session")
def tiny_st_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_bert")


@pytest.fixture(scope="session")
def tiny_st(tiny_st_dir):
    """A 2-layer BERT SentenceTransformer with hidden size 16 (= the test embedding dimension)."""
    return build_tiny_sentence_transformer(tiny_st_dir)


@pytest.fixture(scope="session")
def tiny_st_pair(tiny_st_dir):
    """Two separate instances of the same tiny model (GISTEmbedLoss needs a model and a guide)."""
    return build_tiny_sentence_transformer(tiny_st_dir), build_tiny_sentence_transformer(tiny_st_dir)
