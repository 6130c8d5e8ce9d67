"""CrossEncoder training against sentence-transformers 6.2: every loss's value and parameter gradients through
the whole pipeline (pairs formed and tokenized on the host, one forward over all pairs, the loss), the
reference-style ``loss(inputs, labels)`` call, 1 device = 8 devices, cached = uncached with dropout, exact
resume with sampled in-batch candidates, one process's share of a global batch, and the bad-input errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers as tf
from datasets import Dataset, IterableDataset
from sentence_transformers import CrossEncoder as RefCrossEncoder
from sentence_transformers.cross_encoder import losses as ref_losses

import tiny_models
from stcore_jax import CrossEncoder
from stcore_jax.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments, losses as L
from stcore_jax.cross_encoder.task import CrossEncoderTask
from stcore_jax.losses import CoSENTLoss
from stcore_jax.sentence_transformer.model import SentenceTransformer
from stcore_jax.training import TrainerCallback
from stcore_jax.util import read_sts

B = 8  # rows per parity batch


@pytest.fixture(scope="module")
def data(stsb_dir):
    s1, s2, sc = read_sts(stsb_dir / "sts-train.csv")
    return s1[:64], s2[:64], [x / 5 for x in sc[:64]]


@pytest.fixture(scope="module")
def ce_dirs(tmp_path_factory, minilm_path, data):
    """Tiny random BertForSequenceClassification dirs with 1 and 3 labels (weights perturbed off their init)."""
    s1, s2, _ = data
    root = tmp_path_factory.mktemp("ce_train")
    plain = tiny_models.build_hf("bert", str(root / "plain"), str(minilm_path), s1 + s2)
    out = {}
    for n in (1, 3):
        torch.manual_seed(10 + n)
        model = tf.AutoModelForSequenceClassification.from_config(tf.AutoConfig.from_pretrained(plain, num_labels=n))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        path = str(root / f"cls{n}")
        model.save_pretrained(path)
        tf.AutoTokenizer.from_pretrained(plain).save_pretrained(path)
        out[n] = path
    return out


@pytest.fixture(scope="module")
def minilm_st(minilm_path):
    """The bi-encoder the rejection tests hand the CrossEncoderTrainer (loaded once; nothing trains it)."""
    return SentenceTransformer(str(minilm_path))


def _cases(data):
    """name -> (num_labels, columns {name: values}, labels or None, our loss factory, reference loss factory)."""
    s1, s2, y = data
    q, p = s1[:B], s2[:B]
    hard = s2[B:2 * B]
    docs = [[s2[(i + j) % 64] for j in range(1 + i % 4)] for i in range(B)]  # ragged: 1..4 documents
    rel = [[float((i + j) % 3 == 0) + (1.0 if j == 1 else 0.0) for j in range(len(d))] for i, d in enumerate(docs)]
    pair = {"a": q, "b": p}
    return {
        "bce_pos_weight": (1, pair, y[:B], lambda m: L.BinaryCrossEntropyLoss(m, pos_weight=5.0),
                           lambda m: ref_losses.BinaryCrossEntropyLoss(m, pos_weight=torch.tensor(5.0))),
        "cross_entropy": (3, pair, [int(round(v * 5)) % 3 for v in y[:B]], L.CrossEntropyLoss,
                          ref_losses.CrossEntropyLoss),
        "margin_mse": (1, {"q": q, "p": p, "n1": hard, "n2": s1[B:2 * B]},
                       [[0.3 * i - 0.5, 0.2 - 0.1 * i] for i in range(B)], L.MarginMSELoss, ref_losses.MarginMSELoss),
        "mnrl": (1, {"a": q, "p": p, "n": hard}, None, lambda m: L.MultipleNegativesRankingLoss(m, num_negatives=None),
                 lambda m: ref_losses.MultipleNegativesRankingLoss(m, num_negatives=None)),
        "cached_mnrl": (1, {"a": q, "p": p}, None,
                        lambda m: L.CachedMultipleNegativesRankingLoss(m, num_negatives=None, mini_batch_size=5),
                        lambda m: ref_losses.CachedMultipleNegativesRankingLoss(m, num_negatives=None,
                                                                                mini_batch_size=5)),
        "lambda_ndcg2pp": (1, {"q": q, "docs": docs}, rel,
                           lambda m: L.LambdaLoss(m, weighting_scheme=L.NDCGLoss2PPScheme(), k=3),
                           lambda m: ref_losses.LambdaLoss(m, weighting_scheme=ref_losses.NDCGLoss2PPScheme(), k=3)),
    }


def _reference(path, columns, labels, make_loss):
    """The reference loss on raw columns: value and ``{HF parameter name: gradient}`` (eval mode: no dropout)."""
    ref = RefCrossEncoder(path, device="cpu")
    ref.model.eval()
    loss = make_loss(ref)
    lab = None
    if labels is not None:
        lab = [torch.tensor(x) for x in labels] if isinstance(labels[0], list) and len(set(map(len, labels))) > 1 \
            else torch.tensor(labels)
    value = loss(list(columns.values()), lab)
    value.backward()
    grads = {n: p.grad.numpy() for n, p in ref.model.named_parameters() if p.grad is not None}
    return float(value), grads


def _ours(path, columns, labels, make_loss, control=None):
    """Our objective on the trainer's collated batch (no dropout): value and HF-named gradients, plus the
    reference-style ``loss(inputs, labels)`` value, plus (given ``control``, other columns of the same layout) the
    HF-named gradients on those columns, through the same compiled function (same shapes: no second compile)."""
    model = CrossEncoder(path)
    loss = make_loss(model)
    task = CrossEncoderTask(model, CrossEncoderTrainingArguments(output_dir="unused"))
    objective = task.objective(loss, loss_key=None, num_shards=1)
    value_and_grad = jax.jit(jax.value_and_grad(lambda p, b: objective({"model": p, "loss": {}}, b, None)[0]))

    def run(cols):
        values = dict(cols) if labels is None else {**cols, "label": labels}
        prep = task.prepare(Dataset.from_dict(values), "train", loss, is_dict=False)
        rows = list(range(len(prep)))
        batch = jax.tree.map(np.asarray, task.collate(prep, rows, len(rows), task.longest(prep, rows)))
        value, grads = value_and_grad(model.params, batch)
        return float(value), model.input_module.head.hf_state_dict(grads["0"])

    value, grads = run(columns)
    # The reference-style call, traced as one program instead of run op by op (each op compiled on its own was
    # most of this test's time): the same host-side pair forming and tokenization, the same forward and loss.
    called = float(jax.jit(lambda: loss(list(columns.values()), labels))())
    return value, grads, called, (None if control is None else run(control)[1])


# One case per way the trainer forms and scores pairs: labelled pairs (1 and 3 labels), anchor columns
# (MarginMSE), in-batch candidates (MNRL), GradCache chunks (cached MNRL) and ragged document lists (LambdaLoss).
# Every other loss shares one of these paths and differs only in its function of the scores, which
# test_losses_parity.py compares with the reference (value and gradient) on the same layouts.
@pytest.mark.parametrize("case", ["bce_pos_weight", "cross_entropy", "margin_mse", "mnrl", "cached_mnrl",
                                  "lambda_ndcg2pp"])
def test_loss_value_and_gradients_match_reference(case, ce_dirs, data):
    num_labels, columns, labels, ours, theirs = _cases(data)[case]
    path = ce_dirs[num_labels]
    ref_value, ref_grads = _reference(path, columns, labels, theirs)
    # mutation control (mnrl): the same objective on other pairs (the hard negatives swapped in)
    swapped = {**columns, "p": columns["n"], "n": columns["p"]} if case == "mnrl" else None
    value, grads, called, other = _ours(path, columns, labels, ours, control=swapped)
    assert abs(value - ref_value) <= 1e-5 * max(1.0, abs(ref_value)), (value, ref_value)
    assert abs(called - ref_value) <= 1e-5 * max(1.0, abs(ref_value)), (called, ref_value)
    assert set(ref_grads) <= set(grads), sorted(set(ref_grads) - set(grads))
    scale = max(float(np.abs(g).max()) for g in ref_grads.values())
    assert scale > 1e-4  # the loss reaches the weights
    worst = max(float(np.abs(grads[k] - g).max()) for k, g in ref_grads.items())
    assert worst <= 1e-5 * max(1.0, scale), (worst, scale)
    # mutation control: the gradient of a loss over other pairs (the hard negatives swapped in) differs
    if case == "mnrl":
        assert max(float(np.abs(other[k] - g).max()) for k, g in ref_grads.items()) > 100 * worst


# --- training-level equalities --------------------------------------------------------------------
class _FirstStep(TrainerCallback):
    """Adam's first moment after step 1 (= (1 - beta1) * grad with max_grad_norm=0)."""

    def __init__(self):
        self.trainer, self.mu = None, None

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == 1:
            opt = jax.device_get(self.trainer._train_state["opt_state"])
            leaves = jax.tree_util.tree_flatten_with_path(opt)[0]
            self.mu = {jax.tree_util.keystr(p): np.asarray(x, np.float64) for p, x in leaves
                       if "mu" in jax.tree_util.keystr(p)}


def _train(path, dataset, loss_fn, out, **kw):
    model = CrossEncoder(path)
    first = _FirstStep()
    base = dict(output_dir=str(out), num_train_epochs=1, max_steps=2, per_device_train_batch_size=2, learning_rate=1e-4,
                logging_steps=1, max_grad_norm=0.0, length_buckets=1, save_strategy="no", disable_tqdm=True,
                save_final_model=False)
    base.update(kw)
    trainer = CrossEncoderTrainer(model=model, args=CrossEncoderTrainingArguments(**base), train_dataset=dataset,
                                  loss=loss_fn(model), callbacks=[first])
    first.trainer = trainer
    trainer.train()
    losses = np.array([h["loss"] for h in trainer.state.log_history if "loss" in h])
    return losses, first.mu, jax.device_get(trainer.model.params), trainer


def _rel(a: dict, b: dict) -> float:
    floor = 1e-3 * np.sqrt(sum(np.sum(v ** 2) for v in b.values()))
    return max(float(np.linalg.norm(a[k] - b[k]) / max(np.linalg.norm(b[k]), floor)) for k in b)


def test_one_device_equals_eight_devices(ce_dirs, data, tmp_path):
    """MNRL (all in-batch candidates of the global batch of 16, one hard negative) with dropout on: the same
    logged losses and first-step gradient on a 1-device and an 8-device mesh."""
    s1, s2, _ = data
    ds = Dataset.from_dict({"a": s1[:32], "p": s2[:32], "n": s2[32:64]})

    def mnrl(m):
        return L.MultipleNegativesRankingLoss(m, num_negatives=None)

    one = _train(ce_dirs[1], ds, mnrl, tmp_path / "one", mesh_shape={"data": 1}, per_device_train_batch_size=16)
    eight = _train(ce_dirs[1], ds, mnrl, tmp_path / "eight", mesh_shape={"data": 8})
    assert np.max(np.abs(one[0] - eight[0]) / np.abs(one[0])) <= 1e-6, (one[0], eight[0])
    rel = _rel(eight[1], one[1])
    assert rel <= 6e-6, rel
    assert _rel({k: 8 * v for k, v in eight[1].items()}, one[1]) > 1  # the sum-over-shards bug would show


def test_cached_equals_uncached_with_dropout(ce_dirs, data):
    """GradCache MNRL (chunks of 3 pairs) = MNRL: value and gradients, with per-pair dropout keys."""
    s1, s2, _ = data
    model = CrossEncoder(ce_dirs[1])
    task = CrossEncoderTask(model, CrossEncoderTrainingArguments(output_dir="unused"))
    ds = Dataset.from_dict({"a": s1[:6], "p": s2[:6], "n": s2[6:12]})
    key = jax.random.key(3)
    out = {}
    for name, loss in (("plain", L.MultipleNegativesRankingLoss(model, num_negatives=3)),
                       ("cached", L.CachedMultipleNegativesRankingLoss(model, num_negatives=3, mini_batch_size=3))):
        prep = task.prepare(ds, "train", loss, is_dict=False)
        batch = task.collate(prep, list(range(6)), 6, task.longest(prep, range(6)))
        obj = task.objective(loss, loss_key=None, num_shards=1)
        out[name] = jax.jit(jax.value_and_grad(lambda p, b: obj({"model": p, "loss": {}}, b, key)[0]))(model.params,
                                                                                                        batch)
    # the cached objective without dropout, as one compiled program (op by op, it compiled each op on its own)
    no_dropout = jax.jit(lambda p, b: obj({"model": p, "loss": {}}, b, None)[0])(model.params, batch)
    (v0, g0), (v1, g1) = out["plain"], out["cached"]
    assert abs(float(v0) - float(v1)) <= 1e-6
    assert abs(float(v0) - float(no_dropout)) > 1e-4  # dropout is on
    diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(jax.device_get(g0)),
                                                          jax.tree.leaves(jax.device_get(g1))))
    assert diff <= 1e-6, diff


def test_exact_resume_with_sampled_candidates(ce_dirs, data, tmp_path):
    """MNRL drawing 3 of its in-batch candidates: a run resumed from its step-2 checkpoint ends where the
    uninterrupted run ends (the draws are a function of the seed and the batch's rows)."""
    s1, s2, _ = data
    ds = Dataset.from_dict({"a": s1[:48], "p": s2[:48]})

    def mnrl(m):
        return L.MultipleNegativesRankingLoss(m, num_negatives=3)

    kw = dict(max_steps=3, save_strategy="steps", save_steps=2, seed=7)
    full = _train(ce_dirs[1], ds, mnrl, tmp_path / "run", **kw)
    model = CrossEncoder(ce_dirs[1])
    args = CrossEncoderTrainingArguments(output_dir=str(tmp_path / "run"), num_train_epochs=1, per_device_train_batch_size=2,
                                         learning_rate=1e-4, logging_steps=1, max_grad_norm=0.0, length_buckets=1,
                                         disable_tqdm=True, save_final_model=False, **kw)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=ds, loss=mnrl(model))
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    resumed = jax.device_get(trainer.model.params)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(full[2]), jax.tree.leaves(resumed)))
    assert diff == 0.0, diff
    moved = max(float(np.abs(a - b).max()) for a, b in
                zip(jax.tree.leaves(full[2]), jax.tree.leaves(jax.device_get(CrossEncoder(ce_dirs[1]).params))))
    assert moved > 1e-5  # the comparison could fail


def test_process_share_uses_global_candidates(ce_dirs, data):
    """A process collating slots 4..7 of a global batch of 8 gets exactly those rows of the whole batch's
    collation, in-batch candidates included (drawn from all 8 rows, the partial batch's padding excluded)."""
    s1, s2, _ = data
    model = CrossEncoder(ce_dirs[1])
    task = CrossEncoderTask(model, CrossEncoderTrainingArguments(output_dir="unused", seed=5))
    loss = L.MultipleNegativesRankingLoss(model, num_negatives=4)
    prep = task.prepare(Dataset.from_dict({"a": s1[:7], "p": s2[:7], "n": s2[7:14]}), "train", loss, is_dict=False)
    rows = [6, 0, 3, 5, 1, 2, 4]  # a partial batch: slot 7 is padding
    length = task.longest(prep, rows)
    whole = task.collate(prep, rows, 8, length)
    share = task.collate_local(prep, rows, np.arange(4, 8), 8, length)
    for k in ("doc_mask", "mask"):
        np.testing.assert_array_equal(share[k], whole[k][4:])
    for k, v in whole["pairs"].items():
        np.testing.assert_array_equal(share["pairs"][k], v[4:])
    assert not whole["doc_mask"][7].any() and whole["doc_mask"][:7, 0].all()
    # candidates of padded slot 7 are never drawn: each real row has 4 real candidates (14 real others)
    assert (whole["doc_mask"][:7].sum(1) == 1 + 4 + 1).all()
    again = task.collate(prep, rows, 8, length)
    np.testing.assert_array_equal(again["pairs"]["input_ids"], whole["pairs"]["input_ids"])  # seeded
    other = task.collate(prep, rows[::-1], 8, length)
    assert not np.array_equal(other["pairs"]["input_ids"], whole["pairs"]["input_ids"])


def test_default_loss(ce_dirs, data):
    s1, s2, y = data
    for n, cls in ((1, L.BinaryCrossEntropyLoss), (3, L.CrossEntropyLoss)):
        model = CrossEncoder(ce_dirs[n])
        task = CrossEncoderTask(model, CrossEncoderTrainingArguments(output_dir="unused"))
        assert type(task.default_loss()) is cls


# --- bad input ------------------------------------------------------------------------------------
def _bad_cases(data):
    s1, s2, y = data
    pairs = {"a": s1[:4], "b": s2[:4], "label": y[:4]}
    listwise_bad = {"q": s1[:3], "docs": [[s2[0], s2[1]], [s2[2]], [s2[3], s2[4]]], "labels": [[1.0, 0.0], [1.0],
                                                                                               [1.0]]}
    return {
        "columns_vs_loss": (Dataset.from_dict({"a": s1[:4], "b": s2[:4], "c": s2[4:8], "label": y[:4]}),
                            L.BinaryCrossEntropyLoss, {}, "expects exactly 2 input columns"),
        "ragged_labels": (Dataset.from_dict(listwise_bad), L.LambdaLoss, {}, "row 2: 2 documents but 1 labels"),
        "listwise_plain_columns": (Dataset.from_dict(pairs), L.LambdaLoss, {}, "expects (query: str, documents"),
        "list_for_pointwise": (Dataset.from_dict({"q": s1[:3], "docs": [[s2[0]], [s2[1]], [s2[2]]], "label": y[:3]}),
                               L.BinaryCrossEntropyLoss, {}, "takes plain text columns"),
        "per_column_prompts": (Dataset.from_dict(pairs), L.BinaryCrossEntropyLoss, {"prompts": {"a": "query: "}},
                               "prompts cannot be per-column"),
        "nested_prompts": (Dataset.from_dict(pairs), L.BinaryCrossEntropyLoss,
                           {"prompts": {"train": {"a": "query: "}}}, "prompts cannot be per-column"),
        "bce_label_range": (Dataset.from_dict({**pairs, "label": [0.0, 1.0, 5.0, 0.5]}), L.BinaryCrossEntropyLoss,
                            {}, "row 2: BinaryCrossEntropyLoss needs labels in [0, 1]"),
        "empty_text": (Dataset.from_dict({**pairs, "b": [s2[0], "  ", s2[2], s2[3]]}), L.BinaryCrossEntropyLoss, {},
                       "column 'b', row 1: the text is empty"),
        "mnrl_with_label": (Dataset.from_dict(pairs), L.MultipleNegativesRankingLoss, {}, "takes no label"),
        "bi_encoder_loss": (Dataset.from_dict(pairs), "cosent", {}, "is not a CrossEncoder loss"),
    }


@pytest.mark.parametrize("case", ["columns_vs_loss", "ragged_labels", "listwise_plain_columns", "list_for_pointwise",
                                  "per_column_prompts", "nested_prompts", "bce_label_range", "empty_text",
                                  "mnrl_with_label", "bi_encoder_loss"])
def test_bad_input_is_a_clear_error_before_compiling(case, ce_dirs, data, tmp_path, minilm_st, monkeypatch):
    dataset, make_loss, extra, message = _bad_cases(data)[case]
    model = CrossEncoder(ce_dirs[1])
    loss = CoSENTLoss(minilm_st) if make_loss == "cosent" else make_loss(model)
    compiled = []
    monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(1))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        args = CrossEncoderTrainingArguments(output_dir=str(tmp_path / "out"), disable_tqdm=True, **extra)
        CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    assert not compiled and not (tmp_path / "out").exists()


def test_rejects_streams_and_other_models(ce_dirs, data, tmp_path, minilm_st):
    s1, s2, y = data
    stream = IterableDataset.from_generator(lambda: iter([{"a": s1[0], "b": s2[0], "label": y[0]}]))
    with pytest.raises(ValueError, match="does not support an IterableDataset for the `train_dataset`"):
        CrossEncoderTrainer(model=CrossEncoder(ce_dirs[1]), train_dataset=stream)
    with pytest.raises(ValueError, match="trains a stcore_jax.CrossEncoder"):
        CrossEncoderTrainer(model=minilm_st,
                            train_dataset=Dataset.from_dict({"a": s1[:2], "b": s2[:2], "label": y[:2]}))


def test_trainer_surface_multi_dataset_fsdp_accumulation_best_model(ce_dirs, data, tmp_path):
    """The bi-encoder trainer's surface on a CrossEncoder: a dict of datasets with a loss each (pointwise and
    listwise), NO_DUPLICATES batches, gradient accumulation, an FSDP mesh, step evaluation with a CrossEncoder
    evaluator (its metrics logged with the eval_ prefix), checkpoints and load_best_model_at_end."""
    from stcore_jax.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator

    s1, s2, y = data
    model = CrossEncoder(ce_dirs[1])
    train = {"pairs": Dataset.from_dict({"a": s1[:32], "b": s2[:32], "label": y[:32]}),
             "lists": Dataset.from_dict({"q": s1[:16], "docs": [[s2[i], s2[i + 1]][: 1 + i % 2] for i in range(16)],
                                         "labels": [[1.0, 0.0][: 1 + i % 2] for i in range(16)]})}
    losses = {"pairs": L.BinaryCrossEntropyLoss(model), "lists": L.LambdaLoss(model)}
    evaluator = CrossEncoderCorrelationEvaluator(list(zip(s1[32:48], s2[32:48])), y[32:48], name="sts")
    args = CrossEncoderTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=1, gradient_accumulation_steps=2,
        learning_rate=1e-3, mesh_shape={"data": 2, "fsdp": 4}, fsdp_min_size=1024, batch_sampler="no_duplicates",
        eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2, load_best_model_at_end=True,
        metric_for_best_model="eval_sts_spearman", logging_steps=1, length_buckets=1, disable_tqdm=True,
        save_final_model=False)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=train, loss=losses, evaluator=evaluator)
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_sts_spearman" in h]
    assert [h["step"] for h in evals] == [2, 4]
    best = max(evals, key=lambda h: h["eval_sts_spearman"])
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best['step']}")
    # the model holds the best checkpoint's weights: evaluating it again gives the best logged metric
    assert abs(evaluator(trainer.model)["sts_spearman"] - best["eval_sts_spearman"]) <= 1e-6
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert len(steps) == 4 and all(np.isfinite(h["loss"]) for h in steps)
