"""``util.mine_hard_negatives`` against sentence-transformers 6.2 (``use_faiss=False``) on all-MiniLM-L6-v2
and STS-B dev data: every output format with and without scores, the range and score filters, both
margins, ``include_positives``, duplicate anchors with several positives, a separate corpus holding some
positives, a cross-encoder stub given to both, and seeded "random" sampling."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
from datasets import Dataset
from sentence_transformers.util import mine_hard_negatives as ref_mine

from stcore_jax.util import mine_hard_negatives

SCORE_ATOL = 1e-5


class MemoEncoder:
    """Delegates to ``model`` but encodes each (method, texts, prompt) call once: every configuration below
    embeds the same queries and corpus, and the two models are compared, not re-run."""

    def __init__(self, model):
        self._model = model
        self._cache = {}

    def __getattr__(self, name):
        return getattr(self._model, name)

    def _call(self, method, texts, prompt_name=None, prompt=None, **kwargs):
        key = (method, tuple(texts), prompt_name, prompt, kwargs.get("normalize_embeddings"))
        if key not in self._cache:
            kwargs["show_progress_bar"] = False
            self._cache[key] = getattr(self._model, method)(texts, prompt_name=prompt_name, prompt=prompt, **kwargs)
        return self._cache[key]

    def encode_query(self, texts, **kwargs):
        return self._call("encode_query", texts, **kwargs)

    def encode_document(self, texts, **kwargs):
        return self._call("encode_document", texts, **kwargs)


class StubCrossEncoder:
    """A deterministic "reranker": a hash of each pair mapped to [-1, 1) (no ties on this data), returned as
    a torch tensor when the reference asks for one, as a numpy array otherwise. Logs every batch size."""

    def __init__(self):
        self.batch_sizes = []

    def predict(self, pairs, batch_size=32, convert_to_tensor=False, **kwargs):
        self.batch_sizes.append(batch_size)
        values = np.array([zlib.crc32(f"{a}\x00{b}".encode()) / 2**31 - 1.0 for a, b in pairs], np.float32)
        if convert_to_tensor:
            import torch

            return torch.from_numpy(values)
        return values


@pytest.fixture(scope="module")
def mining_data(stsb_dir):
    """(dataset, corpus): dev pairs scored >= 4 as (anchor, positive), plus 6 anchors given an unrelated
    second positive, 4 given a second positive close to the anchor (both rank in the window), one of them
    a third, and one pair repeated (a duplicate positive); the extra corpus is the second sentences of
    low-scored pairs plus 20 of the positives (found in both places, deduplicated)."""
    from stcore_jax.util import read_sts

    s1, s2, scores = read_sts(stsb_dir / "sts-dev.csv")
    pairs = [(a, b) for a, b, s in zip(s1, s2, scores) if s >= 4.0][:160]
    extra = [(pairs[i][0], pairs[i + 80][1]) for i in range(6)] + [pairs[3]]
    extra += [(pairs[i][0], pairs[i][0] + " !") for i in range(10, 14)]  # a second positive close to its anchor
    extra += [(pairs[10][0], pairs[10][0] + " ?")]  # three distinct positives: the window's whole headroom
    rows = pairs + extra
    corpus = [b for a, b, s in zip(s1, s2, scores) if s < 2.0][:200] + [b for _, b in pairs[50:70]]
    dataset = Dataset.from_dict({"anchor": [a for a, _ in rows], "positive": [b for _, b in rows]})
    return dataset, corpus


@pytest.fixture(scope="module")
def both_models(minilm_path, ref_model_raw):
    from stcore_jax import SentenceTransformer

    return MemoEncoder(SentenceTransformer(str(minilm_path))), MemoEncoder(ref_model_raw)


def assert_same_dataset(ours: Dataset, ref: Dataset) -> float:
    """Same columns, rows and texts; float cells (``score``/``scores``) within SCORE_ATOL. Returns the
    largest score difference."""
    assert ours.column_names == ref.column_names
    assert len(ours) == len(ref) > 0
    worst = 0.0
    for name in ref.column_names:
        o, r = ours[name], ref[name]
        if name in ("score", "scores"):
            o_flat = np.array(o, np.float64).reshape(-1) if name == "score" else np.concatenate([np.ravel(x) for x in o])
            r_flat = np.array(r, np.float64).reshape(-1) if name == "score" else np.concatenate([np.ravel(x) for x in r])
            assert [np.size(x) for x in o] == [np.size(x) for x in r], name
            worst = max(worst, float(np.abs(o_flat - r_flat).max()))
            assert worst <= SCORE_ATOL, (name, worst)
        else:
            assert o == r, name
    return worst


def assert_same_report(ours: str, ref: str) -> list[str]:
    """The printed summaries agree: the same messages (range_max, unique queries, skipped candidates per
    filter, missing samples) and Count row, the statistics table within its 4-decimal printing. Returns the
    "Skipped" lines."""
    def split(text):
        lines = [line for line in text.splitlines() if line.strip()]
        table = {line.split()[0]: line.split()[1:] for line in lines
                 if line.split()[0] in ("Mean", "Median", "Std", "Min", "25%", "50%", "75%", "Max")}
        messages = [line for line in lines if line.startswith(("Setting", "Found", "Skipped", "Could not", "Count"))]
        return table, messages

    (o_table, o_msgs), (r_table, r_msgs) = split(ours), split(ref)
    assert o_msgs == r_msgs
    assert list(o_table) == list(r_table) and len(r_table) == 8
    for name, values in r_table.items():
        np.testing.assert_allclose(np.array(o_table[name], float), np.array(values, float), atol=2e-4, err_msg=name)
    return [line for line in r_msgs if line.startswith("Skipped")]


CASES = {
    "triplet": dict(),
    "triplet-scores": dict(output_scores=True, num_negatives=2),
    "n-tuple": dict(output_format="n-tuple"),
    "n-tuple-scores": dict(output_format="n-tuple", output_scores=True, num_negatives=4),
    "labeled-pair": dict(output_format="labeled-pair"),
    "labeled-pair-scores": dict(output_format="labeled-pair", output_scores=True),
    "labeled-list": dict(output_format="labeled-list"),
    "labeled-list-scores": dict(output_format="labeled-list", output_scores=True),
    "range": dict(output_format="n-tuple", output_scores=True, range_min=5, range_max=8),  # the window's tail
    "absolute-margin": dict(output_scores=True, absolute_margin=0.3, range_max=30),
    "relative-margin": dict(output_format="labeled-list", output_scores=True, relative_margin=0.4, max_score=0.5),
    "score-window": dict(output_format="labeled-pair", output_scores=True, max_score=0.6, min_score=0.35),
    "include-positives": dict(include_positives=True, output_scores=True, num_negatives=2),
    "no-corpus": dict(output_format="n-tuple", output_scores=True, corpus=None),
    "cross-encoder": dict(output_format="n-tuple", output_scores=True, absolute_margin=0.0, cross_encoder=True),
    "cross-encoder-pairs": dict(output_format="labeled-pair", output_scores=True, min_score=-0.5,
                                max_score=0.8, cross_encoder=True, batch_size=16),
    "random": dict(output_format="n-tuple", output_scores=True, sampling_strategy="random", range_max=12),
}


@pytest.mark.parametrize("case", list(CASES))
def test_mine_hard_negatives_matches_reference(case, mining_data, both_models, capsys):
    dataset, corpus = mining_data
    kwargs = {"corpus": corpus, **CASES[case]}
    stubs = None
    if kwargs.pop("cross_encoder", False):
        stubs = StubCrossEncoder(), StubCrossEncoder()
    results, printed = [], []
    for (model, mine), stub in zip(((both_models[0], mine_hard_negatives), (both_models[1], ref_mine)),
                                   stubs or (None, None)):
        random.seed(12)  # "random" draws through Python's random module in both, call for call
        results.append(mine(dataset, model, cross_encoder=stub, use_faiss=False, verbose=True, **kwargs))
        printed.append(capsys.readouterr().out)
    worst = assert_same_dataset(*results)
    skipped = assert_same_report(*printed)
    print(case, len(results[0]), "rows, max score diff", worst, "|", skipped)
    filters = [name for name in ("absolute_margin", "relative_margin", "max_score", "min_score") if name in kwargs]
    assert [line.split(" due to the ")[1].split(" of ")[0] for line in skipped] == filters  # every filter bites
    if stubs is not None:
        assert stubs[0].batch_sizes and set(stubs[0].batch_sizes) == {kwargs.get("batch_size", 32)}
    if case == "include-positives":  # positives stay candidates: most rows' best "negative" is their positive
        own = sum(n == p for n, p in zip(results[0]["negative_1"], results[0]["positive"]))
        assert own > len(results[0]) // 2, own


def test_mine_hard_negatives_errors(mining_data, both_models):
    dataset, _ = mining_data
    ours = both_models[0]
    for kwargs, message in [
        (dict(num_negatives=0), "num_negatives must be at least 1"),
        (dict(range_min=5, range_max=5), "range_min must be smaller than range_max"),
        (dict(range_min=0, range_max=2, num_negatives=3), "Cannot mine 3 negatives"),
        (dict(output_format="pairs"), "Invalid output_format"),
        (dict(faiss_batch_size=0), "faiss_batch_size must be a positive integer"),
    ]:
        with pytest.raises(ValueError, match=message):
            mine_hard_negatives(dataset, ours, verbose=False, **kwargs)
        with pytest.raises(ValueError, match=message):
            ref_mine(dataset, both_models[1], verbose=False, **kwargs)


@pytest.mark.parametrize(("corpus_chunk", "k"), [(64, 5), (100, 30), (65536, 12)])
def test_sharded_search_orders_exact_ties_by_index(corpus_chunk, k):
    """The miner's search (corpus blocks split over the 8 simulated devices, masked padding) against a
    numpy exact top-k ordered by (-score, index), with exact ties across blocks and devices (torch.topk
    leaves their order unspecified; the test data above has none: its closest top-40 scores differ by 1.4e-6)."""
    import jax

    from stcore_jax.util.semantic_search import sharded_top_k_search

    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    queries = rng.normal(size=(37, 16)).astype(np.float32)
    corpus = rng.normal(size=(1003, 16)).astype(np.float32)
    corpus[:, 0] += 3.0
    queries[3] = 0.0
    queries[3, 0] = -1.0  # scores every document below 0, the score of a zero padding row: padding must be masked
    corpus[[500, 900, 1002]] = corpus[10]  # ties in other blocks and on other devices
    queries[:3] = corpus[10] + 0.05 * queries[:3]  # queries whose best four hits are the tied rows
    scores, idx = sharded_top_k_search(queries, corpus, k, score_function="cosine", corpus_chunk_size=corpus_chunk,
                                       query_chunk_size=16)
    unit = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    exact = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    exact[:, [500, 900, 1002]] = exact[:, [10]]  # exact ties, as the device computes them
    ref_idx = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    assert (idx == ref_idx).all()
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ref_idx, 1), atol=1e-6)
    assert all(row[:4] == [10, 500, 900, 1002] for row in idx[:3].tolist())
