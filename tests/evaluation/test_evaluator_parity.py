"""Each evaluator against its sentence-transformers 6.2 counterpart on STS-B test data.

Ours runs with stcore_jax.SentenceTransformer, the reference with the PyTorch model (both
all-MiniLM-L6-v2); metric dicts, primary metrics and every row of the CSV files must agree within
1e-4, the IR predictions files (ids, order, scores) within 1e-5, and ours on the reference model's
embeddings within 1e-5 (see ``make_check_parity``). The ``router`` tests repeat this with a Router model whose query, document
and plain routes and prompts all differ, so each evaluator must take the reference's way in.
"""

from __future__ import annotations

import numpy as np
import pytest
import sentence_transformers.sentence_transformer.evaluation as ref_eval

import stcore_jax.evaluation as our_eval


def _binary_labels(scores):
    return [1 if s / 5.0 >= 0.6 else 0 for s in scores]


def test_embedding_similarity(sts_test, check_parity):
    s1, s2, scores = sts_test
    check_parity(
        our_eval.EmbeddingSimilarityEvaluator(s1, s2, scores, name="sts-test"),
        ref_eval.EmbeddingSimilarityEvaluator(s1, s2, scores, name="sts-test"),
    )


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_embedding_similarity_quantized(sts_test, our_model, ref_model, precision):
    """``precision`` goes to the models' own ``encode`` (no cache): a 48-pair slice."""
    s1, s2, scores = (column[:48] for column in sts_test)
    # batch_size=64: the batch shape the session's encodes already compiled.
    kwargs = dict(precision=precision, similarity_fn_names=["cosine", "euclidean"], name="q", batch_size=64)
    ours = our_eval.EmbeddingSimilarityEvaluator(s1, s2, scores, **kwargs)(our_model._model)
    ref = ref_eval.EmbeddingSimilarityEvaluator(s1, s2, scores, **kwargs)(ref_model._model)
    assert list(ours) == list(ref)
    for key in ref:
        assert ours[key] == pytest.approx(ref[key], abs=1e-4), key


def test_embedding_similarity_all_functions(sts_test, check_parity):
    s1, s2, scores = sts_test
    fns = ["cosine", "euclidean", "manhattan", "dot"]
    ours, ref = check_parity(
        our_eval.EmbeddingSimilarityEvaluator(s1, s2, scores, similarity_fn_names=fns),
        ref_eval.EmbeddingSimilarityEvaluator(s1, s2, scores, similarity_fn_names=fns),
    )
    assert "spearman_max" in ours and ref["spearman_cosine"] > 0.8


def test_binary_classification(sts_test, check_parity):
    s1, s2, scores = sts_test
    labels = _binary_labels(scores)
    fns = ["cosine", "dot", "euclidean", "manhattan"]
    check_parity(
        our_eval.BinaryClassificationEvaluator(s1, s2, labels, name="sts-bin", similarity_fn_names=fns),
        ref_eval.BinaryClassificationEvaluator(s1, s2, labels, name="sts-bin", similarity_fn_names=fns),
    )
    check_parity(
        our_eval.BinaryClassificationEvaluator(s1, s2, labels),
        ref_eval.BinaryClassificationEvaluator(s1, s2, labels),
        once=True,
    )


def _ir_data(sts):
    """Each sentence1 is a query; its sentence2 the relevant document; the distinct sentence2s the
    corpus. Corpus ids are shuffled so that id order differs from insertion order (ties, e.g. texts
    differing only in case for the uncased model, are broken by id); every 7th query also counts the
    next pair's document as relevant."""
    s1, s2, _ = sts
    texts = list(dict.fromkeys(s2))
    perm = np.random.default_rng(0).permutation(len(texts))
    cid = {t: f"doc{perm[i]:05d}" for i, t in enumerate(texts)}
    corpus = {cid[t]: t for t in texts}
    queries = {f"q{i}": s for i, s in enumerate(s1)}
    relevant = {f"q{i}": {cid[s2[i]]} for i in range(len(s1))}
    for i in range(0, len(s1) - 1, 7):
        relevant[f"q{i}"].add(cid[s2[i + 1]])
    return queries, corpus, relevant


def test_information_retrieval(sts_test, check_parity):
    queries, corpus, relevant = _ir_data(sts_test)
    kwargs = dict(name="sts-ir", write_predictions=True)
    check_parity(
        our_eval.InformationRetrievalEvaluator(queries, corpus, relevant, **kwargs),
        ref_eval.InformationRetrievalEvaluator(queries, corpus, relevant, **kwargs),
    )


def test_information_retrieval_chunked_and_custom_k(sts_test, check_parity):
    queries, corpus, relevant = _ir_data(sts_test)
    kwargs = dict(
        corpus_chunk_size=300,
        mrr_at_k=[5, 20],
        ndcg_at_k=[3, 25],
        accuracy_at_k=[1, 2, 50],
        precision_recall_at_k=[2, 40],
        map_at_k=[7, 60],
    )
    check_parity(
        our_eval.InformationRetrievalEvaluator(queries, corpus, relevant, query_chunk_size=256, **kwargs),
        ref_eval.InformationRetrievalEvaluator(queries, corpus, relevant, **kwargs),
        once=True,
    )


def _reranking_samples(sts):
    s1, s2, _ = sts
    rng = np.random.default_rng(1)
    n = len(s1)
    samples = []
    for i in range(0, n, 3):
        negatives = [s2[j] for j in rng.choice(n, size=rng.integers(2, 15), replace=False) if j != i]
        positives = [s2[i]] + ([s2[(i + 1) % n]] if i % 9 == 0 else [])
        samples.append({"query": s1[i], "positive": positives, "negative": negatives})
    samples.append({"query": s1[1], "positive": s2[1], "negative": s2[3]})  # single strings
    samples.append({"query": s1[3], "positive": [], "negative": [s2[5]]})  # dropped
    return samples


def test_reranking(sts_test, check_parity):
    samples = _reranking_samples(sts_test)
    check_parity(
        our_eval.RerankingEvaluator(samples, name="sts-rr"), ref_eval.RerankingEvaluator(samples, name="sts-rr")
    )
    check_parity(our_eval.RerankingEvaluator(samples, at_k=3), ref_eval.RerankingEvaluator(samples, at_k=3), once=True)


def _triplets(sts):
    s1, s2, scores = sts
    rng = np.random.default_rng(2)
    anchors = [s1[i] for i in range(len(s1)) if scores[i] >= 3.0]
    positives = [s2[i] for i in range(len(s1)) if scores[i] >= 3.0]
    negatives = [s2[j] for j in rng.integers(0, len(s2), size=len(anchors))]
    # Hard negatives: half use the sentence2 of a low-score pair with the same sentence1 genre order.
    low = [s2[i] for i in range(len(s1)) if scores[i] < 2.0]
    negatives[::2] = [low[j % len(low)] for j in range(len(negatives[::2]))]
    return anchors, positives, negatives


def test_triplet(sts_test, check_parity):
    a, p, n = _triplets(sts_test)
    fns = ["cosine", "dot", "euclidean", "manhattan"]
    check_parity(our_eval.TripletEvaluator(a, p, n, name="sts-tri"), ref_eval.TripletEvaluator(a, p, n, name="sts-tri"))
    check_parity(
        our_eval.TripletEvaluator(a, p, n, similarity_fn_names=fns, margin={"cosine": 0.05, "euclidean": 0.1}),
        ref_eval.TripletEvaluator(a, p, n, similarity_fn_names=fns, margin={"cosine": 0.05, "euclidean": 0.1}),
        once=True,
    )


def test_mse(sts_test, our_model, ref_model, check_parity):
    s1, s2, _ = sts_test
    check_parity(
        our_eval.MSEEvaluator(s1, s2, teacher_model=our_model, name="sts-mse"),
        ref_eval.MSEEvaluator(s1, s2, teacher_model=ref_model, name="sts-mse"),
        atol=1e-5,
    )


def test_mse_from_dataframe(sts_test, our_model, ref_model, check_parity):
    s1, s2, _ = sts_test
    rows = [{"en": a, "de": b, "fr": ""} for a, b in zip(s1[:400], s2[:400])] + [{"en": "x", "de": "", "fr": "y"}]
    combinations = [("en", "de"), ("de", "en"), ("en", "fr")]
    check_parity(
        our_eval.MSEEvaluatorFromDataFrame(rows, our_model, combinations, name="df"),
        ref_eval.MSEEvaluatorFromDataFrame(rows, ref_model, combinations, name="df"),
        atol=1e-5,
    )


def _paraphrase_data(sts):
    s1, s2, scores = sts
    texts = list(dict.fromkeys([*s1, *s2]))
    ids = {t: f"s{i}" for i, t in enumerate(texts)}
    sentences_map = {ids[t]: t for t in texts}
    duplicates = [(ids[a], ids[b]) for a, b, s in zip(s1, s2, scores) if s >= 4.0 and a != b]
    return sentences_map, duplicates


def test_paraphrase_mining(sts_test, check_parity):
    sentences_map, duplicates = _paraphrase_data(sts_test)
    check_parity(
        our_eval.ParaphraseMiningEvaluator(sentences_map, duplicates, name="sts-pm"),
        ref_eval.ParaphraseMiningEvaluator(sentences_map, duplicates, name="sts-pm"),
    )
    kwargs = dict(top_k=5, max_pairs=1500, query_chunk_size=700, corpus_chunk_size=1000, add_transitive_closure=True)
    check_parity(
        our_eval.ParaphraseMiningEvaluator(sentences_map, duplicates, **kwargs),
        ref_eval.ParaphraseMiningEvaluator(sentences_map, duplicates, **kwargs),
        once=True,
    )


def test_translation(sts_test, check_parity):
    s1, s2, _ = sts_test
    check_parity(
        our_eval.TranslationEvaluator(s1, s2, name="sts-tr"), ref_eval.TranslationEvaluator(s1, s2, name="sts-tr")
    )


def test_sequential(sts_test, check_parity):
    s1, s2, scores = sts_test
    labels = _binary_labels(scores)
    a, p, n = _triplets(sts_test)

    def build(module):
        return module.SequentialEvaluator(
            [
                module.EmbeddingSimilarityEvaluator(s1, s2, scores, name="sts"),
                module.BinaryClassificationEvaluator(s1, s2, labels, name="bin"),
                module.TripletEvaluator(a, p, n),
            ],
            main_score_function=lambda values: sum(values) / len(values),
        )

    ours, _ = check_parity(build(our_eval), build(ref_eval))
    assert ours["sequential_score"] == pytest.approx(
        (ours["sts_spearman_cosine"] + ours["bin_cosine_ap"] + ours["cosine_accuracy"]) / 3
    )


def test_label_accuracy(sts_test, our_model, ref_model_raw, tmp_path):
    import torch
    from sentence_transformers import InputExample
    from sentence_transformers.sentence_transformer.losses import SoftmaxLoss
    from torch.utils.data import DataLoader

    s1, s2, scores = sts_test
    n = 32  # the reference evaluator runs the PyTorch model itself (twice)
    labels = [0 if s < 2 else (1 if s < 4 else 2) for s in scores[:n]]
    examples = [InputExample(texts=[a, b], label=y) for a, b, y in zip(s1[:n], s2[:n], labels)]
    torch.manual_seed(0)
    head = SoftmaxLoss(ref_model_raw, embedding_dimension=384, num_labels=3, concatenation_sent_multiplication=True)
    ref = ref_eval.LabelAccuracyEvaluator(DataLoader(examples, batch_size=16), name="sts-3", softmax_model=head)
    for epoch, steps in ((0, 10), (1, -1)):  # a second call appends a row
        ref_result = ref(ref_model_raw, output_path=str(tmp_path / "ref"), epoch=epoch, steps=steps)

    params = {
        "classifier": {
            "kernel": head.classifier.weight.detach().numpy().T,
            "bias": head.classifier.bias.detach().numpy(),
        }
    }
    ours = our_eval.LabelAccuracyEvaluator(
        DataLoader(examples, batch_size=16), name="sts-3", softmax_model=params, concatenation_sent_multiplication=True
    )
    for epoch, steps in ((0, 10), (1, -1)):
        ours_result = ours(our_model, output_path=str(tmp_path / "ours"), epoch=epoch, steps=steps)
    assert list(ours_result) == list(ref_result) == ["sts-3_accuracy"]
    assert ours_result["sts-3_accuracy"] == pytest.approx(ref_result["sts-3_accuracy"], abs=1e-4)
    assert ours.primary_metric == ref.primary_metric
    # Every row, exactly: epoch, steps and the accuracy (a count over 32).
    assert (tmp_path / "ours" / ref.csv_file).read_text() == (tmp_path / "ref" / ref.csv_file).read_text()
    assert len((tmp_path / "ref" / ref.csv_file).read_text().splitlines()) == 3

    class Head:  # an object carrying params and the SoftmaxLoss flags
        concatenation_sent_multiplication = True

    Head.params = params
    rows = [{"sentence1": a, "sentence2": b, "label": y} for a, b, y in zip(s1[:n], s2[:n], labels)]
    again = our_eval.LabelAccuracyEvaluator(rows, softmax_model=Head())(our_model)
    assert again == {"accuracy": ours_result["sts-3_accuracy"]}


def _head(sts, n):
    return tuple(column[:n] for column in sts)


def test_router_retrieval_evaluators(sts_test, check_router_parity, router_models):
    """IR, reranking and triplets embed queries/anchors with ``encode_query`` and documents with
    ``encode_document`` (route and prompt); explicit prompt names and prompts (even "") override the
    model's prompts but keep the route."""
    sts = _head(sts_test, 150)
    queries, corpus, relevant = _ir_data(sts)
    samples, (a, p, n) = _reranking_samples(sts), _triplets(sts)

    def build(module):
        return module.SequentialEvaluator(
            [
                module.InformationRetrievalEvaluator(queries, corpus, relevant, name="ir", write_predictions=True),
                module.InformationRetrievalEvaluator(
                    queries, corpus, relevant, name="ir-prompted", query_prompt_name="document", corpus_prompt="",
                    write_predictions=True, corpus_chunk_size=40, accuracy_at_k=[1, 5], map_at_k=[20],
                ),
                module.RerankingEvaluator(samples, name="rr"),
                module.TripletEvaluator(a, p, n, name="tri", similarity_fn_names=["cosine", "dot"]),
            ]
        )

    check_router_parity(build(our_eval), build(ref_eval))
    ours, ref = router_models
    assert ours.routes == ref.routes[: len(ours.routes)]  # the same methods and prompt arguments, in order
    assert set(ours.routes) == {
        ("encode_query", None, None),
        ("encode_document", None, None),
        ("encode_query", None, "document"),
        ("encode_document", "", None),
    }


def test_router_symmetric_evaluators(sts_test, check_router_parity, router_models):
    """Evaluators of symmetric pairs embed everything with plain ``encode`` (default route and prompt)."""
    s1, s2, scores = _head(sts_test, 150)
    sentences_map, duplicates = _paraphrase_data((s1, s2, scores))
    ours_model, ref_model = router_models

    def build(module, teacher):
        return module.SequentialEvaluator(
            [
                module.EmbeddingSimilarityEvaluator(s1, s2, scores, name="sts"),
                module.BinaryClassificationEvaluator(s1, s2, _binary_labels(scores), name="bin"),
                module.ParaphraseMiningEvaluator(sentences_map, duplicates, name="pm"),
                module.TranslationEvaluator(s1, s2, name="tr"),
                module.MSEEvaluator(s1, s2, teacher_model=teacher, name="mse"),
            ]
        )

    check_router_parity(build(our_eval, ours_model), build(ref_eval, ref_model))
    assert ours_model.routes == ref_model.routes[: len(ours_model.routes)]
    assert set(ours_model.routes) == {("encode", None, None)}


def test_router_model_ways_in_differ(sts_test, router_models):
    """The Router model is a sensitive probe: its three ways in give clearly different embeddings
    (route and prompt, or prompt alone), and ours match the reference's for each."""
    texts = list(sts_test[0][:8])
    ours, ref = router_models
    outs = {}
    for method in ("encode", "encode_query", "encode_document"):
        outs[method] = getattr(ours, method)(texts)
        np.testing.assert_allclose(outs[method], getattr(ref, method)(texts), atol=1e-5, rtol=0)

    def relative_change(a, b):  # smallest over the texts of |a - b| / |b|
        return (np.linalg.norm(outs[a] - outs[b], axis=1) / np.linalg.norm(outs[b], axis=1)).min()

    assert relative_change("encode", "encode_document") > 0.1  # same route, another prompt
    assert relative_change("encode_query", "encode_document") > 0.1  # another route and prompt
