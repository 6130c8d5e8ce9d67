"""StaticEmbedding against PyTorch sentence-transformers (same weights and tokenizer), both save layouts,
Model2Vec directories, native distillation (encoder pass checked against transformers, PCA against
scikit-learn), every loss's gradient, and a short STS-B run that must improve dev Spearman."""

import json
import os

import jax
import numpy as np
import pytest
from datasets import Dataset
from safetensors.numpy import save_file
from tokenizers import Tokenizer

import tiny_models
from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.distill import pca, sif_weights, token_embeddings
from stcore_jax.models import Normalize, StaticEmbedding
from stcore_jax.models.transformer import Transformer
from stcore_jax.util import read_sts

TEXTS = list(tiny_models.SENTENCES) + ["word " * 300, "[CLS] [unused5] tokens as text"]  # "" -> zeros; 300 > 128


@pytest.fixture(scope="module")
def tok(minilm_path):
    return Tokenizer.from_file(os.path.join(minilm_path, "tokenizer.json"))


@pytest.fixture(scope="module")
def weights(tok):
    return np.random.default_rng(0).standard_normal((tok.get_vocab_size(), 24)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, minilm_path):
    return tiny_models.build_hf("bert", str(tmp_path_factory.mktemp("distill") / "hf"), str(minilm_path), corpus=[])


def _torch_static(tok, weights):
    from sentence_transformers import SentenceTransformer as TorchST
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as TorchStatic

    return TorchST(modules=[TorchStatic(Tokenizer.from_str(tok.to_str()), embedding_weights=weights)], device="cpu")


def test_parity_and_save_load_both_ways(tok, weights, tmp_path):
    from sentence_transformers import SentenceTransformer as TorchST

    ref = _torch_static(tok, weights)
    ours = SentenceTransformer(modules=[StaticEmbedding(tok, embedding_weights=weights)])
    assert tok.padding is not None  # the caller's tokenizer is not modified (ours works on a copy)
    expected = ref.encode(TEXTS)
    got = ours.encode(TEXTS, batch_size=4)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert np.all(got[TEXTS.index("")] == 0)  # an empty bag is zeros, as EmbeddingBag gives
    assert ours.max_seq_length == 128  # the tokenizer file truncates at 128 (without special tokens)

    ours.save_pretrained(str(tmp_path / "ours"))
    entry = json.load(open(tmp_path / "ours" / "modules.json"))[0]
    assert entry == {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.StaticEmbedding"}
    np.testing.assert_allclose(TorchST(str(tmp_path / "ours"), device="cpu").encode(TEXTS), expected, atol=1e-6, rtol=0)

    ref.save(str(tmp_path / "torch"))
    back = SentenceTransformer(str(tmp_path / "torch"))
    assert isinstance(back[0], StaticEmbedding)
    np.testing.assert_allclose(back.encode(TEXTS), expected, atol=1e-6, rtol=0)


def test_model2vec_directory(tok, tmp_path):
    """Model2Vec's layout: ``embeddings`` (+ a token -> row ``mapping`` and per-token ``weights``)."""
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding as TorchStatic

    rng = np.random.default_rng(1)
    vocab = tok.get_vocab_size()
    tensors = {"embeddings": rng.standard_normal((500, 16)).astype(np.float32),
               "mapping": rng.integers(0, 500, vocab).astype(np.int64),
               "weights": rng.uniform(0.1, 2.0, vocab).astype(np.float32)}
    path = tmp_path / "m2v"
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"))
    tok.save(str(path / "tokenizer.json"))
    json.dump({"model_type": "model2vec", "hidden_dim": 16, "normalize": True}, open(path / "config.json", "w"))

    ref = TorchStatic.load(str(path))
    import torch

    feats = ref.preprocess(TEXTS)
    with torch.no_grad():
        expected = ref(feats)["sentence_embedding"].numpy()
    static = StaticEmbedding.from_model2vec(str(path))
    np.testing.assert_allclose(SentenceTransformer(modules=[static]).encode(TEXTS), expected, atol=1e-5, rtol=0)
    model = SentenceTransformer(str(path))  # no modules.json: read as Model2Vec, normalised as its config says
    assert [type(m) for m in model.modules] == [StaticEmbedding, Normalize]
    norms = np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(model.encode(TEXTS), expected / np.maximum(norms, 1e-12), atol=1e-5, rtol=0)


def test_distillation(tiny_hf, tmp_path):
    import torch
    from sklearn.decomposition import PCA
    from transformers import AutoModel, AutoTokenizer

    # 1. Each token's vector: mean output state of [SEP, id, CLS] (Model2Vec's reversed specials).
    hf_tok = AutoTokenizer.from_pretrained(tiny_hf)
    raw = token_embeddings(Transformer(tiny_hf))  # 30522 rows in batches of 1024: the last one padded
    assert raw.shape == (len(hf_tok.get_vocab()), 32)
    ids = [0, 1, 100, 101, 2000, 30521]
    seq = torch.tensor([[hf_tok.sep_token_id, i, hf_tok.cls_token_id] for i in ids])
    with torch.no_grad():
        expected = AutoModel.from_pretrained(tiny_hf)(input_ids=seq).last_hidden_state.mean(1).numpy()
    np.testing.assert_allclose(raw[ids], expected, atol=1e-5, rtol=0)

    # 2. No PCA / no SIF: the table is the raw one without the [unusedN] rows, and the rebuilt tokenizer
    #    gives every remaining token (specials included) the row it had.
    plain = StaticEmbedding.from_distillation(tiny_hf, pca_dims=None, apply_zipf=False)
    unused = [t for t in hf_tok.get_vocab() if t.startswith("[unused")]
    assert len(unused) > 900 and plain.num_embeddings == raw.shape[0] - len(unused)
    old_vocab, new_vocab = hf_tok.get_vocab(), plain.tokenizer.get_vocab()
    for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "##ing", "zebra"):
        np.testing.assert_allclose(np.asarray(plain.params["embedding"]["embedding"])[new_vocab[t]], raw[old_vocab[t]],
                                   atol=1e-6, rtol=0)
    text = "Tokenizers split unbelievable words."
    assert plain.tokenizer.encode(text).tokens == hf_tok.tokenize(text, add_special_tokens=True)

    # 3. PCA equals scikit-learn's (signs included); SIF scales row r by a / (a + p_r), rising with rank.
    kept = np.delete(raw, [old_vocab[t] for t in unused], axis=0).astype(np.float64)
    ours = pca(kept, 16)
    np.testing.assert_allclose(ours, PCA(n_components=16, svd_solver="full").fit_transform(kept), atol=1e-6, rtol=0)
    assert pca(kept, 0.9).shape[1] == PCA(n_components=0.9, svd_solver="full").fit(kept).n_components_
    distilled = StaticEmbedding.from_distillation(tiny_hf, pca_dims=16)  # the defaults: Zipf/SIF 1e-4
    table = np.asarray(distilled.params["embedding"]["embedding"])
    assert table.shape == (plain.num_embeddings, 16) and table.dtype == np.float32
    np.testing.assert_allclose(table, ours * sif_weights(len(ours), 1e-4)[:, None], atol=1e-5, rtol=0)
    assert sif_weights(10, 1e-4)[0] < sif_weights(10, 1e-4)[-1] < 1.0
    again = StaticEmbedding.from_distillation(tiny_hf, pca_dims=16)
    np.testing.assert_array_equal(np.asarray(again.params["embedding"]["embedding"]), table)  # deterministic

    # 4. The distilled module (rebuilt tokenizer included) saves into a directory PyTorch loads identically.
    from sentence_transformers import SentenceTransformer as TorchST

    model = SentenceTransformer(modules=[distilled])
    model.save_pretrained(str(tmp_path / "distilled"))
    np.testing.assert_allclose(TorchST(str(tmp_path / "distilled"), device="cpu").encode(TEXTS), model.encode(TEXTS),
                               atol=1e-5, rtol=0)


def test_bad_inputs(tok, tiny_hf, tmp_path):
    with pytest.raises(ValueError, match="needs a fast tokenizer"):
        StaticEmbedding("bert-base-uncased", embedding_dim=8)
    with pytest.raises(ValueError, match="has 10 rows but the tokenizer has 30522 tokens"):
        StaticEmbedding(tok, embedding_weights=np.zeros((10, 4)))
    with pytest.raises(ValueError, match="needs embedding_weights or embedding_dim"):
        StaticEmbedding(tok)
    for kwargs, message in (({"vocabulary": ["zebra"]}, "custom vocabulary"), ({"quantize_to": "int8"}, "quantize_to"),
                            ({"sif_coefficient": 2.0}, "sif_coefficient must be"), ({"pca_dims": -3}, "pca_dims must"),
                            ({"token_remove_pattern": "["}, "invalid token_remove_pattern")):
        with pytest.raises(ValueError, match=message):
            StaticEmbedding.from_distillation(tiny_hf, **kwargs)
    empty = tmp_path / "no_tok"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        StaticEmbedding.load(str(empty))
    tok.save(str(empty / "tokenizer.json"))
    save_file({"something.else": np.zeros((3, 2), np.float32)}, str(empty / "model.safetensors"))
    with pytest.raises(ValueError, match="neither 'embedding.weight'.*nor 'embeddings'"):
        StaticEmbedding.load(str(empty))
    model = SentenceTransformer(modules=[Normalize(), StaticEmbedding(tok, embedding_dim=4)])
    with pytest.raises(ValueError, match="StaticEmbedding is only supported as the first module"):
        model.save_pretrained(str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


def test_every_loss_kind_gets_gradients(tok):
    """Through the trainer-facing compute_loss: plain, GradCache, wrapper and labelled losses."""
    from stcore_jax.losses import (
        CachedMultipleNegativesRankingLoss,
        CoSENTLoss,
        MatryoshkaLoss,
        MultipleNegativesRankingLoss,
        TripletLoss,
    )
    from stcore_jax.sentence_transformer.losses.embed import compute_loss

    static = StaticEmbedding(tok, embedding_dim=16, seed=1)
    model = SentenceTransformer(modules=[static])
    cols = [static.pad(static.tokenize_ids(texts), 16, 8) for texts in (
        ["a plane", "a man plays", "two dogs", "hello", "", "", "", ""],
        ["an airplane", "a guy plays", "dogs run", "hi there", "", "", "", ""],
        ["a cat", "nothing", "a car", "bye", "", "", "", ""])]
    mask = np.array([True] * 4 + [False] * 4)  # a partial batch: 4 all-padding rows
    labels = np.array([0.9, 0.8, 0.3, 0.5, 0, 0, 0, 0], np.float32)
    used = {i for c in cols for row in c["input_ids"][:4] for i in row if i}
    for loss, n_cols, lab in ((MultipleNegativesRankingLoss(model), 3, None), (TripletLoss(model), 3, None),
                              (CachedMultipleNegativesRankingLoss(model, mini_batch_size=2), 2, None),
                              (MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), [16, 8]), 2, None),
                              (CoSENTLoss(model), 2, labels)):
        grad_fn = jax.jit(jax.grad(lambda p, c, y: compute_loss(loss, model.forward, p, c, y, mask=mask, num_shards=1)))
        grads = grad_fn(model.params, cols[:n_cols], lab)
        g = np.asarray(grads["0"]["embedding"]["embedding"])
        assert np.isfinite(g).all(), type(loss).__name__
        assert set(np.nonzero(np.abs(g).sum(1))[0].tolist()) <= used and np.abs(g).sum() > 0, type(loss).__name__


def test_training_from_scratch_improves_stsb(tok, stsb_dir, tmp_path):
    """Random table (MiniLM vocabulary, 256 dims), MNRL on the 1,406 STS-B train pairs scored >= 4 of 5:
    one epoch of 11 steps (the last one partial) must raise STS-B dev Spearman."""
    from stcore_jax.evaluation import EmbeddingSimilarityEvaluator
    from stcore_jax.losses import MultipleNegativesRankingLoss

    s1, s2, sc = read_sts(stsb_dir / "sts-train.csv")  # scores on the 0-5 scale
    keep = [i for i, x in enumerate(sc) if x >= 4.0]
    pairs = Dataset.from_dict({"anchor": [s1[i] for i in keep], "positive": [s2[i] for i in keep]})
    d1, d2, dsc = read_sts(stsb_dir / "sts-dev.csv")
    evaluator = EmbeddingSimilarityEvaluator(d1, d2, [x / 5 for x in dsc], batch_size=256, write_csv=False)
    model = SentenceTransformer(modules=[StaticEmbedding(tok, embedding_dim=256)])
    before = evaluator(model)["spearman_cosine"]
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=128, learning_rate=0.2,
        warmup_ratio=0.1, mesh_shape={"data": 1}, save_strategy="no", disable_tqdm=True, save_final_model=False)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs,
                                         loss=MultipleNegativesRankingLoss(model))
    result = trainer.train()
    after = evaluator(model)["spearman_cosine"]
    assert len(pairs) % 128 and result["global_step"] == 11 and result["skipped_steps"] == 0
    assert after > before + 0.05, (before, after)  # measured: 0.577 -> 0.699
