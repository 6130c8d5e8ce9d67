"""SparseEncoder losses: values, components and gradients w.r.t. the ``[B, V]`` embeddings equal
sentence-transformers 6.2's (within 1e-5), the trainer's regulariser warm-up, and FLOPS over 8 devices.

The reference losses call ``model(features)["sentence_embedding"]`` per column (SpladeLoss, SparseMSELoss) or per
mini-batch (CachedSpladeLoss, through GradCache's no-grad pass and its backward hook). A stub model answers each
column's ``{"idx": rows}`` with those rows of one leaf table ``[C * B, V]`` (``requires_grad=True``), so the
reference runs on exactly the embeddings the JAX loss gets, and ``table.grad`` is its gradient w.r.t. them.
The warm-up weights come from the reference's own ``SpladeRegularizerWeightSchedulerCallback``, driven through
``on_train_begin`` / ``on_step_begin`` as its trainer does. The per-device reference (PyTorch DDP) is the
reference loss run on each shard, averaged over shards (DDP averages the ranks' gradients).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from sentence_transformers.sparse_encoder import losses as ref
from sentence_transformers.sparse_encoder.callbacks.splade_callbacks import SpladeRegularizerWeightSchedulerCallback
from transformers.trainer_callback import TrainerControl, TrainerState

import stcore_jax.sparse_encoder.losses as S
from stcore_jax.sentence_transformer.losses.embed import compute_loss
from stcore_jax.sentence_transformer.losses.matryoshka import MatryoshkaLoss

TOL = 1e-5
B, V = 8, 64
DOC_W, QUERY_W = 3e-2, 5e-2  # large enough that the regularisers move the total well past the tolerance


# --- the reference, driven on given embeddings ---------------------------------------------------------------
class StubSparseEncoder(torch.nn.Module):
    """Returns the rows ``features["idx"]`` of a leaf table as the sentence embedding."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.similarity_fn_name = "dot"

    def forward(self, features):
        return {"sentence_embedding": self.table[features["idx"]]}


def reference_run(make_loss, cols, labels=None, callback_step=None, total_steps=None):
    """``(components, total, grads per column, loss, stub)`` of the reference loss on ``cols`` (``C`` arrays
    ``[b, V]``). With ``callback_step``, the trainer's warm-up callback first sets the weights of that step."""
    b = cols[0].shape[0]
    table = torch.tensor(np.concatenate(cols), requires_grad=True)
    stub = StubSparseEncoder(table)
    loss = make_loss(stub)
    if callback_step is not None:
        callback = SpladeRegularizerWeightSchedulerCallback(loss)
        callback.on_train_begin(None, TrainerState(max_steps=total_steps), TrainerControl())
        callback.on_step_begin(None, TrainerState(max_steps=total_steps, global_step=callback_step), TrainerControl())
    features = [{"idx": torch.arange(c * b, (c + 1) * b)} for c in range(len(cols))]
    out = loss(features, None if labels is None else torch.tensor(labels))
    components = out if isinstance(out, dict) else {"loss": out}
    total = sum(components.values())
    total.backward()
    grads = table.grad.numpy().reshape(len(cols), b, -1)
    return ({k: float(v.detach()) for k, v in components.items()}, float(total.detach()), list(grads), loss, stub)


def ours_run(loss_fn, cols):
    """``(components, total, grads)`` of ``loss_fn(list of [b, V]) -> scalar or dict`` under jit."""

    def total(xs):
        out = loss_fn(xs)
        components = out if isinstance(out, dict) else {"loss": out}
        return sum(components.values()), components

    (value, components), grads = jax.jit(jax.value_and_grad(total, has_aux=True))([jnp.asarray(c) for c in cols])
    return {k: float(v) for k, v in components.items()}, float(value), [np.asarray(g) for g in grads]


def assert_same(ours, reference, tol=TOL):
    """Components, total and gradients equal; returns the largest differences (value, gradient)."""
    comps, total, grads = ours
    ref_comps, ref_total = reference[0], reference[1]
    assert comps.keys() == ref_comps.keys(), (sorted(comps), sorted(ref_comps))
    for k in comps:
        np.testing.assert_allclose(comps[k], ref_comps[k], rtol=tol, atol=tol, err_msg=k)
    np.testing.assert_allclose(total, ref_total, rtol=tol, atol=tol, err_msg="total")
    for i, (g, rg) in enumerate(zip(grads, reference[2])):
        np.testing.assert_allclose(g, rg, rtol=tol, atol=tol, err_msg=f"gradient of column {i}")
    assert sum(np.abs(g).sum() for g in reference[2]) > 0  # not vacuous
    return abs(total - ref_total), max(float(np.abs(g - rg).max()) for g, rg in zip(grads, reference[2]))


def sparse_columns(seed, n, batch=B, vocab=V):
    """``n`` non-negative sparse ``[batch, vocab]`` columns (log1p(relu)-like values), each row with its own
    density in [0.1, 0.5], so that L0 thresholds split the rows."""
    rng = np.random.default_rng(seed)
    density = rng.uniform(0.1, 0.5, size=(n, batch, 1))
    keep = rng.random((n, batch, vocab)) < density
    keep[..., 0] = True  # no all-zero row (cosine)
    values = np.log1p(np.abs(rng.standard_normal((n, batch, vocab))) * 2)
    return [c.astype(np.float32) for c in values * keep]


def flops_np(x):
    return float(np.sum(np.mean(np.asarray(x, np.float64), axis=0) ** 2))


# --- every base loss inside SpladeLoss (the reference refuses them alone) -------------------------------------
RNG = np.random.default_rng(7)
SCORES = RNG.random(B).astype(np.float32)
TEACHER3 = RNG.normal(size=(B, 3)).astype(np.float32) * 3

BASE = {
    # name: (reference factory, ours factory, number of columns, labels)
    "mnrl": (lambda m: ref.SparseMultipleNegativesRankingLoss(m), lambda: S.SparseMultipleNegativesRankingLoss(),
             2, None),
    "mnrl_hard": (lambda m: ref.SparseMultipleNegativesRankingLoss(m, scale=0.5),
                  lambda: S.SparseMultipleNegativesRankingLoss(scale=0.5), 3, None),
    "mnrl_sym": (lambda m: ref.SparseMultipleNegativesRankingLoss(m, directions=("query_to_doc", "doc_to_query"),
                                                                 partition_mode="per_direction"),
                 lambda: S.SparseMultipleNegativesRankingLoss(directions=("query_to_doc", "doc_to_query"),
                                                              partition_mode="per_direction"), 3, None),
    "margin_mse": (lambda m: ref.SparseMarginMSELoss(m), lambda: S.SparseMarginMSELoss(), 4, TEACHER3[:, :2] * 4),
    "margin_mse_scores": (lambda m: ref.SparseMarginMSELoss(m), lambda: S.SparseMarginMSELoss(), 3,
                          TEACHER3[:, :2] * 4),
    "distill_kl": (lambda m: ref.SparseDistillKLDivLoss(m), lambda: S.SparseDistillKLDivLoss(), 4, TEACHER3),
    "distill_kl_t": (lambda m: ref.SparseDistillKLDivLoss(m, temperature=1.0, teacher_temperature=3.0),
                     lambda: S.SparseDistillKLDivLoss(temperature=1.0, teacher_temperature=3.0), 4, TEACHER3),
    "cosent": (lambda m: ref.SparseCoSENTLoss(m), lambda: S.SparseCoSENTLoss(), 2, SCORES),
    "angle": (lambda m: ref.SparseAnglELoss(m), lambda: S.SparseAnglELoss(), 2, SCORES),
    "cosine_similarity": (lambda m: ref.SparseCosineSimilarityLoss(m), lambda: S.SparseCosineSimilarityLoss(), 2,
                          SCORES),
    "triplet": (lambda m: ref.SparseTripletLoss(m), lambda: S.SparseTripletLoss(), 3, None),
}


@pytest.mark.parametrize("name", list(BASE))
def test_base_losses_in_splade(name):
    """SpladeLoss(base) at the maximum weights: every component, the total and the gradients."""
    ref_base, our_base, n, labels = BASE[name]
    cols = sparse_columns(list(BASE).index(name), n)
    reference = reference_run(lambda m: ref.SpladeLoss(m, ref_base(m), document_regularizer_weight=DOC_W,
                                                       query_regularizer_weight=QUERY_W), cols, labels)
    loss = S.SpladeLoss(None, our_base(), document_regularizer_weight=DOC_W, query_regularizer_weight=QUERY_W)
    ours = ours_run(lambda xs: loss.compute_loss_from_embeddings(xs, None if labels is None else jnp.asarray(labels)),
                    cols)
    assert set(ours[0]) == {"base_loss", "document_regularizer_loss", "query_regularizer_loss"}
    assert_same(ours, reference)
    # The regularisers are what the formula says, and large enough to matter at this tolerance.
    np.testing.assert_allclose(ours[0]["document_regularizer_loss"], DOC_W * flops_np(np.concatenate(cols[1:])),
                               rtol=1e-5)
    np.testing.assert_allclose(ours[0]["query_regularizer_loss"], QUERY_W * flops_np(cols[0]), rtol=1e-5)
    assert ours[0]["document_regularizer_loss"] > 100 * TOL


@pytest.mark.parametrize("name", list(BASE))
def test_sparse_losses_refuse_to_train_alone(name):
    """The reference raises at its first step; ours raises a ValueError that names the fix, before compiling."""
    ref_base, our_base, n, labels = BASE[name]
    cols = sparse_columns(1, n)
    with pytest.raises(AttributeError, match="should not be used alone"):
        reference_run(ref_base, cols, labels)
    loss = our_base()
    with pytest.raises(ValueError, match=f"{type(loss).__name__} should not be used alone. Use it with SpladeLoss"):
        S.validate_sparse_loss(loss)
    with pytest.raises(ValueError, match="should not be used alone"):
        loss([jnp.asarray(c) for c in cols], labels)
    assert isinstance(S.standalone_error(loss), ValueError)
    # Wrapped, it is fine; wrapped by another wrapper, it is refused (the reference's MatryoshkaLoss calls the
    # wrapped loss's refusing forward).
    S.validate_sparse_loss(S.SpladeLoss(None, loss, document_regularizer_weight=DOC_W))
    S.validate_sparse_loss(S.CachedSpladeLoss(None, loss, document_regularizer_weight=DOC_W))
    S.validate_sparse_loss(S.CSRLoss(None, loss))
    with pytest.raises(ValueError, match="must be wrapped directly by SpladeLoss or CSRLoss"):
        S.validate_sparse_loss(MatryoshkaLoss(None, loss, [V, V // 2]))


def test_flops_loss_refuses_to_train_alone():
    with pytest.raises(NotImplementedError, match="not intended to be used directly"):
        ref.FlopsLoss(None)([], None)
    with pytest.raises(ValueError, match="FlopsLoss is not intended to be used directly"):
        S.validate_sparse_loss(S.FlopsLoss())
    with pytest.raises(ValueError, match="cannot wrap FlopsLoss"):
        S.SpladeLoss(None, S.FlopsLoss(), document_regularizer_weight=DOC_W)


def test_sparse_mse_standalone():
    """SparseMSELoss trains alone (reference forward) against [B, V] teacher embeddings, for 1 and 2 columns."""
    teacher = sparse_columns(11, 1)[0]
    for n in (1, 2):
        cols = sparse_columns(12 + n, n)
        reference = reference_run(lambda m: ref.SparseMSELoss(m), cols, teacher)
        S.validate_sparse_loss(S.SparseMSELoss())
        ours = ours_run(lambda xs: S.SparseMSELoss()(xs, jnp.asarray(teacher)), cols)
        assert_same(ours, reference)


# --- SpladeLoss options --------------------------------------------------------------------------------------
def median_l0(x):
    return int(np.median((x != 0).sum(axis=1)))


@pytest.mark.parametrize("case", ["thresholds", "doc_only_2", "doc_only_3", "no_query_weight", "doc_only_threshold"])
def test_splade_options(case):
    n = 3 if case in ("thresholds", "doc_only_3", "no_query_weight") else 2
    cols = sparse_columns(21, n)
    kwargs = {"document_regularizer_weight": DOC_W}
    if case == "thresholds":  # about half the rows of each kind fall under their threshold
        kwargs.update(query_regularizer_weight=QUERY_W, document_regularizer_threshold=median_l0(
            np.concatenate(cols[1:])), query_regularizer_threshold=median_l0(cols[0]))
    elif case.startswith("doc_only"):
        kwargs.update(use_document_regularizer_only=True, query_regularizer_weight=QUERY_W)  # ignored, as upstream
        if case == "doc_only_threshold":
            kwargs["document_regularizer_threshold"] = median_l0(np.concatenate(cols))
    reference = reference_run(lambda m: ref.SpladeLoss(m, ref.SparseMultipleNegativesRankingLoss(m), **kwargs), cols)
    loss = S.SpladeLoss(None, S.SparseMultipleNegativesRankingLoss(), **kwargs)
    ours = ours_run(loss.compute_loss_from_embeddings, cols)
    assert_same(ours, reference)
    if case == "thresholds":
        # The thresholds did mask rows: the regularisers are well below the unthresholded FLOPS.
        assert DOC_W * flops_np(np.concatenate(cols[1:])) > 1.1 * ours[0]["document_regularizer_loss"]
        assert QUERY_W * flops_np(cols[0]) > 1.1 * ours[0]["query_regularizer_loss"]
    if case.startswith("doc_only"):
        assert "query_regularizer_loss" not in ours[0] and loss.query_regularizer_weight is None
    # Mutation controls (on the reference side, so nothing recompiles): the comparison fails against a run whose
    # threshold is a few active dimensions off, or whose last column is perturbed.
    if "threshold" in case:
        off = {**kwargs, "document_regularizer_threshold": kwargs["document_regularizer_threshold"] + 3}
        with pytest.raises(AssertionError):
            assert_same(ours, reference_run(
                lambda m: ref.SpladeLoss(m, ref.SparseMultipleNegativesRankingLoss(m), **off), cols))
    perturbed = [c.copy() for c in cols]
    perturbed[-1][0, 1] += 0.05
    with pytest.raises(AssertionError):
        assert_same(ours, reference_run(
            lambda m: ref.SpladeLoss(m, ref.SparseMultipleNegativesRankingLoss(m), **kwargs), perturbed))


def test_splade_config_dicts_and_bad_input():
    m = StubSparseEncoder(None)
    cases = [
        dict(document_regularizer_weight=3e-5, query_regularizer_weight=5e-5, document_regularizer_threshold=4),
        dict(document_regularizer_weight=3e-5, query_regularizer_threshold=7),
        dict(document_regularizer_weight=3e-5, use_document_regularizer_only=True),
    ]
    for kw in cases:
        reference = ref.SpladeLoss(m, ref.SparseMultipleNegativesRankingLoss(m), **kw).get_config_dict()
        ours = S.SpladeLoss(m, S.SparseMultipleNegativesRankingLoss(m), **kw).get_config_dict()
        assert type(ours.pop("loss")).__name__ == type(reference.pop("loss")).__name__
        assert ours == reference
    cached_ref = ref.CachedSpladeLoss(m, ref.SparseMultipleNegativesRankingLoss(m), document_regularizer_weight=1e-3,
                                      mini_batch_size=4).get_config_dict()
    cached = S.CachedSpladeLoss(m, S.SparseMultipleNegativesRankingLoss(m), document_regularizer_weight=1e-3,
                                mini_batch_size=4).get_config_dict()
    cached_ref.pop("loss"), cached.pop("loss")
    assert cached == cached_ref

    with pytest.raises(ValueError, match="needs document_regularizer_weight"):
        S.SpladeLoss(m, S.SparseMultipleNegativesRankingLoss(m))
    with pytest.raises(ValueError, match="needs document_regularizer_weight"):
        S.CachedSpladeLoss(m, S.SparseMultipleNegativesRankingLoss(m), query_regularizer_weight=5e-5)
    with pytest.raises(ValueError, match="must be a number"):
        S.SpladeLoss(m, S.SparseMultipleNegativesRankingLoss(m), document_regularizer_weight="a lot")
    with pytest.raises(TypeError):
        S.SpladeLoss(m, ref.SparseMultipleNegativesRankingLoss(m), document_regularizer_weight=3e-5)  # a torch loss
    loss = S.SpladeLoss(m, S.SparseMSELoss(m), document_regularizer_weight=3e-5)
    with pytest.raises(ValueError, match="at least 2 input columns"):
        loss.validate_columns(1, has_label=True)
    S.SpladeLoss(m, S.SparseMSELoss(m), document_regularizer_weight=3e-5,
                 use_document_regularizer_only=True).validate_columns(1, has_label=True)
    with pytest.raises(ValueError, match="FLOPS scope"):
        S.SpladeLoss(m, S.SparseMSELoss(m), document_regularizer_weight=3e-5, flops_scope="local")


def test_sparse_loss_config_dicts_and_cosine():
    """Constructor defaults, as the reference's get_config_dict shows them; the cosine losses switch the model."""
    pairs = [
        (ref.SparseMultipleNegativesRankingLoss, S.SparseMultipleNegativesRankingLoss),
        (ref.SparseMarginMSELoss, S.SparseMarginMSELoss),
        (ref.SparseDistillKLDivLoss, S.SparseDistillKLDivLoss),
        (ref.SparseCoSENTLoss, S.SparseCoSENTLoss),
        (ref.SparseAnglELoss, S.SparseAnglELoss),
        (ref.SparseCosineSimilarityLoss, S.SparseCosineSimilarityLoss),
        (ref.SparseTripletLoss, S.SparseTripletLoss),
        (ref.SparseMSELoss, S.SparseMSELoss),
        (ref.FlopsLoss, S.FlopsLoss),
    ]
    for ref_cls, our_cls in pairs:
        ref_model, our_model = StubSparseEncoder(None), StubSparseEncoder(None)
        assert our_cls(our_model).get_config_dict() == ref_cls(ref_model).get_config_dict(), our_cls.__name__
        assert our_model.similarity_fn_name == ref_model.similarity_fn_name, our_cls.__name__


# --- the trainer's warm-up ------------------------------------------------------------------------------------
@pytest.mark.parametrize("total_steps", [2, 10, 31, 300])
@pytest.mark.parametrize("scheduler_type", ["quadratic", "linear"])
def test_regularizer_weight_matches_callback(total_steps, scheduler_type):
    """Our pure schedule, jitted on a traced step, gives the callback's weights at every step of the run."""
    table = torch.zeros(1, 1)
    loss = ref.SpladeLoss(StubSparseEncoder(table), ref.SparseMultipleNegativesRankingLoss(None),
                          document_regularizer_weight=3e-5, query_regularizer_weight=5e-5)
    callback = SpladeRegularizerWeightSchedulerCallback(loss, scheduler_type=scheduler_type)
    callback.on_train_begin(None, TrainerState(max_steps=total_steps), TrainerControl())
    ours = S.SpladeLoss(None, S.SparseMultipleNegativesRankingLoss(), document_regularizer_weight=3e-5,
                        query_regularizer_weight=5e-5)
    weights = jax.jit(lambda s: ours.regularizer_weights(s, total_steps, scheduler_type=scheduler_type))
    assert loss.document_regularizer_weight == 0.0  # the callback zeroes them at train begin
    seen = set()
    for step in range(total_steps):
        callback.on_step_begin(None, TrainerState(max_steps=total_steps, global_step=step), TrainerControl())
        w = weights(jnp.asarray(step))
        np.testing.assert_allclose(float(w["document_regularizer_weight"]), loss.document_regularizer_weight,
                                   rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(float(w["query_regularizer_weight"]), loss.query_regularizer_weight,
                                   rtol=1e-6, atol=1e-12)
        seen.add(loss.document_regularizer_weight)
    assert 0.0 in seen and 3e-5 in seen and (total_steps < 4 or len(seen) > 2)
    assert callback.warmup_steps == S.warmup_steps(total_steps)
    # No query regulariser: stays None.
    assert S.regularizer_weight(3, total_steps, None) is None


def test_splade_at_warmup_steps():
    """The loss of a reference run at step ``s`` of 30 (the callback's weights) = ours ``at_step(s)``, the step
    being a traced argument of one compiled function (no retrace per step)."""
    total_steps = 30  # warm-up over 10 steps
    cols = sparse_columns(31, 3)
    loss = S.SpladeLoss(None, S.SparseMultipleNegativesRankingLoss(), document_regularizer_weight=DOC_W,
                        query_regularizer_weight=QUERY_W)

    def total(xs, s):
        comps = loss.at_step(s, total_steps).compute_loss_from_embeddings(xs)
        return sum(comps.values()), comps

    fn = jax.jit(jax.value_and_grad(total, has_aux=True))
    xs = [jnp.asarray(c) for c in cols]

    def reference_at(step):
        return reference_run(lambda m: ref.SpladeLoss(m, ref.SparseMultipleNegativesRankingLoss(m),
                                                      document_regularizer_weight=DOC_W,
                                                      query_regularizer_weight=QUERY_W),
                             cols, callback_step=step, total_steps=total_steps)

    for step in (0, 1, 4, 9, 10, 25):
        (value, comps), grads = fn(xs, jnp.asarray(step))
        ours = ({k: float(v) for k, v in comps.items()}, float(value), [np.asarray(g) for g in grads])
        reference = reference_at(step)
        assert_same(ours, reference)
        if step == 0:
            assert ours[0]["document_regularizer_loss"] == 0 == ours[0]["query_regularizer_loss"]
        if 0 < step < 10:  # mutation control: the neighbouring step's weights do not match
            with pytest.raises(AssertionError):
                assert_same(ours, reference_at(step + 1))
    assert loss.document_regularizer_weight == DOC_W  # at_step is a view; the loss keeps its maxima


# --- CachedSpladeLoss through the dispatcher (GradCache) ------------------------------------------------------
def table_forward(params, features, dropout_key=None):
    return {"sentence_embedding": params["table"][features["idx"]]}


def test_cached_splade():
    """Reference GradCache (no-grad pass + backward hook) vs our dispatcher's cached embedding (chunks of 3 rows
    of 8: uneven), gradients w.r.t. the embedding table."""
    mini_batch_size = 3
    cols = sparse_columns(41, 3)
    kw = dict(document_regularizer_weight=DOC_W, query_regularizer_weight=QUERY_W, document_regularizer_threshold=20)
    reference = reference_run(lambda m: ref.CachedSpladeLoss(m, ref.SparseMultipleNegativesRankingLoss(m),
                                                             mini_batch_size=mini_batch_size, **kw), cols)
    loss = S.CachedSpladeLoss(None, S.SparseMultipleNegativesRankingLoss(), mini_batch_size=mini_batch_size, **kw)
    assert loss.inputs.mini_batch_size == mini_batch_size
    features = [{"idx": jnp.arange(c * B, (c + 1) * B)} for c in range(3)]

    def total(params):
        comps = compute_loss(loss, table_forward, params, features)
        return sum(comps.values()), comps

    (value, comps), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(
        {"table": jnp.asarray(np.concatenate(cols))})
    ours = ({k: float(v) for k, v in comps.items()}, float(value), list(np.asarray(grads["table"]).reshape(3, B, V)))
    assert_same(ours, reference)


# --- FLOPS over 8 devices: global vs per-device ---------------------------------------------------------------
SHARDS, GB = 8, 16  # 2 rows per device


def mesh8():
    if len(jax.devices()) < SHARDS:
        pytest.fail("needs the 8 simulated CPU devices of tests/conftest.py")
    return jax.make_mesh((SHARDS,), ("data",), axis_types=(AxisType.Explicit,))


def sharded(cols):
    mesh = mesh8()
    return [jax.device_put(jnp.asarray(c), NamedSharding(mesh, P("data"))) for c in cols]


def run_sharded(loss, cols, num_shards):
    def total(xs):
        comps = loss.compute_loss_from_embeddings(xs, num_shards=num_shards)
        return sum(comps.values()), comps

    (value, comps), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(sharded(cols))
    return {k: float(v) for k, v in comps.items()}, float(value), [np.asarray(g) for g in grads]


def per_device_reference(make_loss, cols):
    """PyTorch DDP: each rank runs the reference loss on its rows; the loss (and gradient) is the ranks' mean."""
    b = GB // SHARDS
    runs = [reference_run(make_loss, [c[s * b:(s + 1) * b] for c in cols]) for s in range(SHARDS)]
    comps = {k: float(np.mean([r[0][k] for r in runs])) for k in runs[0][0]}
    grads = [np.concatenate([r[2][c] for r in runs]) / SHARDS for c in range(len(cols))]
    return comps, float(np.mean([r[1] for r in runs])), grads


def test_flops_global_vs_per_device_on_8_devices():
    cols = sparse_columns(51, 3, batch=GB)
    kw = dict(document_regularizer_weight=DOC_W, query_regularizer_weight=QUERY_W)

    # Global FLOPS (and global in-batch negatives): 8 sharded devices = 1 device = the reference on the whole batch.
    glob = S.SpladeLoss(None, S.SparseMultipleNegativesRankingLoss(gather_across_devices=True), **kw)
    on_8 = run_sharded(glob, cols, SHARDS)
    on_1 = ours_run(glob.compute_loss_from_embeddings, cols)
    whole = reference_run(lambda m: ref.SpladeLoss(m, ref.SparseMultipleNegativesRankingLoss(m), **kw), cols)
    assert_same(on_8, whole)
    assert_same(on_1, whole)

    # Per-device FLOPS (and per-device negatives): the mean over the 8 shards of the reference run on each shard.
    local = S.SpladeLoss(None, S.SparseMultipleNegativesRankingLoss(), flops_scope="per_device", **kw)
    ddp = per_device_reference(lambda m: ref.SpladeLoss(m, ref.SparseMultipleNegativesRankingLoss(m), **kw), cols)
    assert_same(run_sharded(local, cols, SHARDS), ddp)

    # The documented difference, not hidden: each FLOPS equals its own definition, and they differ.
    docs = np.concatenate([c.reshape(SHARDS, GB // SHARDS, V) for c in cols[1:]], axis=1)  # each shard's documents
    global_doc, per_device_doc = flops_np(np.concatenate(cols[1:])), float(np.mean([flops_np(d) for d in docs]))
    np.testing.assert_allclose(on_8[0]["document_regularizer_loss"], DOC_W * global_doc, rtol=1e-5)
    np.testing.assert_allclose(ddp[0]["document_regularizer_loss"], DOC_W * per_device_doc, rtol=1e-5)
    assert per_device_doc > 1.5 * global_doc  # Jensen: the square of a mean is below the mean of squares
    with pytest.raises(AssertionError):
        assert_same(on_8, ddp)
    # With one shard the two scopes coincide.
    assert_same(ours_run(local.compute_loss_from_embeddings, cols), whole)


def test_flops_function_scopes_and_mask():
    """``flops`` itself: global on sharded inputs = unsharded; per_device = mean of per-shard; mask = valid rows."""
    cols = sparse_columns(61, 2, batch=GB)
    glob = jax.jit(lambda xs: S.flops(xs))
    per = jax.jit(lambda xs: S.flops(xs, scope="per_device", num_shards=SHARDS))
    both = np.concatenate(cols)
    np.testing.assert_allclose(float(glob(sharded(cols))), flops_np(both), rtol=1e-6)
    np.testing.assert_allclose(float(glob([jnp.asarray(c) for c in cols])), flops_np(both), rtol=1e-6)
    shards = np.concatenate([c.reshape(SHARDS, -1, V) for c in cols], axis=1)
    np.testing.assert_allclose(float(per(sharded(cols))), np.mean([flops_np(s) for s in shards]), rtol=1e-6)
    mask = np.arange(GB) < 11
    masked = float(jax.jit(lambda xs, m: S.flops(xs, mask=m))([jnp.asarray(c) for c in cols], jnp.asarray(mask)))
    np.testing.assert_allclose(masked, flops_np(np.concatenate([c[mask] for c in cols])), rtol=1e-6)


def test_splade_with_padding_mask():
    """Padded rows (the trainer's partial batches) are left out: equal to the reference on the real rows only."""
    cols = sparse_columns(71, 3)
    mask = np.arange(B) < 5
    kw = dict(document_regularizer_weight=DOC_W, query_regularizer_weight=QUERY_W, document_regularizer_threshold=15)
    reference = reference_run(lambda m: ref.SpladeLoss(m, ref.SparseMultipleNegativesRankingLoss(m), **kw),
                              [c[mask] for c in cols])
    loss = S.SpladeLoss(None, S.SparseMultipleNegativesRankingLoss(), **kw)
    comps, total, grads = ours_run(lambda xs: loss.compute_loss_from_embeddings(xs, mask=jnp.asarray(mask)), cols)
    assert all(np.all(g[~mask] == 0) for g in grads)
    assert_same((comps, total, [g[mask] for g in grads]), reference)


# --- CSR: reconstruction terms from the SparseAutoEncoder's outputs --------------------------------------------
CSR_DIM, CSR_HIDDEN = 12, 48


class StubCSREncoder(torch.nn.Module):
    """Returns the rows ``features["idx"]`` of one leaf table per output entry (``decoded_embedding_aux`` None
    when ``aux`` is off)."""

    def __init__(self, tables: dict) -> None:
        super().__init__()
        self.tables = tables
        self.similarity_fn_name = "dot"

    def forward(self, features):
        return {k: None if t is None else t[features["idx"]] for k, t in self.tables.items()}


def csr_tables(seed, n, batch=B, aux=True, degenerate=False):
    rng = np.random.default_rng(seed)
    dense = lambda: rng.normal(size=(n * batch, CSR_DIM)).astype(np.float32)  # noqa: E731
    tables = {"sentence_embedding_backbone": dense(), "decoded_embedding_k": dense(),
              "decoded_embedding_4k": dense(), "decoded_embedding_aux": dense() if aux else None,
              "decoded_embedding_k_pre_bias": dense(),
              "sentence_embedding": np.concatenate(sparse_columns(seed, n, batch, CSR_HIDDEN))}
    if degenerate:  # x - pre_bias identical in every row: the NMSE denominator falls back to 1
        tables["sentence_embedding_backbone"] = np.tile(dense()[:1], (n * batch, 1))
        tables["decoded_embedding_k_pre_bias"] = np.zeros_like(tables["decoded_embedding_k_pre_bias"])
    return tables


def reference_csr(make_loss, tables, n, labels=None):
    leaves = {k: None if v is None else torch.tensor(v, requires_grad=True) for k, v in tables.items()}
    stub = StubCSREncoder(leaves)
    b = len(tables["sentence_embedding"]) // n
    features = [{"idx": torch.arange(c * b, (c + 1) * b)} for c in range(n)]
    out = make_loss(stub)(features, None if labels is None else torch.tensor(labels))
    total = sum(out.values())
    total.backward()
    grads = {k: np.zeros_like(tables[k]) if t.grad is None else t.grad.numpy()
             for k, t in leaves.items() if t is not None}
    return {k: float(v.detach()) for k, v in out.items()}, float(total.detach()), grads


def ours_csr(loss, tables, n, labels=None, mask=None):
    b = len(tables["sentence_embedding"]) // n
    arrays = {k: jnp.asarray(v) for k, v in tables.items() if v is not None}

    def total(arrs):
        outputs = [{k: None if tables[k] is None else arrs[k][c * b:(c + 1) * b] for k in tables} for c in range(n)]
        comps = loss.compute_loss_from_outputs(outputs, labels, **({} if mask is None else {"mask": mask}))
        return sum(comps.values()), comps

    (value, comps), grads = jax.jit(jax.value_and_grad(total, has_aux=True))(arrays)
    return {k: float(v) for k, v in comps.items()}, float(value), {k: np.asarray(g) for k, g in grads.items()}


def assert_same_csr(ours, reference, tol=TOL):
    assert_same((ours[0], ours[1], [ours[2][k] for k in sorted(ours[2])]),
                (reference[0], reference[1], [reference[2][k] for k in sorted(ours[2])]), tol)


@pytest.mark.parametrize("case", ["default", "no_aux", "degenerate", "margin_mse"])
def test_csr_loss(case):
    n = 4 if case == "margin_mse" else 2
    tables = csr_tables(81, n, aux=case != "no_aux", degenerate=case == "degenerate")
    labels = TEACHER3[:, :2] if case == "margin_mse" else None
    if case == "margin_mse":
        make_ref = lambda m: ref.CSRLoss(m, ref.SparseMarginMSELoss(m), beta=0.3, gamma=2.0)  # noqa: E731
        loss = S.CSRLoss(None, S.SparseMarginMSELoss(), beta=0.3, gamma=2.0)
    else:
        make_ref, loss = (lambda m: ref.CSRLoss(m)), S.CSRLoss(None)
    reference = reference_csr(make_ref, tables, n, labels)
    ours = ours_csr(loss, tables, n, None if labels is None else jnp.asarray(labels))
    assert set(ours[0]) == {"reconstruction_loss_k", "reconstruction_loss_4k", "reconstruction_loss_aux", "base_loss"}
    assert_same_csr(ours, reference)
    if case == "degenerate":  # the denominator fell back to 1: beta * plain MSE
        aux, x = tables["decoded_embedding_aux"], tables["sentence_embedding_backbone"]
        np.testing.assert_allclose(ours[0]["reconstruction_loss_aux"], 0.1 * np.mean((aux - x) ** 2), rtol=1e-5)
    # Mutation control (reference side, no recompile): another auxiliary weight does not match.
    if case != "no_aux":
        gamma = 2.0 if case == "margin_mse" else 1.0
        base = ref.SparseMarginMSELoss if case == "margin_mse" else ref.SparseMultipleNegativesRankingLoss
        with pytest.raises(AssertionError):
            assert_same_csr(ours, reference_csr(lambda m: ref.CSRLoss(m, base(m), beta=0.5, gamma=gamma), tables, n,
                                                labels))


def test_csr_mask_config_and_bad_input():
    tables = csr_tables(91, 2)
    mask = np.arange(B) < 6
    real = {k: None if v is None else np.concatenate([v[:B][mask], v[B:][mask]]) for k, v in tables.items()}
    reference = reference_csr(lambda m: ref.CSRLoss(m), real, 2)
    comps, total, grads = ours_csr(S.CSRLoss(None), tables, 2, mask=jnp.asarray(mask))
    keep = np.concatenate([mask, mask])
    assert all(np.all(g[~keep] == 0) for g in grads.values())
    assert_same_csr((comps, total, {k: g[keep] for k, g in grads.items()}), reference)

    m = StubSparseEncoder(None)
    assert S.CSRLoss(m).get_config_dict() == ref.CSRLoss(m).get_config_dict()
    assert S.CSRReconstructionLoss(m).get_config_dict() == ref.CSRReconstructionLoss(m).get_config_dict()
    with pytest.raises(NotImplementedError, match="not intended to be used standalone"):
        ref.CSRReconstructionLoss(m)([])
    with pytest.raises(ValueError, match="not intended to be used standalone"):
        S.validate_sparse_loss(S.CSRReconstructionLoss(m))
    S.validate_sparse_loss(S.CSRLoss(m))
    with pytest.raises(ValueError, match="outputs of each column"):
        S.CSRLoss(m).compute_loss_from_embeddings([jnp.zeros((2, 3))] * 2)
    with pytest.raises(ValueError, match="missing"):
        S.csr_reconstruction_loss([{"sentence_embedding": jnp.zeros((2, 3))}])
    with pytest.raises(ValueError, match="cannot wrap CSRLoss"):
        S.SpladeLoss(m, S.CSRLoss(m), document_regularizer_weight=3e-5)
    with pytest.raises(ValueError, match="CSRLoss cannot wrap SpladeLoss"):
        S.CSRLoss(m, S.SpladeLoss(m, S.SparseMultipleNegativesRankingLoss(m), document_regularizer_weight=3e-5))
