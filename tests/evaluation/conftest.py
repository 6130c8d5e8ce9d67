"""Shared fixtures for evaluator parity tests: both models (encode each sentence once per session),
STS-B-derived evaluation data, and a comparison helper for metric dicts and CSV outputs."""

from __future__ import annotations

import csv
import math
import pathlib
import shutil

import numpy as np
import pytest


class CachedEncoder:
    """Wraps a model so each distinct sentence is encoded once per session.

    Embeddings are computed one call per new batch of sentences and stored per sentence, so the
    same text always gets the same vector (duplicates tie exactly, as they should). Everything
    else (``similarity``, ``model_card_data``, ``smart_batching_collate``…) is delegated. With
    ``torch_outputs`` the wrapper returns what the PyTorch model would (tensors for
    ``convert_to_tensor``, a list of tensors for ``convert_to_numpy=False``).
    """

    def __init__(self, model, torch_outputs: bool):
        self._model = model
        self._torch = torch_outputs
        self._cache: dict = {}
        self.calls = 0
        prompts = getattr(model, "prompts", {}) or {}
        # encode_query / encode_document only differ from encode through prompts.
        assert not any(prompts.values()), "CachedEncoder assumes a model without prompts"

    def __getattr__(self, name):
        return getattr(self._model, name)

    @property
    def similarity_fn_name(self):
        return self._model.similarity_fn_name

    def _embed(self, sentences, prompt=None, prompt_name=None, truncate_dim=None):
        self.calls += 1
        extra = (prompt, prompt_name)
        missing = [s for s in dict.fromkeys(sentences) if (s, extra) not in self._cache]
        if missing:
            kwargs = {"prompt": prompt, "prompt_name": prompt_name} if (prompt or prompt_name) else {}
            emb = np.asarray(
                self._model.encode(missing, batch_size=64, show_progress_bar=False, convert_to_numpy=True, **kwargs)
            )
            self._cache.update({(s, extra): e for s, e in zip(missing, emb)})
        out = np.stack([self._cache[(s, extra)] for s in sentences])
        # Both models truncate by keeping the first dimensions (no normalisation is requested here).
        return out[:, :truncate_dim] if truncate_dim is not None else out

    def encode(self, sentences, prompt_name=None, prompt=None, batch_size=32, show_progress_bar=None,
               convert_to_numpy=True, convert_to_tensor=False, truncate_dim=None, **kwargs):
        assert not kwargs.get("normalize_embeddings") and kwargs.get("precision") in (None, "float32")
        single = isinstance(sentences, str)
        out = self._embed([sentences] if single else list(sentences), prompt, prompt_name, truncate_dim)
        out = out[0] if single else out
        if self._torch and convert_to_tensor:
            import torch

            return torch.from_numpy(out)
        if self._torch and not convert_to_numpy:
            import torch

            return list(torch.from_numpy(out))
        return out

    def encode_query(self, sentences, **kwargs):
        return self.encode(sentences, **kwargs)

    def encode_document(self, sentences, **kwargs):
        return self.encode(sentences, **kwargs)


@pytest.fixture(scope="session")
def sts_test(stsb_dir):
    from stcore_jax.util import read_sts

    return read_sts(stsb_dir / "sts-test.csv")


@pytest.fixture(scope="session")
def ref_model_raw(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


@pytest.fixture(scope="session")
def ref_model(ref_model_raw, sts_test):
    model = CachedEncoder(ref_model_raw, torch_outputs=True)
    model.encode(sorted({*sts_test[0], *sts_test[1]}))
    return model


@pytest.fixture(scope="session")
def our_model(minilm_path, sts_test):
    from stcore_jax import SentenceTransformer

    model = CachedEncoder(SentenceTransformer(str(minilm_path)), torch_outputs=False)
    model.encode(sorted({*sts_test[0], *sts_test[1]}))
    return model


def _close(a, b, atol):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return abs(float(a) - float(b)) <= atol


def assert_metrics_close(ours: dict, ref: dict, atol: float) -> None:
    assert list(ours) == list(ref), f"keys differ:\n ours {list(ours)}\n ref  {list(ref)}"
    bad = {k: (ours[k], ref[k]) for k in ref if not _close(ours[k], ref[k], atol)}
    assert not bad, f"values differ beyond {atol}: {bad}"


def _read_rows(path: pathlib.Path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def assert_csv_dirs_close(ours_dir: pathlib.Path, ref_dir: pathlib.Path, atol: float) -> None:
    ours_files = sorted(p.name for p in ours_dir.iterdir())
    ref_files = sorted(p.name for p in ref_dir.iterdir())
    assert ours_files == ref_files
    for name in ref_files:
        if not name.endswith(".csv"):
            continue
        ours_raw, ref_raw = (ours_dir / name).read_bytes(), (ref_dir / name).read_bytes()
        # Same header bytes, including the line terminator (csv module: \r\n, retrieval: \n).
        assert ours_raw.split(b"\n", 1)[0] == ref_raw.split(b"\n", 1)[0], name
        assert ours_raw.count(b"\r\n") == ref_raw.count(b"\r\n"), name
        ours_rows, ref_rows = _read_rows(ours_dir / name), _read_rows(ref_dir / name)
        assert len(ours_rows) == len(ref_rows) and len(ours_rows[1]) == len(ref_rows[1]), name
        for o, r in zip(ours_rows[1], ref_rows[1]):
            assert _close(o, r, atol), (name, ours_rows, ref_rows)


@pytest.fixture
def check_parity(tmp_path, our_model, ref_model):
    """Run our evaluator with our model and the reference evaluator with the reference model (twice
    unless ``once``, so CSV appending is covered) and compare metrics, ``primary_metric`` and CSV
    files; then run ours on the reference model's embeddings, which must agree within float32
    noise (1e-5)."""

    def run(ours, ref, atol: float = 1e-4, strict_atol: float = 1e-5, once: bool = False):
        ours_dir, ref_dir = tmp_path / "ours", tmp_path / "ref"
        shutil.rmtree(ours_dir, ignore_errors=True)
        shutil.rmtree(ref_dir, ignore_errors=True)
        for epoch, steps in ((0, 10),) if once else ((0, 10), (1, -1)):
            ours_result = ours(our_model, output_path=str(ours_dir), epoch=epoch, steps=steps)
            ref_result = ref(ref_model, output_path=str(ref_dir), epoch=epoch, steps=steps)
        assert_metrics_close(ours_result, ref_result, atol)
        assert ours.primary_metric == ref.primary_metric
        assert_csv_dirs_close(ours_dir, ref_dir, atol)
        same_embeddings = ours(ref_model)
        assert_metrics_close(same_embeddings, ref_result, strict_atol)
        return ours_result, ref_result

    return run
