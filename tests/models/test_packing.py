"""Sequence packing (models/packing.py): packed rows give every sentence what it gets alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer as RefST

from stcore_jax import SentenceTransformer
from stcore_jax.batching.packing import first_fit_decreasing, pack_shard
from tiny_models import ARCHS

ROW = 64  # packed row length


def _packed(module, texts, shards, rows):
    """Features of a packed forward over ``texts`` split into ``shards`` equal data shards."""
    ids = module.tokenize_ids(texts)
    seqs = [{k: v[i] for k, v in ids.items()} for i in range(len(texts))]
    per = len(texts) // shards
    parts = [pack_shard(seqs[s * per:(s + 1) * per], ROW, rows, module.tokenizer.pad_token_id or 0)
             for s in range(shards)]
    return {k: jnp.asarray(np.stack([p[k] for p in parts]) if k.startswith("packed_") else
                           np.concatenate([p[k] for p in parts])) for k in parts[0]}


def _padded(module, texts, length=None):
    """Padded to ``length`` (default: the longest text, as the reference pads)."""
    return {k: jnp.asarray(v) for k, v in module.tokenize(texts, length).items()}


def test_first_fit_decreasing_places_every_sequence_once():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = rng.integers(0, 30, size=rng.integers(1, 40))
        row, offset, used = first_fit_decreasing(lengths, 32)
        taken = np.zeros((max(used, 1), 32), int)
        for n, r, o in zip(lengths, row, offset):
            assert 0 <= r < max(used, 1) and o + n <= 32
            taken[r, o:o + n] += 1
        assert taken.max() <= 1 and taken.sum() == lengths.sum()  # no overlap, nothing lost
        assert used >= -(-lengths.sum() // 32)
        again = first_fit_decreasing(lengths, 32)
        assert all(np.array_equal(a, b) for a, b in zip(again, (row, offset, used)))
    with pytest.raises(ValueError, match="33 tokens does not fit a packed row of 32"):
        first_fit_decreasing([3, 33], 32)
    with pytest.raises(ValueError, match="needs 2 packed rows"):
        pack_shard([{"input_ids": [1] * 20}, {"input_ids": [2] * 20}], 32, 1, 0)


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_forward_matches_pytorch_reference(arch, tiny_dirs, sentences):
    """All six pooling modes over packed rows (two shards) equal sentence-transformers' padded encode."""
    path = tiny_dirs[arch]["modes"]
    ours, ref = SentenceTransformer(path), RefST(path, device="cpu")
    texts = list(sentences) + ["one more"]  # 8 sentences: 2 shards of 4
    feats = _packed(ours.input_module, texts, shards=2, rows=2)
    assert feats["packed_input_ids"].shape == (2, 2, ROW)
    got = np.asarray(ours.forward(ours.params, feats)["sentence_embedding"])
    np.testing.assert_allclose(got, ref.encode(texts), atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_packed_dropout_equals_padded_dropout(arch, tiny_dirs, sentences):
    """With one dropout key per sentence, a packed forward draws the masks of a padded one (of another
    length, even): the embeddings agree whatever the packing, sharding and padding."""
    path = tiny_dirs[arch]["dense"]
    model = SentenceTransformer(path)
    texts = list(sentences) + ["one more"]
    keys = jax.random.split(jax.random.key(3), len(texts))
    padded = model.forward(model.params, _padded(model.input_module, texts), dropout_key=keys)
    plain = model.forward(model.params, _padded(model.input_module, texts))["sentence_embedding"]
    assert np.abs(padded["sentence_embedding"] - plain).max() > 1e-3  # dropout is on
    longer = model.forward(model.params, _padded(model.input_module, texts, 56), dropout_key=keys)
    np.testing.assert_allclose(longer["sentence_embedding"], padded["sentence_embedding"], atol=1e-6, rtol=0)
    mask = np.asarray(_padded(model.input_module, texts, ROW)["attention_mask"])[..., None]
    t = padded["token_embeddings"].shape[1]
    for shards, rows in ((1, 3), (2, 2), (4, 2)):
        packed = model.forward(model.params, _packed(model.input_module, texts, shards, rows), dropout_key=keys)
        np.testing.assert_allclose(packed["sentence_embedding"], padded["sentence_embedding"], atol=1e-6, rtol=0)
        np.testing.assert_allclose(np.asarray(packed["token_embeddings"][:, :t]) * mask[:, :t],
                                   np.asarray(padded["token_embeddings"]) * mask[:, :t], atol=1e-6, rtol=0)


def test_packing_keeps_gradients(tiny_dirs, sentences):
    """d(loss)/d(params) through a packed forward equals the padded forward's (the unpack is a gather)."""
    model = SentenceTransformer(tiny_dirs["bert"]["dense"])
    texts = list(sentences) + ["one more"]
    keys = jax.random.split(jax.random.key(5), len(texts))
    target = jax.random.normal(jax.random.key(6), (len(texts), 24))

    def loss(params, feats):
        return jnp.sum(model.forward(params, feats, dropout_key=keys)["sentence_embedding"] * target)

    g_pad = jax.grad(loss)(model.params, _padded(model.input_module, texts))
    g_pack = jax.grad(loss)(model.params, _packed(model.input_module, texts, 2, 2))
    for a, b in zip(jax.tree_util.tree_leaves(g_pad), jax.tree_util.tree_leaves(g_pack)):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4)
