"""FSDP (training/sharding.py) on 8 CPU devices: the ``fsdp`` axis shards parameters and Adam state and
splits the batch together with ``data``; checkpoints move between fsdp and data-only meshes; an fsdp size
that divides no dimension leaves everything replicated. That FSDP changes nothing numerically (losses,
gradients, Adam moments and weights of {"data": 2, "fsdp": 4} == {"data": 8}) is in
test_trainer_equalities.py."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from datasets import Dataset
from jax.sharding import PartitionSpec as P

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.losses import CoSENTLoss, MultipleNegativesRankingLoss
from stcore_jax.training.mesh import make_mesh
from stcore_jax.training.sharding import batch_spec, data_parallel_size, fsdp_spec, param_shardings

FSDP = {"data": 4, "fsdp": 2}
MIN_SIZE = 1024  # the tiny BERT's 32x32 and 32x64 kernels are sharded too, not only its word embeddings
EMB = ("0", "embeddings", "word_embeddings", "embedding")  # [30522, 32]
KERNEL = ("0", "encoder", "layer", 0, "intermediate", "dense", "kernel")  # [32, 64]
BIAS = ("0", "encoder", "layer", 0, "intermediate", "dense", "bias")  # [64]
CONTINUATION_ATOL = 1e-6


def _args(out, **kw):
    base = dict(output_dir=str(out), num_train_epochs=1, per_device_train_batch_size=2, learning_rate=1e-4,
                warmup_steps=1, logging_steps=1, save_strategy="no", disable_tqdm=True, save_final_model=False,
                fsdp_min_size=MIN_SIZE)
    base.update(kw)
    return SentenceTransformerTrainingArguments(**base)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _adam_moment(opt_state, name, path):
    """The Adam ``mu`` / ``nu`` leaf of the parameter at ``path`` (``["model", *path]`` in the trainable tree)."""
    def raw(keys):  # DictKey.key, GetAttrKey.name, SequenceKey.idx
        return [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in keys]

    want = ["model", *path]
    hits = [x for p, x in jax.tree_util.tree_flatten_with_path(opt_state)[0]
            if name in raw(p) and raw(p)[-len(want):] == want]
    assert len(hits) == 1, (name, want, len(hits))
    return hits[0]


def _assert_fsdp_sharded(x, dim):
    """``x`` is split in two along ``dim`` over ``fsdp``: each of the 8 devices holds half of it."""
    assert x.sharding.spec[dim] == "fsdp" and "fsdp" not in [s for i, s in enumerate(x.sharding.spec) if i != dim]
    half = list(x.shape)
    half[dim] //= 2
    assert len(x.addressable_shards) == 8
    assert all(s.data.shape == tuple(half) for s in x.addressable_shards), [s.data.shape for s in x.addressable_shards]


def test_sharding_rule():
    assert fsdp_spec((30522, 32), 2) == P("fsdp", None)  # largest divisible dimension
    assert fsdp_spec((30522, 32), 3) == P("fsdp", None)
    assert fsdp_spec((30521, 32), 2, 0) == P(None, "fsdp")  # the largest is odd: the next divisible one
    assert fsdp_spec((64, 64), 2, 0) == P("fsdp", None)  # a tie: the first
    assert fsdp_spec((64,), 2) == P()  # under min_size
    assert fsdp_spec((30522, 32), 7, 0) == P()  # nothing divisible
    assert fsdp_spec((1 << 20,), 1, 0) == P()
    mesh = make_mesh(FSDP)
    assert data_parallel_size(mesh) == 8 and batch_spec(mesh) == P(("data", "fsdp"))
    assert batch_spec(mesh, leading_accum=True) == P(None, ("data", "fsdp"))
    assert batch_spec(make_mesh({"data": 8})) == P("data")
    tree = {"w": jax.ShapeDtypeStruct((30522, 32), jnp.float32), "b": np.zeros((32,)), "step": jnp.zeros((), jnp.int32)}
    got = param_shardings(tree, mesh)
    assert (got["w"].spec, got["b"].spec, got["step"].spec) == (P("fsdp", None), P(), P())
    assert all(s.mesh is mesh for s in got.values())
    assert param_shardings(tree, make_mesh({"data": 8}), 0)["w"].spec == P()  # no fsdp axis: replicated


@pytest.fixture(scope="module")
def runs(tiny_bert_dir, stsb_train, tmp_path_factory):
    """4 steps of MNRL with in-batch negatives over the whole global batch of 16 (gather_across_devices)
    on the fsdp mesh, its step-2 checkpoint resumed on the data-only mesh and that run's step-4
    checkpoint restored onto the fsdp mesh. One module-scoped set of runs: compiling the step dominates
    the time."""
    s1, s2, _ = stsb_train
    data = Dataset.from_dict({"anchor": s1[:128], "positive": s2[:128]})
    root = tmp_path_factory.mktemp("fsdp")

    def run(name, mesh, per_device=2, resume=None, **kw):
        model = SentenceTransformer(tiny_bert_dir)
        args = _args(root / name, max_steps=4, per_device_train_batch_size=per_device, mesh_shape=mesh, **kw)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                             loss=MultipleNegativesRankingLoss(model, gather_across_devices=True))
        assert trainer.global_batch == 16
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    out = {"fsdp": run("fsdp", FSDP, save_strategy="steps", save_steps=2, save_final_model=True)}
    out["resumed"] = run("resumed", {"data": 8}, resume=str(root / "fsdp" / "checkpoint-2"), save_strategy="steps",
                         save_steps=2)
    out["back"] = run("back", FSDP, resume=str(root / "resumed" / "checkpoint-4"))  # at max_steps: restores only
    out["root"] = root
    return out


def test_fsdp_shards_parameters_adam_state_and_batch(runs):
    trainer = runs["fsdp"]
    # The batch is split over both axes: 8 blocks of 2 rows, one per device, and one packed shard each.
    assert trainer.data_parallel == 8 and trainer.packing
    name, rows = trainer.epoch_plan(0)[0]
    batch = trainer._to_device(trainer._collate_step(name, [rows], trainer.global_batch), local=True)
    mask = batch["columns"][0]["attention_mask"]
    assert mask.sharding.spec == P(("data", "fsdp"))
    assert sorted(s.data.shape[0] for s in mask.addressable_shards) == [2] * 8
    packed = batch["packed"]["packed_input_ids"]
    assert packed.sharding.spec == P(("data", "fsdp")) and packed.shape[0] == 8
    assert sorted(s.data.shape[0] for s in packed.addressable_shards) == [1] * 8

    # Parameters and their Adam moments are sharded over fsdp, small ones replicated.
    state = trainer._train_state
    trainable, opt = state["trainable"], state["opt_state"]
    _assert_fsdp_sharded(_get(trainable["model"], EMB), 0)
    _assert_fsdp_sharded(_get(trainable["model"], KERNEL), 1)
    for moment in ("mu", "nu"):
        _assert_fsdp_sharded(_adam_moment(opt, moment, EMB), 0)
        _assert_fsdp_sharded(_adam_moment(opt, moment, KERNEL), 1)
    assert _get(trainable["model"], BIAS).sharding.is_fully_replicated
    assert _adam_moment(opt, "mu", BIAS).sharding.is_fully_replicated

    # The export (gathered from the shards) is the trained model.
    exported = SentenceTransformer(os.path.join(runs["root"], "fsdp", "final"))
    for a, b in zip(_leaves(exported.params), _leaves(trainer.model.params)):
        np.testing.assert_array_equal(a, b)


def test_checkpoint_moves_between_fsdp_and_data_meshes(runs):
    """fsdp checkpoint -> resumed on a data-only mesh -> its checkpoint restored onto the fsdp mesh."""
    straight, resumed = runs["fsdp"]._train_state, runs["resumed"]._train_state
    assert int(resumed["step"]) == 4 and runs["resumed"].state.global_step == 4
    assert all(x.sharding.is_fully_replicated for x in jax.tree_util.tree_leaves(resumed))
    # Steps 3 and 4 ran on another layout: equal up to float reduction order.
    for a, b in zip(_leaves(straight), _leaves(resumed)):
        np.testing.assert_allclose(a, b, atol=CONTINUATION_ATOL, rtol=0)

    # ... and back: the data-only checkpoint restores sharded onto the fsdp mesh, bit for bit.
    restored = runs["back"]._train_state
    _assert_fsdp_sharded(_get(restored["trainable"]["model"], EMB), 0)
    _assert_fsdp_sharded(_adam_moment(restored["opt_state"], "mu", KERNEL), 1)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(resumed)
    for a, b in zip(_leaves(restored), _leaves(resumed)):
        np.testing.assert_array_equal(a, b)


def test_fsdp_size_dividing_nothing_keeps_everything_replicated(tiny_bert_dir, pairs, tmp_path):
    """fsdp=7 divides no dimension of the tiny BERT (vocabulary 30522, widths 2/32/64/160): nothing is
    sharded even with no size threshold, and training runs with a 7-way split batch."""
    model = SentenceTransformer(tiny_bert_dir)
    args = _args(tmp_path, max_steps=2, mesh_shape={"data": 1, "fsdp": 7}, fsdp_min_size=0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs, loss=CoSENTLoss(model))
    assert trainer.data_parallel == 7 and trainer.global_batch == 14
    trainer.train()
    state = trainer._train_state
    assert int(state["step"]) == 2 and int(state["skipped"]) == 0
    assert all(x.sharding.is_fully_replicated and x.sharding.num_devices == 7 for x in jax.tree_util.tree_leaves(state))
    # The same tree with fsdp=2 would be sharded: the check above is not vacuous.
    assert not all(s.is_fully_replicated for s in jax.tree_util.tree_leaves(param_shardings(state, make_mesh(FSDP), 0)))
    initial = _leaves(SentenceTransformer(tiny_bert_dir).params)
    assert max(np.abs(a - b).max() for a, b in zip(_leaves(model.params), initial)) > 1e-5
