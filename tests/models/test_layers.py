"""The encoders' shared building blocks: the embedding gradient paths and the keyed dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stcore_jax.models import layers
from stcore_jax.sentence_transformer.losses.embed import row_keys


def _text_like_ids(rng, shape, vocab):
    """Ids that repeat as text does: a fixed first token, a few very common ids, a long tail."""
    ids = rng.integers(0, vocab, shape)
    ids[rng.random(shape) < 0.4] = 7 % vocab
    ids[:, 0] = 1 % vocab
    return jnp.asarray(ids, jnp.int32)


@pytest.mark.parametrize("vocab", [1, 2, 512, 5000])
@pytest.mark.parametrize("method", ["onehot", "sorted"])
def test_embedding_grad_paths_equal_scatter_add(vocab, method):
    rng = np.random.default_rng(vocab)
    ids = _text_like_ids(rng, (32, 24), vocab)
    g = jnp.asarray(rng.normal(size=(32, 24, 16)), jnp.float32)
    want = np.zeros((vocab, 16))
    np.add.at(want, np.asarray(ids).reshape(-1), np.asarray(g, np.float64).reshape(-1, 16))
    got = np.asarray(jax.jit(lambda i, x: layers.embedding_grad(i, x, vocab, method))(ids, g))
    assert got.dtype == np.float32 and got.shape == (vocab, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)  # float32 sums of up to 768 N(0,1) terms


def test_embedding_grad_bf16_cotangent_accumulates_in_float32():
    """2048 bf16 contributions into one row: a bf16 accumulator would be off by ~1%."""
    ids = jnp.zeros((2048,), jnp.int32)
    g = jnp.full((2048, 4), 1.0 + 2.0**-7, jnp.bfloat16)
    for method in ("scatter", "onehot", "sorted"):
        got = jax.jit(lambda i, x, m=method: layers.embedding_grad(i, x, 3, m))(ids, g)
        np.testing.assert_array_equal(np.asarray(got[0]), np.full(4, 2048 * (1.0 + 2.0**-7), np.float32))
        np.testing.assert_array_equal(np.asarray(got[1:]), 0.0)


def test_embedding_grad_rejects_unknown_method():
    with pytest.raises(ValueError, match="'scatter', 'onehot' or 'sorted'"):
        layers.embedding_grad(jnp.zeros((2,), jnp.int32), jnp.zeros((2, 3)), 4, "dense")


def test_take_rows_gradient_equals_take():
    rng = np.random.default_rng(0)
    table = jnp.asarray(rng.normal(size=(300, 8)), jnp.float32)
    ids = _text_like_ids(rng, (6, 10), 300)
    ours = jax.grad(lambda t: jnp.sum(jnp.sin(layers.take_rows(t, ids))))(table)
    plain = jax.grad(lambda t: jnp.sum(jnp.sin(jnp.take(t, ids, axis=0))))(table)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(plain), rtol=1e-6, atol=1e-6)


def test_dropout_keeps_one_minus_rate_and_scales():
    x = jnp.ones((64, 4, 32, 32), jnp.float32)
    keys = row_keys(jax.random.key(0), 0, np.arange(64))
    y = np.asarray(jax.jit(lambda x, k: layers.dropout(x, 0.1, k))(x, keys))
    kept = y > 0
    assert abs(kept.mean() - 0.9) < 0.003  # 262,144 draws: sd 6e-4
    np.testing.assert_allclose(y[kept], 1 / 0.9, rtol=1e-6)
    single = np.asarray(jax.jit(lambda k: layers.dropout(jnp.ones((512, 512)), 0.5, k))(jax.random.key(1)) > 0)
    assert abs(single.mean() - 0.5) < 0.005


def test_dropout_masks_are_per_row_and_independent():
    x = jnp.ones((16, 4, 32, 32), jnp.float32)
    keys = row_keys(jax.random.key(0), 0, np.arange(16))
    drop = jax.jit(lambda x, k: layers.dropout(x, 0.3, k) > 0)  # one compile per shape (eager runs op by op)
    full = np.asarray(drop(x, keys))
    part = np.asarray(drop(x[5:9], keys[5:9]))
    np.testing.assert_array_equal(full[5:9], part)  # a row's mask does not depend on its batch
    flat = full.reshape(16, -1).astype(float)
    corr = np.corrcoef(flat)[np.triu_indices(16, 1)]
    assert np.abs(corr).max() < 0.1  # 4096 draws per row (sd 0.016): rows are not copies or shifts
    other_site = np.asarray(drop(x, layers.fold(keys, 1)))
    assert abs(np.corrcoef(full.ravel(), other_site.ravel())[0, 1]) < 0.05
    again = np.asarray(drop(x, row_keys(jax.random.key(0), 0, np.arange(16))))
    np.testing.assert_array_equal(full, again)
    assert not np.array_equal(full, np.asarray(drop(x, row_keys(jax.random.key(1), 0, np.arange(16)))))


def test_dropout_identity_without_key_or_rate():
    x = jnp.arange(12.0).reshape(3, 4)
    assert layers.dropout(x, 0.1, None) is x
    assert layers.dropout(x, 0.0, jax.random.key(0)) is x
