"""Shared fixtures for evaluator parity tests: both all-MiniLM-L6-v2 models and both loads of a tiny
Router model with prompts (each sentence encoded once per session and way in), STS-B-derived
evaluation data, and comparison helpers for metric dicts and output files (every CSV row, IR
predictions)."""

from __future__ import annotations

import csv
import json
import math
import pathlib
import shutil

import numpy as np
import pytest


class CachedEncoder:
    """Wraps a model so each distinct sentence is encoded once per session and per route.

    ``encode``, ``encode_query`` and ``encode_document`` call the wrapped model's method of the same
    name (so a Router's routes and the model's query/document prompts are taken by the model itself)
    for the sentences not seen before under that method and prompt arguments, one call per new batch,
    and store the vectors per sentence, so the same text always gets the same vector (duplicates tie
    exactly, as they should). ``routes`` logs ``(method, prompt, prompt_name)`` of every call.
    With ``share_routes`` the three methods share one cache: only for a model without prompts or a
    Router, where they compute the same thing (asserted). Everything else (``similarity``,
    ``model_card_data``…) is delegated. With ``torch_outputs`` the wrapper returns what the PyTorch
    model would (tensors for ``convert_to_tensor``, a list of tensors for ``convert_to_numpy=False``).
    """

    def __init__(self, model, torch_outputs: bool, share_routes: bool = True):
        self._model = model
        self._torch = torch_outputs
        self._share = share_routes
        self._cache: dict = {}
        self.routes: list[tuple] = []
        if share_routes:
            prompts = getattr(model, "prompts", {}) or {}
            assert not any(prompts.values()), "share_routes assumes a model without prompts"
            assert "Router" not in type(model[0]).__name__, "share_routes assumes a model without a Router"

    def __getattr__(self, name):
        return getattr(self._model, name)

    @property
    def similarity_fn_name(self):
        return self._model.similarity_fn_name

    def _embed(self, method, sentences, prompt=None, prompt_name=None, truncate_dim=None):
        self.routes.append((method, prompt, prompt_name))
        extra = ("encode" if self._share else method, prompt, prompt_name)
        missing = [s for s in dict.fromkeys(sentences) if (s, extra) not in self._cache]
        if missing:
            kwargs = {k: v for k, v in (("prompt", prompt), ("prompt_name", prompt_name)) if v is not None}
            emb = getattr(self._model, method)(
                missing, batch_size=64, show_progress_bar=False, convert_to_numpy=True, **kwargs
            )
            self._cache.update({(s, extra): e for s, e in zip(missing, np.asarray(emb))})
        out = np.stack([self._cache[(s, extra)] for s in sentences])
        # Both models truncate by keeping the first dimensions (no normalisation is requested here).
        return out[:, :truncate_dim] if truncate_dim is not None else out

    def _encode(self, method, sentences, prompt_name=None, prompt=None, batch_size=32, show_progress_bar=None,
                convert_to_numpy=True, convert_to_tensor=False, truncate_dim=None, **kwargs):
        assert not kwargs.get("normalize_embeddings") and kwargs.get("precision") in (None, "float32")
        single = isinstance(sentences, str)
        out = self._embed(method, [sentences] if single else list(sentences), prompt, prompt_name, truncate_dim)
        out = out[0] if single else out
        if self._torch and convert_to_tensor:
            import torch

            return torch.from_numpy(out)
        if self._torch and not convert_to_numpy:
            import torch

            return list(torch.from_numpy(out))
        return out

    def encode(self, sentences, **kwargs):
        return self._encode("encode", sentences, **kwargs)

    def encode_query(self, sentences, **kwargs):
        return self._encode("encode_query", sentences, **kwargs)

    def encode_document(self, sentences, **kwargs):
        return self._encode("encode_document", sentences, **kwargs)


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


@pytest.fixture(scope="session")
def router_dir(tmp_path_factory, minilm_path, sts_test):
    """A PyTorch sentence-transformers model whose three ways in all differ: a Router over one tiny
    random BERT with mean pooling, then route "q" (``task="query"``) or route "d" (documents and plain
    ``encode``), two Dense heads whose weights differ by noise (so retrieval across routes still
    works); prompts "query: " / "passage: " for ``encode_query`` / ``encode_document`` and "pair: "
    (the default prompt) for ``encode``. The Dense biases centre the STS embeddings: a random BERT's
    mean-pooled vectors all point one way (cosines ~0.997), where float32 noise would reorder scores."""
    import torch
    from sentence_transformers import SentenceTransformer as TorchST
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Router, Transformer

    import tiny_models

    root = tmp_path_factory.mktemp("eval_router")
    hf = tiny_models.build_hf("bert", str(root / "hf"), str(minilm_path), corpus=[])
    torch.manual_seed(0)
    t, pooling = Transformer(hf, max_seq_length=32), Pooling(32, "mean")
    dense_q, dense_d = Dense(32, 32), Dense(32, 32)
    with torch.no_grad():
        dense_d.linear.weight.copy_(dense_q.linear.weight + 0.02 * torch.randn_like(dense_q.linear.weight))
        mean = TorchST(modules=[t, pooling], device="cpu").encode(sts_test[0][:256], convert_to_tensor=True).mean(0)
        for dense in (dense_q, dense_d):
            dense.linear.bias.copy_(-dense.linear.weight @ mean)
    router = Router(
        {"q": [t, pooling, dense_q], "d": [t, pooling, dense_d]},
        default_route="d",
        route_mappings={("query", None): "q", ("document", None): "d"},
    )
    prompts = {"query": "query: ", "document": "passage: ", "pair": "pair: "}
    TorchST(modules=[router], device="cpu", prompts=prompts, default_prompt_name="pair").save(str(root / "st"))
    return str(root / "st")


@pytest.fixture(scope="session")
def router_models(router_dir):
    """(ours, reference) for ``router_dir``, cached per method and prompt arguments (no sharing)."""
    from sentence_transformers import SentenceTransformer as TorchST

    from stcore_jax import SentenceTransformer

    ours = CachedEncoder(SentenceTransformer(router_dir), torch_outputs=False, share_routes=False)
    ref = CachedEncoder(TorchST(router_dir, device="cpu"), torch_outputs=True, share_routes=False)
    return ours, ref


@pytest.fixture
def check_router_parity(tmp_path, router_models):
    """``make_check_parity`` for the Router model; the route logs start empty (the reference model's
    log ends with our evaluator's calls of the same-embeddings run)."""
    for model in router_models:
        model.routes.clear()
    return make_check_parity(tmp_path, *router_models)


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


def _is_float_text(cell: str) -> bool:
    """A float as Python prints it ("0.25", "1e-05", "nan"); integers ("0", "-1") are not."""
    try:
        float(cell)
    except ValueError:
        return False
    return any(c in cell.lower() for c in ".ein")


def assert_csv_close(ours_path: pathlib.Path, ref_path: pathlib.Path, atol: float, last_rows: int | None = None):
    """Every row and column: float cells within ``atol`` (both must print as floats), every other
    cell (header, epoch, steps, names) exactly. ``last_rows`` compares only the reference's last
    rows (for a file that ours wrote fewer times)."""
    ours_rows, ref_rows = _read_rows(ours_path), _read_rows(ref_path)
    assert ours_rows[0] == ref_rows[0], (ours_path.name, ours_rows[0], ref_rows[0])
    if last_rows is not None:
        ref_rows = ref_rows[:1] + ref_rows[-last_rows:]
    assert len(ours_rows) == len(ref_rows), (ours_path.name, len(ours_rows), len(ref_rows))
    for i, (o_row, r_row) in enumerate(zip(ours_rows, ref_rows)):
        assert len(o_row) == len(r_row) == len(ref_rows[0]), (ours_path.name, i, o_row, r_row)
        for column, o, r in zip(ref_rows[0], o_row, r_row):
            if _is_float_text(r):
                assert _is_float_text(o) and _close(float(o), float(r), atol), (ours_path.name, i, column, o, r)
            else:
                assert o == r, (ours_path.name, i, column, o, r)


def assert_predictions_close(ours_path: pathlib.Path, ref_path: pathlib.Path, atol: float) -> None:
    """IR predictions (JSON lines ``{"query_id", "query", "results": [{"corpus_id", "score"}, …]}``):
    same queries in the same order, same keys, scores within ``atol`` rank by rank, ours sorted by
    ``(-score, corpus_id)``, and the same corpus id at every rank, except that documents whose
    reference scores are within ``2 * atol`` (near-ties the two models may order differently) may
    trade places, including across the top-k cut-off."""
    ours_lines = ours_path.read_text(encoding="utf-8").splitlines()
    ref_lines = ref_path.read_text(encoding="utf-8").splitlines()
    assert len(ours_lines) == len(ref_lines) > 0, ours_path.name
    for o_line, r_line in zip(ours_lines, ref_lines):
        o, r = json.loads(o_line), json.loads(r_line)
        assert list(o) == list(r) == ["query_id", "query", "results"]
        assert (o["query_id"], o["query"]) == (r["query_id"], r["query"])
        assert len(o["results"]) == len(r["results"]) > 0, r["query_id"]
        assert all(list(hit) == ["corpus_id", "score"] for hit in o["results"])
        o_hits = [(hit["corpus_id"], hit["score"]) for hit in o["results"]]
        r_hits = [(hit["corpus_id"], hit["score"]) for hit in r["results"]]
        assert o_hits == sorted(o_hits, key=lambda hit: (-hit[1], hit[0])), r["query_id"]
        r_score = dict(r_hits)
        for rank, ((o_id, o_s), (r_id, r_s)) in enumerate(zip(o_hits, r_hits)):
            assert abs(o_s - r_s) <= atol, (r["query_id"], rank, o_hits[rank], r_hits[rank])
            if o_id != r_id:  # allowed only among near-ties (or a near-tie at the cut-off)
                other = r_score.get(o_id, r_hits[-1][1])
                assert abs(other - r_s) <= 2 * atol, (r["query_id"], rank, o_hits, r_hits)


def assert_output_dirs_close(
    ours_dir: pathlib.Path, ref_dir: pathlib.Path, atol: float, score_atol: float, last_rows: int | None = None
) -> None:
    """Same file names; every CSV compared row by row (plus header and line terminators) within
    ``atol``, every predictions file compared in contents, its raw scores within ``score_atol``."""
    ours_files = sorted(p.name for p in ours_dir.iterdir())
    ref_files = sorted(p.name for p in ref_dir.iterdir())
    assert ours_files == ref_files
    for name in ref_files:
        if name.endswith(".csv"):
            ours_raw, ref_raw = (ours_dir / name).read_bytes(), (ref_dir / name).read_bytes()
            # Same header bytes, including the line terminator (csv module: \r\n, retrieval: \n).
            assert ours_raw.split(b"\n", 1)[0] == ref_raw.split(b"\n", 1)[0], name
            assert (b"\r\n" in ours_raw) == (b"\r\n" in ref_raw), name
            assert_csv_close(ours_dir / name, ref_dir / name, atol, last_rows)
        elif name.endswith(".jsonl"):
            assert_predictions_close(ours_dir / name, ref_dir / name, score_atol)
        else:
            raise AssertionError(f"unexpected output file {name}")


def make_check_parity(tmp_path, our_model, ref_model):
    """Run our evaluator with our model and the reference evaluator with the reference model (twice
    unless ``once``, so CSV appending and the epoch/steps columns are covered) and compare metrics,
    ``primary_metric`` and all output files (``atol``); then run ours on the reference model's
    embeddings, whose metrics and files (against the reference's last call) must agree within float32
    noise (``strict_atol``). Raw retrieval scores in predictions files agree within ``strict_atol`` in
    both runs (measured: ~1e-6 between the two models)."""

    def run(ours, ref, atol: float = 1e-4, strict_atol: float = 1e-5, once: bool = False):
        ours_dir, ref_dir, same_dir = tmp_path / "ours", tmp_path / "ref", tmp_path / "same"
        for path in (ours_dir, ref_dir, same_dir):
            shutil.rmtree(path, ignore_errors=True)
        calls = ((0, 10),) if once else ((0, 10), (1, -1))
        for epoch, steps in calls:
            ours_result = ours(our_model, output_path=str(ours_dir), epoch=epoch, steps=steps)
            ref_result = ref(ref_model, output_path=str(ref_dir), epoch=epoch, steps=steps)
        assert_metrics_close(ours_result, ref_result, atol)
        assert ours.primary_metric == ref.primary_metric
        assert_output_dirs_close(ours_dir, ref_dir, atol, score_atol=strict_atol)
        same_embeddings = ours(ref_model, output_path=str(same_dir), epoch=calls[-1][0], steps=calls[-1][1])
        assert_metrics_close(same_embeddings, ref_result, strict_atol)
        assert_output_dirs_close(same_dir, ref_dir, strict_atol, score_atol=strict_atol, last_rows=1)
        return ours_result, ref_result

    return run


@pytest.fixture
def check_parity(tmp_path, our_model, ref_model):
    """``make_check_parity`` for all-MiniLM-L6-v2 (prompt-free: encode = encode_query = encode_document)."""
    return make_check_parity(tmp_path, our_model, ref_model)
