"""Router: routing by task in encode and in training (router_mapping), and the sentence-transformers
directory layout in both directions, checked against PyTorch sentence-transformers."""

import json
import os

import jax
import numpy as np
import pytest
from datasets import Dataset

import tiny_models
from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.losses import MultipleNegativesRankingLoss
from stcore_jax.models import Normalize, Pooling, Router, StaticEmbedding, Transformer
from stcore_jax.util import read_sts

QUERIES = ["what is a plane doing?", "who plays the flute", "Hi", ""]
DOCS = ["A plane is taking off.", "A man is playing a large flute.", "The quick brown fox jumps over the lazy dog."]


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("router_bert")
    return tiny_models.build_hf("bert", str(root / "hf"), str(minilm_path), corpus=[])


@pytest.fixture(scope="module")
def stsb_pairs(stsb_dir):
    s1, s2, sc = read_sts(stsb_dir / "sts-train.csv")
    keep = [i for i, x in enumerate(sc) if x >= 4.0][:48]
    return Dataset.from_dict({"anchor": [s1[i] for i in keep], "positive": [s2[i] for i in keep]})


def _static_query_model(tiny_hf, minilm_path):
    """Asymmetric: queries through a StaticEmbedding (no special tokens), documents through BERT + mean."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(minilm_path, "tokenizer.json"))
    static = StaticEmbedding(tok, embedding_dim=32, seed=3)
    bert = Transformer(tiny_hf, max_seq_length=32)
    router = Router.for_query_document([static], [bert, Pooling(32, "mean")])
    return SentenceTransformer(modules=[router, Normalize()])


def _torch_shared_router(tiny_hf, out_dir):
    """A PyTorch Router: one Transformer shared by two routes with different Dense heads, and route_mappings."""
    import torch
    from sentence_transformers import SentenceTransformer as TorchST
    from sentence_transformers.models import Dense, Pooling as TPooling, Router as TRouter, Transformer as TTransformer

    torch.manual_seed(0)
    t = TTransformer(tiny_hf, max_seq_length=32)
    router = TRouter(
        {"q": [t, TPooling(32, "cls"), Dense(32, 16)], "d": [t, TPooling(32, "mean"), Dense(32, 16, bias=False)]},
        default_route="d", route_mappings={("query", None): "q", ("document", None): "d"})
    st = TorchST(modules=[router], device="cpu", prompts={"query": "query: "})
    st.save(out_dir)
    return st


def _changed(a, b):
    return not np.array_equal(np.asarray(a), np.asarray(b))


def test_torch_router_loads_with_equal_embeddings(tiny_hf, tmp_path):
    ref = _torch_shared_router(tiny_hf, str(tmp_path / "torch"))
    ours = SentenceTransformer(str(tmp_path / "torch"))
    router = ours[0]
    assert isinstance(router, Router) and router.default_route == "d"
    assert router.structure["q"][0] == router.structure["d"][0]  # the shared Transformer is one module
    assert list(ours.params["0"]) == ["q_0_Transformer", "q_2_Dense", "d_2_Dense"]
    assert router.resolve_route("query") == "q" and router.resolve_route(None) == "d"
    q_ref, d_ref = ref.encode_query(QUERIES), ref.encode_document(DOCS)
    np.testing.assert_allclose(ours.encode_query(QUERIES), q_ref, atol=1e-5, rtol=0)  # "query: " prompt + route q
    np.testing.assert_allclose(ours.encode_document(DOCS), d_ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours.encode(DOCS), ref.encode(DOCS), atol=1e-5, rtol=0)  # default route
    np.testing.assert_allclose(ours.encode(QUERIES, task="query", prompt="query: "), q_ref, atol=1e-5, rtol=0)
    assert np.abs(ours.encode(DOCS, task="query") - ours.encode(DOCS, task="document")).max() > 1e-3
    with pytest.raises(ValueError, match="no route for task 'nope'.*task='q'"):
        ours.encode(DOCS, task="nope")

    # Ours -> disk -> ours and -> PyTorch: same layout, route_mappings kept, same numbers.
    ours.save_pretrained(str(tmp_path / "ours"))
    cfg = json.load(open(tmp_path / "ours" / "router_config.json"))
    assert cfg["structure"]["d"][0] == "q_0_Transformer" and sorted(os.listdir(tmp_path / "ours")).count("q_0_Transformer")
    assert cfg["types"]["q_2_Dense"] == "sentence_transformers.models.Dense"
    from sentence_transformers import SentenceTransformer as TorchST

    back = TorchST(str(tmp_path / "ours"), device="cpu")
    np.testing.assert_allclose(back.encode_query(QUERIES), q_ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(back.encode_document(DOCS), d_ref, atol=1e-5, rtol=0)


def test_router_trains_with_router_mapping_and_exports(tiny_hf, minilm_path, stsb_pairs, tmp_path):
    from tokenizers import Tokenizer

    model = _static_query_model(tiny_hf, minilm_path)
    before = jax.device_get(model.params)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-2,
        save_strategy="no", disable_tqdm=True, save_final_model=False, logging_steps=1,
        router_mapping={"anchor": "query", "positive": "document"})
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=stsb_pairs,
                                         loss=MultipleNegativesRankingLoss(model))
    assert trainer.train_prepared["train"].tasks == ["query", "document"]
    trainer.train()
    after = jax.device_get(model.params)
    assert len(trainer.state.log_history) >= 3 and all(np.isfinite(h["loss"]) for h in trainer.state.log_history)

    # The query route's table moved exactly on the rows of the anchors' tokens (3 steps x 16 rows = all 48
    # anchors): anchors went through the StaticEmbedding (tokenized without special tokens), positives
    # through BERT only. Positives have tokens anchors lack, so a wrong route would show.
    tok = Tokenizer.from_file(os.path.join(minilm_path, "tokenizer.json"))
    tok.no_padding()  # the file pads to 128 with id 0
    ids = {c: {i for t in stsb_pairs[c] for i in tok.encode(t, add_special_tokens=False).ids} for c in stsb_pairs.column_names}
    assert ids["positive"] - ids["anchor"]
    table0 = before["0"]["query_0_StaticEmbedding"]["embedding"]["embedding"]
    table1 = after["0"]["query_0_StaticEmbedding"]["embedding"]["embedding"]
    moved = set(np.nonzero(np.any(table0 != table1, axis=1))[0].tolist())
    assert moved == ids["anchor"]
    # The document route (BERT) trained too.
    bert0, bert1 = before["0"]["document_0_Transformer"], after["0"]["document_0_Transformer"]
    assert any(_changed(a, b) for a, b in zip(jax.tree_util.tree_leaves(bert0), jax.tree_util.tree_leaves(bert1)))

    # Export -> PyTorch: encode_query / encode_document equal ours, with the prompts they pick.
    model.prompts.update({"query": "query: ", "document": "passage: "})
    model.save_pretrained(str(tmp_path / "export"))
    entry = json.load(open(tmp_path / "export" / "modules.json"))[0]
    assert entry["path"] == "" and entry["type"] == "sentence_transformers.models.Router"
    from sentence_transformers import SentenceTransformer as TorchST

    ref = TorchST(str(tmp_path / "export"), device="cpu")
    q, d = model.encode_query(QUERIES), model.encode_document(DOCS)
    np.testing.assert_allclose(ref.encode_query(QUERIES), q, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ref.encode_document(DOCS), d, atol=1e-5, rtol=0)
    assert np.abs(model.encode_query(DOCS) - model.encode_document(DOCS)).max() > 1e-2


def test_router_training_input_errors(tiny_hf, minilm_path, stsb_pairs, tmp_path):
    model = _static_query_model(tiny_hf, minilm_path)
    loss = MultipleNegativesRankingLoss(model)

    def make(**kw):
        args = SentenceTransformerTrainingArguments(output_dir=str(tmp_path / "o"), max_steps=1, disable_tqdm=True,
                                                    save_final_model=False, save_strategy="no", **kw)
        return SentenceTransformerTrainer(model=model, args=args, train_dataset=stsb_pairs, loss=loss)

    with pytest.raises(ValueError, match="no router_mapping.*routes: \\['query', 'document'\\]"):
        make()
    with pytest.raises(ValueError, match="no route for task 'passage'"):
        make(router_mapping={"anchor": "query", "positive": "passage"})
    with pytest.raises(ValueError, match="needs a DatasetDict"):
        make(router_mapping={"train": {"anchor": "query", "positive": "document"}})
    trainer = make(router_mapping='{"anchor": "query"}')  # JSON string from a CLI; positive: default route
    assert trainer.train_prepared["train"].tasks == ["query", None]


def test_router_construction_and_load_errors(tiny_hf, tmp_path):
    with pytest.raises(ValueError, match="default_route 'x' is not one of the routes"):
        Router({"a": [Normalize()]}, default_route="x")
    with pytest.raises(ValueError, match="route_mappings maps .* to 'z'"):
        Router({"a": [Normalize()]}, route_mappings={("query", None): "z"})
    with pytest.raises(ValueError, match="route 'a' has no modules"):
        Router({"a": []})
    r = Router({"a": [Normalize()], "b": [Normalize()]}, allow_empty_key=False)
    with pytest.raises(ValueError, match="no task given and no default_route"):
        r.resolve_route(None)
    # A router_config.json naming a module type we cannot load fails before any weights are read.
    _torch_shared_router(tiny_hf, str(tmp_path / "m"))
    cfg_path = tmp_path / "m" / "router_config.json"
    cfg = json.load(open(cfg_path))
    cfg["types"]["q_2_Dense"] = "my_pkg.FancyHead"
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(ValueError, match="module 'q_2_Dense'.*'my_pkg.FancyHead'.*not support"):
        SentenceTransformer(str(tmp_path / "m"))
    cfg["types"] = {"../evil": "sentence_transformers.models.Dense"}
    json.dump(cfg, open(cfg_path, "w"))
    with pytest.raises(ValueError, match="not a plain folder name"):
        SentenceTransformer(str(tmp_path / "m"))


def test_task_survives_gradcache_bf16_view_and_legacy_inputs(tiny_hf, minilm_path):
    """The task rides along GradCache's chunking (features split into batched / rest) and the bf16 view."""
    import jax.numpy as jnp

    from stcore_jax.losses import CachedMultipleNegativesRankingLoss
    from stcore_jax.models.router import Task
    from stcore_jax.sentence_transformer.losses.embed import compute_loss

    model = _static_query_model(tiny_hf, minilm_path)
    router = model[0]
    cols = []
    for task, texts in (("query", QUERIES), ("document", DOCS + ["Hi"])):
        feats = router.pad(router.tokenize_ids(texts, task=task), 16, 4, task=task)
        cols.append({**feats, "task": Task(task)})
    plain = MultipleNegativesRankingLoss(model)
    cached = CachedMultipleNegativesRankingLoss(model, mini_batch_size=2)
    fn = jax.jit(jax.value_and_grad(lambda p, c, loss: compute_loss(loss, model.forward, p, c), argnums=0),
                 static_argnums=2)
    (l1, g1), (l2, g2) = fn(model.params, cols, plain), fn(model.params, cols, cached)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
    assert np.abs(g1["0"]["query_0_StaticEmbedding"]["embedding"]["embedding"]).sum() > 0

    view = model.with_compute_dtype(jnp.bfloat16)
    assert view[0].structure == router.structure and view[0].modules["query_0_StaticEmbedding"] is router.modules[
        "query_0_StaticEmbedding"]
    assert view[0].modules["document_0_Transformer"].config.dtype == jnp.bfloat16
    q = view.forward(model.params, cols[0])["sentence_embedding"]
    np.testing.assert_allclose(q, model.forward(model.params, cols[0])["sentence_embedding"], atol=1e-6)  # static: f32

    # Asym-era dict inputs name the task.
    np.testing.assert_allclose(model.encode([{"query": t} for t in QUERIES]), model.encode_query(QUERIES), atol=1e-6)
    with pytest.raises(ValueError, match="same one; got keys \\['document', 'query'\\]"):
        model.encode([{"query": "a"}, {"document": "b"}])
