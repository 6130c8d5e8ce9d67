"""CrossEncoder training modes: the bfloat16 view (float32 master weights, float32 scores), gradient checkpointing
(same scores and gradients), and LoRA on the ``*ForSequenceClassification`` model against PEFT (``get_peft_model``
with ``task_type="SEQ_CLS"``: the classifier a trained copy, ``modules_to_save``), on tiny random models."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers as tf

import tiny_models
from stcore_jax import CrossEncoder, LoraConfig
from stcore_jax.io.hf_keys import params_to_hf
from stcore_jax.models.lora import SAVED_KEY, count
from stcore_jax.training.optim import freeze_params
from stcore_jax.util import read_sts

ATOL = 1e-5
IDENTITY = "torch.nn.modules.linear.Identity"
R, ALPHA = 4, 12
TARGETS = ["query", "value", "dense"]  # attention, feed-forward, BERT's pooler; RoBERTa's classifier.dense excluded


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, minilm_path, stsb_dir):
    """arch -> a random, perturbed ``*ForSequenceClassification`` directory (BERT: 2 labels, RoBERTa: 1);
    "pairs" -> STS-B train pairs plus odd ones (empty, unicode, long)."""
    s1, s2, _ = read_sts(stsb_dir / "sts-train.csv")
    out = {"pairs": list(zip(s1[:24], s2[:24])) + list(zip(tiny_models.SENTENCES, tiny_models.SENTENCES[::-1]))}
    for arch, n in (("bert", 2), ("roberta", 1)):
        plain = str(tmp_path_factory.mktemp(arch) / "plain")
        tiny_models.build_hf(arch, plain, str(minilm_path), s1[:2000] + s2[:2000])
        torch.manual_seed(n)
        model = tf.AutoModelForSequenceClassification.from_config(tf.AutoConfig.from_pretrained(plain, num_labels=n))
        with torch.no_grad():  # head and norms away from their init, so that a wrong mapping shows
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        path = str(tmp_path_factory.mktemp(arch) / "cls")
        model.save_pretrained(path)
        tf.AutoTokenizer.from_pretrained(plain).save_pretrained(path)
        out[arch] = path
    return out


def _features(model, pairs):
    return {k: jnp.asarray(v) for k, v in model.preprocess(pairs).items()}


def _loss(model):
    """A scalar of the scores, as a loss would take them (float32)."""
    def f(params, feats, key=None):
        scores = model.forward(params, feats, dropout_key=key)["scores"]
        assert scores.dtype == jnp.float32
        return jnp.sum(jnp.tanh(scores) * jnp.arange(1, scores.size + 1).reshape(scores.shape))

    return f


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


# -- bfloat16 -------------------------------------------------------------------------------------------------------
def test_bf16_view(dirs):
    model = CrossEncoder(dirs["bert"], length_buckets=(128,))
    pairs = dirs["pairs"]
    before = model.predict(pairs, activation_fn=IDENTITY)
    assert model.with_compute_dtype(jnp.float32) is model
    view = model.with_compute_dtype(jnp.bfloat16)
    assert view is not model and view.input_module is not model.input_module
    assert model.input_module.config.dtype == jnp.float32 and view.input_module.config.dtype == jnp.bfloat16
    assert view.params["0"] is model.params["0"]  # master weights shared, float32
    assert all(x.dtype == np.float32 for x in _leaves(model.params))

    feats = _features(model, pairs)
    jaxpr = str(jax.make_jaxpr(lambda p, f: view.forward(p, f)["scores"])(model.params, feats))
    assert "bf16" in jaxpr and "dot_general" in jaxpr  # the matmuls really run in bfloat16
    assert "bf16" not in str(jax.make_jaxpr(lambda p, f: model.forward(p, f)["scores"])(model.params, feats))
    full = np.asarray(jax.jit(model.forward)(model.params, feats)["scores"])
    half = jax.jit(view.forward)(model.params, feats)["scores"]
    assert half.dtype == jnp.float32  # the head's logits come out float32, as the losses take them
    half = np.asarray(half)
    # bfloat16 keeps 8 significant bits (relative rounding 2**-9 per op); through 2 layers and the head the
    # scores move by about 1% of their scale (measured 1.0e-2), far below the spread between pairs.
    scale = np.abs(full).max()
    np.testing.assert_allclose(half, full, rtol=0, atol=2e-2 * scale)
    assert np.abs(half - full).max() > 1e-4 * scale  # bf16 rounding is there: not the float32 model
    assert np.ptp(full) > 0.5 * scale  # the comparison has teeth: scores differ between pairs

    g32 = jax.jit(jax.grad(_loss(model)))(model.params, feats)
    g16 = jax.jit(jax.grad(_loss(view)))(model.params, feats)
    flat32, flat16 = (np.concatenate([x.ravel() for x in _leaves(g)]) for g in (g32, g16))
    assert all(x.dtype == np.float32 and np.isfinite(x).all() for x in _leaves(g16))
    cosine = flat16 @ flat32 / (np.linalg.norm(flat16) * np.linalg.norm(flat32))
    assert cosine > 0.99, cosine  # the same gradient, up to bf16 rounding

    assert all(x.dtype == np.float32 for x in _leaves(model.params))
    assert model.input_module.config.dtype == jnp.float32
    np.testing.assert_array_equal(model.predict(pairs, activation_fn=IDENTITY), before)  # the model is unchanged
    half_predict = view.predict(pairs, activation_fn=IDENTITY)
    assert half_predict.dtype == np.float32
    np.testing.assert_allclose(half_predict, before, rtol=0, atol=2e-2 * np.abs(before).max())


# -- gradient checkpointing -----------------------------------------------------------------------------------------
def test_gradient_checkpointing_same_scores_and_gradients(dirs):
    model = CrossEncoder(dirs["roberta"])
    feats = _features(model, dirs["pairs"][-8:])
    keys = jax.random.split(jax.random.key(1), feats["input_ids"].shape[0])  # dropout on: remat replays the masks

    def remats(m):
        """(remats, scans) in the traced forward: RoBERTa's layers share one structure, so checkpointing them is one
        remat'd body scanned over the stacked layers (models/layers.py run_layers)."""
        traced = str(jax.make_jaxpr(lambda p: m.forward(p, feats, dropout_key=keys)["scores"])(model.params))
        return traced.count("remat"), traced.count(f"length={model.input_module.config.num_hidden_layers}")

    def run():
        scores = jax.jit(lambda p: model.forward(p, feats, dropout_key=keys)["scores"])(model.params)
        grads = jax.jit(jax.grad(_loss(model)))(model.params, feats, keys)
        return np.asarray(scores), _leaves(grads)

    s0, g0 = run()
    assert remats(model)[0] == 0
    model.input_module.set_gradient_checkpointing(True)
    assert remats(model) == (1, 1)  # one checkpointed layer body, scanned over the layers
    s1, g1 = run()
    np.testing.assert_allclose(s1, s0, rtol=0, atol=1e-6)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert max(np.abs(g).max() for g in g0) > 1e-3  # gradients are not trivially zero

    view = model.with_compute_dtype(jnp.bfloat16)  # the bf16 view keeps the setting
    assert view.input_module.head.gradient_checkpointing
    assert remats(view) == (1, 1)
    model.input_module.set_gradient_checkpointing(False)
    assert remats(model)[0] == 0 and remats(view) == (1, 1)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert", "mpnet", "modernbert", "electra"])
def test_every_head_traces_in_bf16_with_remat(model_type):
    """Each architecture's heads (classification and masked-LM) rebuilt in bfloat16 with per-layer remat: the
    params still fit the graph, every encoder layer is checkpointed, the logits come out float32 (traced only).
    Encoders whose layers share one structure scan one remat'd body over the stacked layers; ModernBERT (global and
    local attention layers) keeps one remat per layer."""
    from stcore_jax.models.heads import build_head_model

    small = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=40)
    ids_in_vocab = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    hf = tf.AutoConfig.for_model(model_type, **small, **(ids_in_vocab if model_type == "modernbert" else {})).to_dict()
    ids = jnp.ones((2, 8), jnp.int32)
    for kind in ("sequence_classification", "masked_lm"):
        head = build_head_model(kind, hf)
        fast = head.with_graph(dtype=jnp.bfloat16, gradient_checkpointing=True)
        assert head.config.dtype == jnp.float32 and not head.gradient_checkpointing  # unchanged
        jaxpr = jax.make_jaxpr(lambda p: fast.apply(p, ids, jnp.ones_like(ids), dropout_key=jax.random.key(0)))
        traced = jaxpr(head.params)
        assert traced.out_avals[0].dtype == jnp.float32 and "bf16" in str(traced)
        text = str(traced)
        if model_type == "modernbert":
            assert text.count("remat") == head.config.num_hidden_layers, (model_type, kind)
        else:
            assert text.count("remat") == 1 and f"length={head.config.num_hidden_layers}" in text, (model_type, kind)


# -- LoRA against PEFT ----------------------------------------------------------------------------------------------
def _peft_lora_layers(peft_model):
    import peft

    prefix = "base_model.model."
    return {n.removeprefix(prefix): m for n, m in peft_model.named_modules()
            if isinstance(m, peft.tuners.lora.LoraLayer)}


def _get(tree, dotted):
    for k in dotted.split("."):
        tree = tree[int(k) if k.isdigit() else k]
    return tree


def _lora_paths(adapters):
    paths = jax.tree_util.tree_flatten_with_path(adapters)[0]
    return sorted({".".join(str(getattr(k, "key", k)) for k in p[:-1]) for p, _ in paths
                   if getattr(p[-1], "key", None) in ("lora_A", "lora_B")})


def _peft_logits(peft_model, tokenizer, pairs):
    enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, truncation="longest_first",
                    return_tensors="pt")
    with torch.no_grad():
        logits = peft_model(**enc).logits.numpy()
    return logits[:, 0] if logits.shape[1] == 1 else logits


@pytest.mark.parametrize("arch", ["bert", "roberta"])
def test_lora_matches_peft_seq_cls(arch, dirs):
    """The same A, B and classifier copy in PEFT (get_peft_model, task_type="SEQ_CLS") and here give the same
    scores; so do the adapters disabled (the original head) and merged. The classifier is a trained copy
    (modules_to_save), the pooler and encoder frozen; the trainable counts are PEFT's."""
    import peft

    pairs = dirs["pairs"]
    ref_base = tf.AutoModelForSequenceClassification.from_pretrained(dirs[arch]).eval()
    tokenizer = tf.AutoTokenizer.from_pretrained(dirs[arch])
    ref = peft.get_peft_model(ref_base, peft.LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS,
                                                        task_type="SEQ_CLS")).eval()
    layers = _peft_lora_layers(ref)

    model = CrossEncoder(dirs[arch], length_buckets=(128,))
    base = model.predict(pairs, activation_fn=IDENTITY)
    model.add_adapter(LoraConfig(r=R, lora_alpha=ALPHA, target_modules=TARGETS, task_type="SEQ_CLS",
                                 init_lora_weights=False), seed=3)
    adapters = model.adapters["0"]
    assert _lora_paths(adapters) == sorted(layers)  # same targets; RoBERTa's classifier.dense left out, as PEFT
    assert sorted(adapters["classifier"]) == [SAVED_KEY]
    assert model.get_nb_trainable_parameters() == ref.get_nb_trainable_parameters()

    # a trained-looking classifier copy, different from the original, so that using the wrong one shows
    rng = np.random.default_rng(0)
    copy = jax.tree_util.tree_map(lambda x: x + 0.1 * rng.standard_normal(x.shape).astype(np.float32),
                                  adapters["classifier"][SAVED_KEY])
    model.params = {**model.params, "lora": {"0": {**adapters, "classifier": {SAVED_KEY: copy}}}}
    with torch.no_grad():
        for name, layer in layers.items():
            pair = _get(model.adapters["0"], name)
            layer.lora_A["default"].weight.copy_(torch.tensor(np.asarray(pair["lora_A"]).T))  # [r, in]
            layer.lora_B["default"].weight.copy_(torch.tensor(np.asarray(pair["lora_B"]).T))  # [out, r]
        saved = ref.base_model.model.classifier.modules_to_save["default"]
        hf = params_to_hf({"classifier": copy})  # {"classifier.weight": [out, in], ...}
        saved.load_state_dict({k.removeprefix("classifier."): torch.tensor(v) for k, v in hf.items()})

    adapted = model.predict(pairs, activation_fn=IDENTITY)
    expected = _peft_logits(ref, tokenizer, pairs)
    assert np.abs(expected - base).max() > 0.1  # the adapters and the copy matter
    np.testing.assert_allclose(adapted, expected, atol=ATOL, rtol=0)

    model.disable_adapters()  # the base model with its original classifier, as PEFT's disable_adapter
    with ref.disable_adapter():
        np.testing.assert_allclose(model.predict(pairs, activation_fn=IDENTITY),
                                   _peft_logits(ref, tokenizer, pairs), atol=ATOL, rtol=0)
    np.testing.assert_array_equal(model.predict(pairs, activation_fn=IDENTITY), base)
    model.enable_adapters()

    model.merge_and_unload()  # the copy replaces the classifier; PEFT's merge_and_unload does the same
    assert model.adapters is None
    merged_ref = ref.merge_and_unload().eval()
    np.testing.assert_allclose(model.predict(pairs, activation_fn=IDENTITY),
                               _peft_logits(merged_ref, tokenizer, pairs), atol=ATOL, rtol=0)
    np.testing.assert_allclose(model.predict(pairs, activation_fn=IDENTITY), adapted, atol=ATOL, rtol=0)


def test_lora_trains_adapters_and_head_only(dirs, caplog):
    """Gradients reach the adapters and the classifier copy, never the frozen base; the trainer's freeze
    (``freeze_params``) moves exactly those; the bf16 view runs with adapters; task_type None freezes the head
    (PEFT's inject_adapter_in_model, with a warning) and explicit modules_to_save matches SEQ_CLS."""
    pairs = dirs["pairs"][:8]
    model = CrossEncoder(dirs["bert"])
    model.add_adapter(LoraConfig(r=R, lora_alpha=ALPHA, task_type="SEQ_CLS"), seed=5)
    assert model.frozen_param_keys() == {"0"}
    feats = _features(model, pairs)
    grads = jax.jit(jax.grad(_loss(model)))(model.params, feats)
    assert all(np.all(g == 0) for g in _leaves(grads["0"]))  # the base is frozen (stop_gradient)
    head = grads["lora"]["0"]["classifier"][SAVED_KEY]
    assert np.abs(np.asarray(head["kernel"])).max() > 1e-3  # the head trains
    b = _get(grads["lora"]["0"], "bert.encoder.layer.1.attention.self.value")["lora_B"]
    assert np.abs(np.asarray(b)).max() > 1e-4  # so do the adapters (B = 0 at init: A gets no gradient yet)

    trainable = {"model": model.params, "loss": {}}
    tx = freeze_params(optax.sgd(0.1), trainable, model.frozen_param_keys())
    updates, _ = tx.update({"model": grads, "loss": {}}, tx.init(trainable), trainable)
    assert all(np.all(u == 0) for u in _leaves(updates["model"]["0"]))
    assert np.abs(np.asarray(updates["model"]["lora"]["0"]["classifier"][SAVED_KEY]["kernel"])).max() > 1e-4

    view = model.with_compute_dtype(jnp.bfloat16)
    full = np.asarray(jax.jit(model.forward)(model.params, feats)["scores"])
    half = np.asarray(jax.jit(view.forward)(model.params, feats)["scores"])
    np.testing.assert_allclose(half, full, rtol=0, atol=2e-2 * np.abs(full).max())

    explicit = CrossEncoder(dirs["bert"])
    explicit.add_adapter(LoraConfig(r=R, lora_alpha=ALPHA, modules_to_save=["classifier"]))
    assert explicit.get_nb_trainable_parameters() == model.get_nb_trainable_parameters()
    frozen_head = CrossEncoder(dirs["bert"])
    with caplog.at_level(logging.WARNING, logger="stcore_jax.models.lora"):
        frozen_head.add_adapter(LoraConfig(r=R, lora_alpha=ALPHA))
    assert "classification head stays frozen" in caplog.text
    assert "classifier" not in frozen_head.adapters["0"]
    assert frozen_head.num_trainable_parameters() == count(frozen_head.adapters)
    with pytest.raises(ValueError, match="modules_to_save.*match no module"):
        CrossEncoder(dirs["bert"]).add_adapter(LoraConfig(modules_to_save=["head"]))
    with pytest.raises(ValueError, match="list of module names"):
        LoraConfig(modules_to_save="classifier")
    with pytest.raises(NotImplementedError, match="LoRA"):  # no adapter export for CrossEncoders yet
        model.save_pretrained("unused")
