"""CrossEncoder losses: value and gradient w.r.t. the logits equal sentence-transformers 6.2's.

The reference losses build (text, text) pairs and call ``model.preprocess`` then ``model(tokens)["scores"]``.
A stub CrossEncoder answers each pair with its entry of one fixed logits tensor (``requires_grad=True``), so the
reference loss runs on exactly the logits the JAX function gets, laid out as the loss's pair layout says;
``loss.backward()`` gives the reference gradient on that tensor, compared with ``jax.grad`` through the layout.
Listwise cases use ragged lists (2, 5, 3 documents) with tied labels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import NamedSharding, PartitionSpec as P
from sentence_transformers.cross_encoder import CrossEncoder as RefCrossEncoder, losses as ref

import stcore_jax.cross_encoder.losses as ce

TOL = 1e-5


class StubCrossEncoder(RefCrossEncoder):
    """A reference CrossEncoder (for its isinstance checks) whose scores are looked up per (text, text) pair."""

    def __init__(self, table: dict, logits: torch.Tensor, num_labels: int = 1) -> None:
        torch.nn.Module.__init__(self)  # skips loading a transformer
        self._table, self._logits, self._num_labels = table, logits, num_labels

    num_labels = property(lambda self: self._num_labels)
    device = property(lambda self: torch.device("cpu"))

    def preprocess(self, pairs, prompt=None, task=None):
        return {"idx": torch.tensor([self._table[tuple(p)] for p in pairs])}

    def forward(self, inputs, **kwargs):
        return {"scores": self._logits[inputs["idx"]]}


def run_reference(make_loss, table, logits_np, inputs, labels, num_labels=1):
    logits = torch.tensor(logits_np, requires_grad=True)
    loss = make_loss(StubCrossEncoder(table, logits, num_labels))
    value = loss(inputs, labels)
    value.backward()
    return float(value.detach()), logits.grad.numpy(), loss


def assert_parity(make_ref, jax_fn, table, logits_np, inputs, labels, num_labels=1):
    """Reference value/grad vs ``jax.value_and_grad(jax_fn)`` on the same flat logits; returns the max diffs."""
    ref_value, ref_grad, _ = run_reference(make_ref, table, logits_np, inputs, labels, num_labels)
    value, grad = jax.jit(jax.value_and_grad(jax_fn))(jnp.asarray(logits_np))
    np.testing.assert_allclose(float(value), ref_value, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=TOL, atol=TOL)
    assert np.abs(ref_grad).sum() > 0  # the comparison is not vacuous
    return abs(float(value) - ref_value), float(np.abs(np.asarray(grad) - ref_grad).max())


# --- pointwise: BCE, CE, MSE ----------------------------------------------------------------------------------
B = 6
PAIR_INPUTS = [[f"a{i}" for i in range(B)], [f"b{i}" for i in range(B)]]
PAIR_TABLE = {(f"a{i}", f"b{i}"): i for i in range(B)}
RNG = np.random.default_rng(0)
PAIR_LOGITS = RNG.normal(size=(B, 1)).astype(np.float32) * 2


@pytest.mark.parametrize("pos_weight", [None, 5.0])
@pytest.mark.parametrize("float_labels", [False, True])
def test_binary_cross_entropy(pos_weight, float_labels):
    y = np.array([0.2, 0.9, 0.0, 1.0, 0.5, 0.7] if float_labels else [1, 0, 0, 1, 1, 0], np.float32)
    pw = None if pos_weight is None else torch.tensor(pos_weight)
    assert_parity(lambda m: ref.BinaryCrossEntropyLoss(m, pos_weight=pw),
                  lambda z: ce.BinaryCrossEntropyLoss(None, pos_weight=pos_weight)(z, y),
                  PAIR_TABLE, PAIR_LOGITS, PAIR_INPUTS, torch.tensor(y))


@pytest.mark.parametrize("probs", [False, True])
def test_cross_entropy(probs):
    logits = RNG.normal(size=(B, 3)).astype(np.float32)
    y = RNG.dirichlet(np.ones(3), size=B).astype(np.float32) if probs else np.array([0, 2, 1, 1, 0, 2])
    assert_parity(lambda m: ref.CrossEntropyLoss(m), lambda z: ce.CrossEntropyLoss(None)(z, y),
                  PAIR_TABLE, logits, PAIR_INPUTS, torch.tensor(y), num_labels=3)


def test_mse_sigmoid():
    y = np.array([0.2, 0.9, 0.0, 1.0, 0.5, 0.7], np.float32)
    assert_parity(lambda m: ref.MSELoss(m, activation_fn=torch.nn.Sigmoid()),
                  lambda z: ce.MSELoss(None, activation_fn=torch.nn.Sigmoid())(z, y),
                  PAIR_TABLE, PAIR_LOGITS, PAIR_INPUTS, torch.tensor(y))


# --- MarginMSE: pairs (q, c_j) per column, scores [B, n + 1] ---------------------------------------------------
@pytest.mark.parametrize("n, label_kind", [(1, "flat"), (2, "margins"), (2, "teacher"), (3, "teacher_list")])
def test_margin_mse(n, label_kind):
    b = 4
    cols = [[f"q{i}" for i in range(b)]] + [[f"c{c}_{i}" for i in range(b)] for c in range(n + 1)]
    table = {(f"q{i}", f"c{c}_{i}"): c * b + i for c in range(n + 1) for i in range(b)}
    logits = RNG.normal(size=((n + 1) * b, 1)).astype(np.float32)
    teacher = RNG.normal(size=(b, n + 1)).astype(np.float32)
    y = {"flat": teacher[:, 0], "margins": teacher[:, 1:], "teacher": teacher,
         "teacher_list": list(teacher)}[label_kind]
    ref_y = [torch.tensor(r) for r in y] if label_kind == "teacher_list" else torch.tensor(y)
    assert_parity(lambda m: ref.MarginMSELoss(m), lambda z: ce.MarginMSELoss(None)(z.reshape(n + 1, b).T, y),
                  table, logits, cols, ref_y)


# --- MNRL: anchor x all candidates table [B, B * C]; the layout gathers [own pos, in-batch, own hard] ----------
def mnrl_case(b, h):
    c = 1 + h
    cols = [[f"a{i}" for i in range(b)]] + [[f"c{k}_{j}" for j in range(b)] for k in range(c)]
    table = {(f"a{i}", f"c{k}_{j}"): i * b * c + k * b + j for i in range(b) for k in range(c) for j in range(b)}
    return cols, table, RNG.normal(size=(b * b * c, 1)).astype(np.float32) * 2


def mnrl_scores(flat, b, h, num_negatives=None, mask=None, key=None):
    """[B, 1 + k + h] scores (and doc_mask) from the full [B, B*C] table, as the collator would form them."""
    c = 1 + h
    full = flat.reshape(b, b * c)
    rows = jnp.arange(b)
    idx, valid = ce.in_batch_candidates(b, c, num_negatives, key=key, mask=mask)
    own = jnp.stack([full[rows, k * b + rows] for k in range(c)], axis=1)  # [B, C]: own positive, own hard
    scores = jnp.concatenate([own[:, :1], jnp.take_along_axis(full, idx, axis=1), own[:, 1:]], axis=1)
    doc_mask = jnp.concatenate([jnp.ones((b, 1), bool), valid, jnp.ones((b, h), bool)], axis=1)
    return scores, doc_mask


@pytest.mark.parametrize("h, num_negatives, scale, act", [
    (0, None, 10.0, "sigmoid"), (1, None, 10.0, "sigmoid"), (2, 100, 5.0, "identity"), (2, None, None, None)])
def test_mnrl(h, num_negatives, scale, act):
    b = 4
    cols, table, logits = mnrl_case(b, h)
    torch_act = {"sigmoid": torch.nn.Sigmoid(), "identity": torch.nn.Identity(), None: None}[act]

    def fn(z):
        scores, doc_mask = mnrl_scores(z, b, h, num_negatives)
        loss = ce.MultipleNegativesRankingLoss(None, num_negatives=num_negatives, scale=scale, activation_fn=act)
        return loss(scores, doc_mask=doc_mask)

    assert_parity(lambda m: ref.MultipleNegativesRankingLoss(m, num_negatives=num_negatives, scale=scale,
                                                             activation_fn=torch_act),
                  fn, table, logits, cols, None)


def test_mnrl_padded_row():
    """A padded 6th row (mask False) is neither an anchor nor an in-batch candidate: equals the reference on the
    5 real rows (value, and gradient over the whole table, zero for every pair that involves the padded row)."""
    b, h = 6, 1
    cols, table, logits = mnrl_case(b, h)
    mask = np.array([True] * 5 + [False])

    def fn(z):
        scores, doc_mask = mnrl_scores(z, b, h, None, mask=mask)
        return ce.MultipleNegativesRankingLoss(None, num_negatives=None)(scores, doc_mask=doc_mask, mask=mask)

    assert_parity(lambda m: ref.MultipleNegativesRankingLoss(m, num_negatives=None), fn, table, logits,
                  [c[:5] for c in cols], None)


def test_mnrl_sampling():
    """Sampled candidates: k per row, never the row's own, never a padded row's; reproducible from the key."""
    b, c, k = 6, 2, 3
    mask = jnp.array([True] * 5 + [False])
    idx, valid = ce.in_batch_candidates(b, c, k, key=jax.random.key(0), mask=mask)
    idx2, _ = ce.in_batch_candidates(b, c, k, key=jax.random.key(0), mask=mask)
    assert idx.shape == (b, k) and bool(valid.all())
    np.testing.assert_array_equal(idx, idx2)
    rows = np.asarray(idx) % b
    assert not (rows == np.arange(b)[:, None]).any() and not (rows == 5).any()
    assert len({tuple(r) for r in np.asarray(idx)}) > 1
    with pytest.raises(ValueError, match="key"):
        ce.in_batch_candidates(b, c, k)


# --- listwise: ragged lists (2, 5, 3 docs) with ties --------------------------------------------------------
LIST_LABELS = [[1.0, 0.0], [3.0, 1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 0.0]]
QUERIES = [f"q{i}" for i in range(len(LIST_LABELS))]
DOCS = [[f"d{i}_{j}" for j in range(len(ls))] for i, ls in enumerate(LIST_LABELS)]
LIST_TABLE = {(q, d): n for n, (q, d) in enumerate((q, d) for q, ds in zip(QUERIES, DOCS) for d in ds)}
LIST_LOGITS = RNG.permutation(np.linspace(-2, 2, len(LIST_TABLE))).astype(np.float32)[:, None]  # no ties


def padded(flat, max_docs=None):
    """Flat [P, 1] logits -> scores, labels, doc_mask [B, max_docs] (the collator's job)."""
    _, doc_mask = ce.pad_lists(LIST_LABELS, max_docs=max_docs)
    labels, _ = ce.pad_lists(LIST_LABELS, max_docs=max_docs)
    bi, di = np.nonzero(doc_mask)
    scores = jnp.zeros(doc_mask.shape).at[bi, di].set(flat.reshape(-1))
    return scores, labels, doc_mask


def listwise_parity(make_ref, make_ours, max_docs=None):
    def fn(z):
        scores, labels, doc_mask = padded(z, max_docs)
        return make_ours()(scores, labels, doc_mask=doc_mask)

    return assert_parity(make_ref, fn, LIST_TABLE, LIST_LOGITS, [QUERIES, DOCS],
                         [torch.tensor(ls) for ls in LIST_LABELS])


SCHEMES = ["NoWeightingScheme", "NDCGLoss1Scheme", "NDCGLoss2Scheme", "LambdaRankScheme", "NDCGLoss2PPScheme"]


@pytest.mark.parametrize("k", [None, 2])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_lambda_loss(scheme, k):
    args = {"mu": 3.0} if scheme == "NDCGLoss2PPScheme" else {}
    listwise_parity(lambda m: ref.LambdaLoss(m, weighting_scheme=getattr(ref, scheme)(**args), k=k),
                    lambda: ce.LambdaLoss(None, weighting_scheme=getattr(ce, scheme)(**args), k=k), max_docs=6)


def test_lambda_loss_options():
    kw = {"sigma": 0.7, "reduction_log": "natural", "activation_fn": torch.nn.Sigmoid()}
    listwise_parity(lambda m: ref.LambdaLoss(m, **kw), lambda: ce.LambdaLoss(None, **kw))


@pytest.mark.parametrize("k", [None, 3])
def test_rank_net(k):
    listwise_parity(lambda m: ref.RankNetLoss(m, k=k), lambda: ce.RankNetLoss(None, k=k))


def test_list_net():
    listwise_parity(lambda m: ref.ListNetLoss(m), lambda: ce.ListNetLoss(None), max_docs=7)


@pytest.mark.parametrize("respect_input_order", [True, False])
@pytest.mark.parametrize("name", ["ListMLELoss", "PListMLELoss"])
def test_list_mle(name, respect_input_order):
    listwise_parity(lambda m: getattr(ref, name)(m, respect_input_order=respect_input_order),
                    lambda: getattr(ce, name)(None, respect_input_order=respect_input_order), max_docs=6)


@pytest.mark.parametrize("alpha", [1.0, 2.5])
def test_adr_mse(alpha):
    listwise_parity(lambda m: ref.ADRMSELoss(m, alpha=alpha), lambda: ce.ADRMSELoss(None, alpha=alpha), max_docs=6)


def test_padded_rows_are_ignored():
    """A padded batch row (mask False, garbage scores and labels) changes neither value nor gradient."""
    scores, labels, doc_mask = padded(jnp.asarray(LIST_LOGITS), 6)
    big = (jnp.concatenate([scores, jnp.full((1, 6), 7.0)]), np.concatenate([labels, np.full((1, 6), 3.0)]),
           np.concatenate([doc_mask, np.ones((1, 6), bool)]))
    row_mask = np.array([True, True, True, False])
    losses = [ce.LambdaLoss(), ce.ListNetLoss(), ce.PListMLELoss(), ce.ADRMSELoss(), ce.RankNetLoss(k=2)]

    @jax.jit
    def both(s, s_big):  # one compilation for all five losses
        return [(jax.value_and_grad(lambda x, f=f: f(x, labels, doc_mask=doc_mask))(s),
                 jax.value_and_grad(lambda x, f=f: f(x, big[1], doc_mask=big[2], mask=row_mask))(s_big))
                for f in losses]

    for loss, ((v0, g0), (v1, g1)) in zip(losses, both(scores, big[0])):
        np.testing.assert_allclose(v1, v0, rtol=1e-6, err_msg=loss.name)
        np.testing.assert_allclose(g1[:3], g0, atol=1e-7, err_msg=loss.name)
        assert not np.asarray(g1[3]).any()


# --- 1 device = 8 devices -------------------------------------------------------------------------------------
def test_sharded_equals_single_device():
    mesh = jax.make_mesh((8,), ("data",))
    rows = NamedSharding(mesh, P("data"))
    # MNRL: 8 anchors (last one padded), 1 hard negative, all in-batch candidates.
    b, h = 8, 1
    _, _, logits = mnrl_case(b, h)
    mask = np.array([True] * 7 + [False])
    scores, doc_mask = mnrl_scores(jnp.asarray(logits), b, h, None, mask=mask)
    mnrl = ce.MultipleNegativesRankingLoss(None, num_negatives=None)
    # Listwise: 8 ragged lists padded to 6.
    lists = [[float(x) for x in RNG.integers(0, 3, size=n)] for n in (2, 5, 3, 6, 1, 4, 6, 2)]
    labels, lmask = ce.pad_lists(lists, max_docs=6)
    lscores = jnp.asarray(RNG.normal(size=labels.shape).astype(np.float32))
    lam = ce.LambdaLoss(None, k=3)
    cases = [(lambda s: mnrl(s, doc_mask=doc_mask, mask=mask), scores, doc_mask),
             (lambda s: lam(s, labels, doc_mask=lmask), lscores, lmask)]
    for fn, s, dm in cases:
        v1, g1 = jax.jit(jax.value_and_grad(fn))(s)
        v8, g8 = jax.jit(jax.value_and_grad(fn))(jax.device_put(s, rows))
        assert len(g8.sharding.device_set) == 8
        np.testing.assert_allclose(v8, v1, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(g8, g1, rtol=TOL, atol=TOL)
        assert np.abs(np.asarray(g1)[np.asarray(dm)]).sum() > 0


# --- declarations, configs, column rules -----------------------------------------------------------------------
CONFIG_CASES = [
    ("BinaryCrossEntropyLoss", {"pos_weight": 4.0}, 1), ("CrossEntropyLoss", {}, 3), ("MSELoss", {}, 1),
    ("MarginMSELoss", {}, 1), ("MultipleNegativesRankingLoss", {"num_negatives": None}, 1),
    ("CachedMultipleNegativesRankingLoss", {"mini_batch_size": 8, "scale": 20.0}, 1), ("LambdaLoss", {"k": 5}, 1),
    ("RankNetLoss", {}, 1), ("ListNetLoss", {"mini_batch_size": 8}, 1), ("PListMLELoss", {}, 1), ("ListMLELoss", {}, 1),
    ("ADRMSELoss", {"alpha": 2.0}, 1)]


@pytest.mark.parametrize("name, kwargs, num_labels", CONFIG_CASES)
def test_config_and_declaration(name, kwargs, num_labels):
    ref_kwargs = {k: torch.tensor(v) if k == "pos_weight" else v for k, v in kwargs.items()}
    ref_loss = getattr(ref, name)(StubCrossEncoder({}, torch.zeros(1), num_labels), **ref_kwargs)
    ours = getattr(ce, name)(StubCrossEncoder({}, torch.zeros(1), num_labels), **kwargs)
    ref_config = ref_loss.get_config_dict() if hasattr(ref_loss, "get_config_dict") else {}
    assert ours.get_config_dict() == ref_config
    assert ours.inputs.kind is ce.CrossEncoderLoss().inputs.kind and ours.inputs.kind.value == "scores"
    assert ours.inputs.pair_layout in ce.PAIR_LAYOUTS
    assert ours.inputs.mini_batch_size == (8 if name.startswith("Cached") else None)


def test_column_rules():
    def fails(loss, *args):
        with pytest.raises(ValueError, match=loss.name):
            loss.validate_columns(*args)

    for loss in [ce.BinaryCrossEntropyLoss(), ce.CrossEntropyLoss(), ce.MSELoss(), ce.LambdaLoss(), ce.ADRMSELoss()]:
        loss.validate_columns(2, True)
        fails(loss, 3, True)
        fails(loss, 2, False)
    ce.MarginMSELoss().validate_columns(3, True)
    fails(ce.MarginMSELoss(), 2, True)
    ce.MultipleNegativesRankingLoss().validate_columns(4, False)
    fails(ce.MultipleNegativesRankingLoss(), 1, False)
    fails(ce.MultipleNegativesRankingLoss(), 2, True)
    with pytest.raises(ValueError, match="list"):
        ce.ListNetLoss().validate_column_types([False, False], False)  # a listwise loss given plain columns
    ce.ListNetLoss().validate_column_types([False, True], True)
    with pytest.raises(ValueError, match="listwise"):
        ce.BinaryCrossEntropyLoss().validate_column_types([False, True], True)
    ce.MarginMSELoss().validate_column_types([False] * 4, True)
    with pytest.raises(ValueError, match="1 output label"):
        ce.LambdaLoss(StubCrossEncoder({}, torch.zeros(1), 3))
    with pytest.raises(ValueError, match="expected shape"):
        ce.margin_mse(jnp.zeros((4, 3)), jnp.zeros((4, 5)))
