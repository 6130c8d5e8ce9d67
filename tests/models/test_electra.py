"""ELECTRA (``embedding_size`` != ``hidden_size``, so ``embeddings_project`` is exercised) against transformers:
mean-pooled encoder output, ``ElectraForSequenceClassification`` (1 and 3 labels) and ``ElectraForMaskedLM``
logits, the export round trip, and CrossEncoder.predict against sentence-transformers'."""

import json
import os

import numpy as np
import pytest
import torch
import transformers as tf
from safetensors import safe_open
from sentence_transformers import CrossEncoder as RefCrossEncoder

import tiny_models
from stcore_jax import CrossEncoder, SentenceTransformer
from stcore_jax.models.heads import load_head_model

ATOL = 1e-5
AUTO = {"sequence_classification": tf.AutoModelForSequenceClassification, "masked_lm": tf.AutoModelForMaskedLM}
CASES = (("sequence_classification", 1), ("sequence_classification", 3), ("masked_lm", None))
PAIRS = [("A girl is styling her hair.", "A woman is combing her hair."), ("Hi", "Numbers 123 and symbols #@!"),
         ("One woman is measuring another woman's ankle.", "")]


def _perturbed(model):
    """Biases and norms away from 0/1 so that a wrong mapping shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def _torch_logits(model, enc):
    with torch.no_grad():
        return model.eval()(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()


def _keys(path):
    with safe_open(os.path.join(path, "model.safetensors"), "np") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def electra(tmp_path_factory, minilm_path):
    """(plain ElectraModel dir, tokenized SENTENCES, {(kind, num_labels): (head dir, transformers' logits)})."""
    root = tmp_path_factory.mktemp("electra")
    plain = str(root / "plain")
    tok = tiny_models._bert_tokenizer(str(minilm_path), plain)  # ELECTRA uses BERT's WordPiece tokenizer
    cfg = tf.ElectraConfig(vocab_size=len(tok), embedding_size=16, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=4, intermediate_size=64, max_position_embeddings=160)
    torch.manual_seed(0)
    _perturbed(tf.ElectraModel(cfg)).save_pretrained(plain)
    enc = dict(tok(tiny_models.SENTENCES, padding=True, return_tensors="np"))
    heads = {}
    for kind, n in CASES:
        torch.manual_seed(1)
        model = _perturbed(AUTO[kind].from_config(tf.AutoConfig.from_pretrained(plain, **({"num_labels": n} if n else {}))))
        path = str(root / f"{kind}-{n}")
        model.save_pretrained(path)
        tok.save_pretrained(path)
        heads[kind, n] = path, _torch_logits(model, enc)
    return plain, enc, heads


def test_mean_pooled_encoder_matches_transformers(electra):
    plain, _, _ = electra
    ours = SentenceTransformer(plain)
    assert ours[0].encoder_cls.__name__ == "ElectraModel"
    assert ours[0].params["embeddings_project"]["kernel"].shape == (16, 32)  # E != H: the projection is in the path
    got = ours.encode(tiny_models.SENTENCES)
    tok = tf.AutoTokenizer.from_pretrained(plain)
    enc = tok(tiny_models.SENTENCES, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        h = tf.AutoModel.from_pretrained(plain).eval()(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    ref = ((h * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()
    assert got.shape == ref.shape == (len(tiny_models.SENTENCES), 32)
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind,n", CASES)
def test_head_logits_and_export_match_transformers(electra, kind, n, tmp_path):
    _, enc, heads = electra
    path, ref = heads[kind, n]
    ours = load_head_model(path, kind)
    assert ours.new_keys == () and ours.num_labels == n
    got = np.asarray(ours(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]))
    assert got.shape == ref.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)

    out = str(tmp_path / "export")
    ours.save(out)
    assert _keys(out) == _keys(path)  # what save_pretrained writes: the tied generator_lm_head.weight left out
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["architectures"] == json.load(open(os.path.join(path, "config.json")))["architectures"]
    back, info = AUTO[kind].from_pretrained(out, output_loading_info=True)
    assert not any(info.values()), info
    np.testing.assert_allclose(_torch_logits(back, enc), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("n", [1, 3])
def test_cross_encoder_predict_matches_sentence_transformers(electra, n):
    path = electra[2]["sequence_classification", n][0]
    got = CrossEncoder(path).predict(PAIRS)
    ref = RefCrossEncoder(path, device="cpu").predict(PAIRS)
    assert got.shape == ref.shape == ((len(PAIRS),) if n == 1 else (len(PAIRS), n))
    np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0)
