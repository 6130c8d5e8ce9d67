"""Normalize: L2-normalise the sentence embedding (sentence-transformers ``Normalize``)."""

from __future__ import annotations

from stcore_jax.models.module import Module, ensure_dir
from stcore_jax.similarity import normalize


class Normalize(Module):
    st_type = "sentence_transformers.models.Normalize"

    def apply(self, params, features, *, dropout_key=None):
        features = dict(features)
        features["sentence_embedding"] = normalize(features["sentence_embedding"])
        return features

    def save(self, path):
        ensure_dir(path)  # releases before 6.x expect an empty folder

    @classmethod
    def load(cls, path, **kwargs):
        return cls()
