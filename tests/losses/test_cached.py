"""GradCache losses: same loss and gradients as the uncached losses, bounded memory, 1-vs-8-device
equality, and constructor/config parity with sentence-transformers 6.2."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import tiny_models
from stcore_jax import SentenceTransformer
from stcore_jax.sentence_transformer.losses.cached import (
    CachedGISTEmbedLoss,
    CachedMultipleNegativesRankingLoss,
    CachedMultipleNegativesSymmetricRankingLoss,
    chunk_layout,
    from_chunks,
    to_chunks,
)
from stcore_jax.sentence_transformer.losses.embed import compute_loss, row_keys
from stcore_jax.sentence_transformer.losses.gist import GISTEmbedLoss
from stcore_jax.sentence_transformer.losses.mnrl import (
    MultipleNegativesRankingLoss,
    MultipleNegativesSymmetricRankingLoss,
)

# The parity programs are tiny; skipping LLVM's optimisations halves their compile time on CPU.
FAST = {"xla_backend_optimization_level": 0}
SEQ = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, minilm_path, stsb_dir):
    """A tiny random BERT (dropout 0.1), a guide (the same architecture, perturbed), STS-B texts."""
    from stcore_jax.util import read_sts

    s1, s2, _ = read_sts(stsb_dir / "sts-train.csv")
    hf = tiny_models.build_hf("bert", str(tmp_path_factory.mktemp("cached") / "hf"), str(minilm_path),
                              s1[:1000] + s2[:1000])
    model = SentenceTransformer(hf)
    guide = SentenceTransformer(hf)
    leaves, tree = jax.tree.flatten(guide.params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    guide.params = jax.tree.unflatten(tree, [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
    return {"hf": hf, "model": model, "guide": guide, "s1": s1, "s2": s2}


def _features(model, texts_per_column):
    return [model.input_module.tokenize(t, length=SEQ) for t in texts_per_column]


def _batch(tiny, batch, columns):
    s1, s2 = tiny["s1"], tiny["s2"]
    texts = [s1[:batch], s2[:batch], s1[500:500 + batch], s2[500:500 + batch]][:columns]
    return _features(tiny["model"], texts)


def _max_abs_diff(a, b):
    return max(jax.tree.leaves(jax.tree.map(lambda x, y: float(jnp.max(jnp.abs(x - y))), a, b)))


def _run(fn, *args, options=FAST):
    return jax.jit(fn).lower(*args).compile(options)(*args)


# --- chunk layout ---------------------------------------------------------------------------------
def test_chunks_take_rows_from_every_shard_and_round_trip():
    layout = chunk_layout(batch=40, mini_batch_size=8, num_shards=4)  # 10 rows per shard, 2 per chunk
    assert (layout.rows_per_shard, layout.n_chunks, layout.pad, layout.chunk_rows) == (2, 5, 0, 8)
    rows = np.asarray(to_chunks(jnp.arange(40), layout))
    assert rows.shape == (5, 8)
    np.testing.assert_array_equal(rows[0], [0, 1, 10, 11, 20, 21, 30, 31])  # 2 rows of each shard
    np.testing.assert_array_equal(np.asarray(from_chunks(jnp.asarray(rows), layout)), np.arange(40))

    ragged = chunk_layout(batch=20, mini_batch_size=8, num_shards=2)  # 10 per shard, 4 per chunk -> pad 2
    assert (ragged.rows_per_shard, ragged.n_chunks, ragged.pad) == (4, 3, 2)
    x = jnp.arange(40).reshape(20, 2)
    chunks = np.asarray(to_chunks(x, ragged))
    np.testing.assert_array_equal(chunks[2, :, 0], [16, 18, 18, 18, 36, 38, 38, 38])  # last row repeated
    np.testing.assert_array_equal(np.asarray(from_chunks(jnp.asarray(chunks), ragged)), np.asarray(x))
    with pytest.raises(ValueError, match="divisible by num_shards"):
        chunk_layout(batch=10, mini_batch_size=4, num_shards=4)


def test_dropout_is_active_and_per_row(tiny):
    """The parity tests below run with dropout: check it is on, and that a row's mask does not depend
    on the rows around it (the property GradCache's chunked replay relies on)."""
    model = tiny["model"]
    (feats,) = _batch(tiny, 8, 1)

    def embed(params, feats, key):
        keys = row_keys(key, 0, jnp.arange(8))
        sub = {k: v[2:5] for k, v in feats.items()}
        full = model.forward(params, feats, dropout_key=keys)["sentence_embedding"]
        part = model.forward(params, sub, dropout_key=keys[2:5])["sentence_embedding"]
        return full, part, model.forward(params, feats)["sentence_embedding"]

    full, part, det = _run(embed, model.params, feats, jax.random.key(0))
    assert float(jnp.max(jnp.abs(full - det))) > 1e-2
    np.testing.assert_allclose(np.asarray(part), np.asarray(full[2:5]), atol=1e-6)


# --- cached == uncached ---------------------------------------------------------------------------
CASES = {
    # name: (uncached, cached, columns); batch 20 with mini-batches of 8 (ragged: 8, 8, 4+pad), 4 and 6.
    "mnrl_hard_negative": (lambda t: MultipleNegativesRankingLoss(t["model"]),
                           lambda t: CachedMultipleNegativesRankingLoss(t["model"], mini_batch_size=8), 3),
    "mnsrl": (lambda t: MultipleNegativesSymmetricRankingLoss(t["model"]),
              lambda t: CachedMultipleNegativesSymmetricRankingLoss(t["model"], mini_batch_size=4), 2),
    "gist": (lambda t: GISTEmbedLoss(t["model"], t["guide"], margin=0.05),
             lambda t: CachedGISTEmbedLoss(t["model"], t["guide"], mini_batch_size=6, margin=0.05), 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cached_equals_uncached_with_dropout(tiny, case):
    make_plain, make_cached, columns = CASES[case]
    plain, cached = make_plain(tiny), make_cached(tiny)
    model = tiny["model"]
    feats = _batch(tiny, 20, columns)
    key = jax.random.key(3)

    def both(params, feats, key):
        def value_and_grad(loss):
            return jax.value_and_grad(lambda p: compute_loss(loss, model.forward, p, feats, None, dropout_key=key))(
                params)

        return value_and_grad(plain), value_and_grad(cached)

    (v0, g0), (v1, g1) = _run(both, model.params, feats, key)
    assert abs(float(v0) - float(v1)) <= 1e-5, (float(v0), float(v1))
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g0)) > 1e-3
    assert _max_abs_diff(g0, g1) <= 1e-5


def test_matryoshka_around_cached_loss_uses_gradcache(tiny):
    """MatryoshkaLoss(CachedMNRL) through compute_loss: chunked embedding (a custom_vjp in the program),
    same loss and gradients as MatryoshkaLoss(MNRL)."""
    from stcore_jax.sentence_transformer.losses.matryoshka import MatryoshkaLoss

    model = tiny["model"]
    feats = _batch(tiny, 12, 2)
    plain = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), [32, 8])
    cached = MatryoshkaLoss(model, CachedMultipleNegativesRankingLoss(model, mini_batch_size=4), [32, 8])

    def value_and_grad(loss):
        return jax.value_and_grad(lambda p, f: compute_loss(loss, model.forward, p, f, None))

    jaxpr = jax.make_jaxpr(lambda p, f: compute_loss(cached, model.forward, p, f, None))(model.params, feats)
    assert "custom_vjp" in str(jaxpr)
    (v0, g0), (v1, g1) = _run(lambda p, f: (value_and_grad(plain)(p, f), value_and_grad(cached)(p, f)),
                              model.params, feats)
    assert abs(float(v0) - float(v1)) <= 1e-5
    assert _max_abs_diff(g0, g1) <= 1e-5


# --- memory ---------------------------------------------------------------------------------------
def test_cached_step_temp_memory_is_a_fraction(tiny):
    """Batch 1,024 x 32 tokens (anchor, positive), mini-batch 32: compile only, compare temp buffers."""
    model = tiny["model"]
    batch, seq = 1024, 32
    col = {k: jax.ShapeDtypeStruct((batch, seq), jnp.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), model.params)

    def temp_bytes(loss):
        def step(p, feats):
            return jax.grad(lambda p: compute_loss(loss, model.forward, p, feats, None))(p)

        # Buffer assignment is independent of the LLVM optimisation level that FAST lowers.
        return jax.jit(step).lower(params, [col, col]).compile(FAST).memory_analysis().temp_size_in_bytes

    plain = temp_bytes(MultipleNegativesRankingLoss(model))
    cached = temp_bytes(CachedMultipleNegativesRankingLoss(model, mini_batch_size=32))
    print(f"temp bytes: uncached {plain / 2**20:.1f} MiB, cached {cached / 2**20:.1f} MiB, "
          f"ratio {cached / plain:.3f}")
    assert cached <= plain / 4


# --- sharding -------------------------------------------------------------------------------------
def test_sharded_cached_equals_single_device(tiny):
    assert len(jax.devices()) == 8
    model = tiny["model"]
    feats = _batch(tiny, 32, 2)  # 4 rows per device; chunks of 8 = 1 row from each device
    mask = np.ones(32, bool)
    mask[[5, 22]] = False  # padded rows of a partial batch
    key = jax.random.key(11)
    loss = CachedMultipleNegativesRankingLoss(model, mini_batch_size=8, num_shards=8)

    def fn(params, feats, key, mask):
        return jax.value_and_grad(
            lambda p: compute_loss(loss, model.forward, p, feats, None, dropout_key=key, mask=mask))(params)

    v1, g1 = _run(fn, model.params, feats, key, mask)

    mesh = Mesh(np.array(jax.devices()), ("data",))
    data, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    args = (jax.device_put(model.params, replicated), jax.device_put(feats, data), jax.device_put(key, replicated),
            jax.device_put(mask, data))
    compiled = jax.jit(fn).lower(*args).compile(FAST)
    v8, g8 = compiled(*args)
    assert abs(float(v8) - float(v1)) <= 1e-6
    assert _max_abs_diff(g1, g8) <= 1e-5
    # Chunks are spread over the shards: the features never move, and the parameter gradient is
    # all-reduced once (after the chunk loop), not once per chunk.
    hlo = compiled.as_text()
    assert " all-gather(" not in hlo and " all-to-all(" not in hlo and "collective-permute(" not in hlo
    assert sum(" f32[30522,32]" in line for line in hlo.splitlines() if " all-reduce(" in line) == 1


# --- constructor / config parity ------------------------------------------------------------------
def _signature(cls):
    """Positional parameters as ``(name, default)``; a function default by its name. JAX additions
    (``num_shards``) are keyword-only and left out."""
    out = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:  # drop self
        if p.kind is p.KEYWORD_ONLY:
            continue
        default = p.default.__name__ if inspect.isfunction(p.default) else p.default
        out.append((p.name, default))
    return out


@pytest.mark.parametrize("name", ["CachedMultipleNegativesRankingLoss", "CachedMultipleNegativesSymmetricRankingLoss",
                                  "CachedGISTEmbedLoss"])
def test_constructor_and_config_match_reference(tiny, name):
    import sentence_transformers
    from sentence_transformers.sentence_transformer import losses as ref_losses

    from stcore_jax.losses import cached

    ours, ref = getattr(cached, name), getattr(ref_losses, name)
    ours_sig, ref_sig = _signature(ours), _signature(ref)
    assert [n for n, _ in ours_sig] == [n for n, _ in ref_sig]
    for (n, ours_default), (_, ref_default) in zip(ours_sig, ref_sig):
        if ref_default is inspect.Parameter.empty:  # model / guide: required there, None-checked here
            assert ours_default in (None, inspect.Parameter.empty), n
        else:
            assert ours_default == ref_default, n

    ref_model = sentence_transformers.SentenceTransformer(tiny["hf"], device="cpu")
    extra = {"guide": ref_model} if name == "CachedGISTEmbedLoss" else {}
    jextra = {"guide": tiny["guide"]} if name == "CachedGISTEmbedLoss" else {}
    for kwargs in ({}, {"mini_batch_size": 7, "gather_across_devices": True}):
        ref_cfg = ref(ref_model, **extra, **kwargs).get_config_dict()
        our_cfg = ours(tiny["model"], **jextra, **kwargs).get_config_dict()
        ref_cfg.pop("guide", None), our_cfg.pop("guide", None)
        assert our_cfg == ref_cfg
        assert list(our_cfg) == list(ref_cfg)


def test_mini_batch_arguments_are_validated(tiny):
    with pytest.raises(ValueError, match="mini_batch_num_tokens"):
        CachedMultipleNegativesRankingLoss(tiny["model"], mini_batch_num_tokens=0)
    with pytest.raises(ValueError, match="mini_batch_size"):
        CachedMultipleNegativesRankingLoss(tiny["model"], mini_batch_size=0)
    loss = CachedMultipleNegativesRankingLoss(tiny["model"], show_progress_bar=True)
    assert loss.mini_batch_size == 32 and loss.show_progress_bar is True
    assert isinstance(loss, MultipleNegativesRankingLoss)
    assert isinstance(CachedGISTEmbedLoss(tiny["model"], tiny["guide"]), GISTEmbedLoss)
