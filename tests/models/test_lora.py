"""LoRA adapters: counts, PEFT-style init and targeting, the adapted forward against PEFT (lora_alpha / r and
rsLoRA's lora_alpha / sqrt(r)), B=0 is the base model, training moves only the adapters, and the merged export
loads in PyTorch sentence-transformers as a plain model."""

import jax
import numpy as np
import pytest
from datasets import Dataset
from safetensors.numpy import load_file
from sentence_transformers import SentenceTransformer as RefST

import tiny_models
from stcore_jax import LoraConfig, SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.losses import MultipleNegativesRankingLoss
from stcore_jax.models.lora import count
from stcore_jax.sentence_transformer.losses.mnrl import multiple_negatives_ranking_loss

ATOL = 1e-5
D, LAYERS, R = 32, 2, 4  # tiny BERT: hidden 32, 2 layers


@pytest.fixture(scope="module")
def bert_dirs(tmp_path_factory, minilm_path):
    root = tmp_path_factory.mktemp("lora")
    hf = tiny_models.build_hf("bert", str(root / "hf"), str(minilm_path), corpus=[])
    return {"plain": tiny_models.build_st(hf, str(root / "plain"), max_seq_length=32),
            "dense": tiny_models.build_st(hf, str(root / "dense"), dense=24, normalize=True, max_seq_length=32)}


@pytest.fixture(scope="module")
def pairs(stsb_dir):
    from stcore_jax.util import read_sts

    s1, s2, _ = read_sts(stsb_dir / "sts-train.csv")
    return s1[:16], s2[:16]


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


def _adapter_paths(adapters):
    paths = jax.tree_util.tree_flatten_with_path(adapters)[0]
    return sorted({".".join(str(getattr(k, "key", k)) for k in p[:-1]) for p, _ in paths})


def test_counts_init_and_targets(bert_dirs):
    model = SentenceTransformer(bert_dirs["dense"])
    base_total = count(model.params)
    dense_params = D * 24 + 24
    assert model.num_trainable_parameters() == base_total  # no adapter: everything trains
    model.add_adapter(LoraConfig(r=R, lora_alpha=8))
    adapter_params = LAYERS * 2 * R * (D + D)  # query and value in each layer: A [D, r] + B [r, D]
    assert model.num_trainable_parameters() == adapter_params + dense_params  # Dense stays trainable, as in PEFT
    assert model.get_nb_trainable_parameters() == (adapter_params + dense_params, base_total + adapter_params)
    assert model.active_adapters() == ["default"]
    assert _adapter_paths(model.adapters["0"]) == [f"encoder.layer.{i}.attention.self.{m}"
                                                   for i in range(LAYERS) for m in ("query", "value")]
    a = model.adapters["0"]["encoder"]["layer"][0]["attention"]["self"]["query"]
    assert a["lora_A"].shape == (D, R) and a["lora_B"].shape == (R, D)
    assert np.all(np.asarray(a["lora_B"]) == 0)
    bound = 1 / np.sqrt(D)  # PEFT: kaiming_uniform(a=sqrt(5)) on lora_A [r, in] -> U(-1/sqrt(in), 1/sqrt(in))
    assert np.abs(np.asarray(a["lora_A"])).max() <= bound and np.abs(np.asarray(a["lora_A"])).max() > 0.8 * bound
    with pytest.raises(ValueError, match="already has an adapter"):
        model.add_adapter(LoraConfig())

    regex = SentenceTransformer(bert_dirs["plain"])
    regex.add_adapter(LoraConfig(r=2, target_modules=r"encoder\.layer\.0\.attention\.self\.(query|key)"))
    assert _adapter_paths(regex.adapters["0"]) == ["encoder.layer.0.attention.self.key",
                                                   "encoder.layer.0.attention.self.query"]
    names = SentenceTransformer(bert_dirs["plain"])
    names.add_adapter(LoraConfig(r=2, target_modules=["dense"]))  # suffix match: attention output, intermediate, output
    assert len(_adapter_paths(names.adapters["0"])) == 3 * LAYERS
    assert names.num_trainable_parameters() == LAYERS * 2 * (D + D + D + 64 + 64 + D)
    with pytest.raises(ValueError, match="matches no Linear layer.*encoder.layer"):
        SentenceTransformer(bert_dirs["plain"]).add_adapter(LoraConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="lora_dropout"):
        LoraConfig(lora_dropout=0.1)


def test_zero_b_is_the_base_model_and_export_is_merged(bert_dirs, sentences, tmp_path):
    model = SentenceTransformer(bert_dirs["dense"])
    base = model.encode(sentences)
    model.add_adapter(LoraConfig(r=R, lora_alpha=16))
    np.testing.assert_array_equal(model.encode(sentences), base)  # B = 0: exactly the base model

    model.delete_adapter()
    model.add_adapter(LoraConfig(r=R, lora_alpha=16, init_lora_weights=False), seed=1)
    adapted = model.encode(sentences)
    assert np.abs(adapted - base).max() > 1e-2
    out = tmp_path / "merged"
    model.save_pretrained(str(out))
    tensors = load_file(str(out / "model.safetensors"))
    assert not any("lora" in k for k in tensors) and "encoder.layer.0.attention.self.query.weight" in tensors
    np.testing.assert_allclose(RefST(str(out), device="cpu").encode(sentences), adapted, atol=ATOL, rtol=0)

    model.disable_adapters()
    np.testing.assert_array_equal(model.encode(sentences), base)
    assert model.num_trainable_parameters() == count(model.params)
    model.enable_adapters()
    model.merge_and_unload()
    assert model.adapters is None and "lora" not in model.params
    np.testing.assert_allclose(model.encode(sentences), adapted, atol=ATOL, rtol=0)


PEFT_TARGETS = ["query", "value", "intermediate.dense", "output.dense"]  # [D, D], [D, 2D] and [2D, D] Linears


@pytest.mark.parametrize("use_rslora", [False, True])
def test_scale_matches_peft(bert_dirs, sentences, use_rslora):
    """The same nonzero A, B in PEFT and here give the same encodings, so the adapted weight is W + scale * B A
    with PEFT's scale (lora_alpha / r = 3, or lora_alpha / sqrt(r) = 6 with rsLoRA). Control: PEFT under the
    other scale is far from ours."""
    import peft  # the `test` extra
    import torch

    alpha = 12
    other_scale = alpha / R if use_rslora else alpha / np.sqrt(R)
    ref = RefST(bert_dirs["plain"], device="cpu")
    base = ref.encode(sentences)
    # PEFT's own injection (sentence-transformers' add_adapter goes through transformers, which wants peft >= 0.22).
    peft.inject_adapter_in_model(peft.LoraConfig(r=R, lora_alpha=alpha, target_modules=PEFT_TARGETS,
                                                 use_rslora=use_rslora), ref[0].auto_model)
    layers = {n: m for n, m in ref[0].auto_model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)}
    model = SentenceTransformer(bert_dirs["plain"])
    model.add_adapter(LoraConfig(r=R, lora_alpha=alpha, target_modules=PEFT_TARGETS, use_rslora=use_rslora,
                                 init_lora_weights=False), seed=3)
    adapters = model.adapters["0"]
    assert _adapter_paths(adapters) == sorted(layers)  # same targeting rules: 4 Linears in each layer
    with torch.no_grad():
        for name, layer in layers.items():
            pair = adapters
            for k in name.split("."):
                pair = pair[int(k) if k.isdigit() else k]
            layer.lora_A["default"].weight.copy_(torch.tensor(np.asarray(pair["lora_A"]).T))  # [r, in]
            layer.lora_B["default"].weight.copy_(torch.tensor(np.asarray(pair["lora_B"]).T))  # [out, r]
    expected = ref.encode(sentences)
    ours = model.encode(sentences)
    assert np.abs(expected - base).max() > 0.1  # the adapter matters
    np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=0)

    for layer in layers.values():  # control: the same A, B under the other scale
        layer.scaling["default"] = other_scale
    assert np.abs(ref.encode(sentences) - ours).max() > 0.1


def _mnrl(model, anchors, positives):
    a = model.encode(anchors, convert_to_tensor=True)
    p = model.encode(positives, convert_to_tensor=True)
    return float(multiple_negatives_ranking_loss(a, p))


def test_trainer_trains_only_adapters(bert_dirs, pairs, tmp_path, caplog):
    anchors, positives = pairs
    model = SentenceTransformer(bert_dirs["plain"])
    model.add_adapter(LoraConfig(r=R, lora_alpha=8))
    base_before = _leaves(model.params["0"])
    loss_before = _mnrl(model, anchors, positives)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=1, learning_rate=3e-2,
        warmup_steps=0, logging_steps=1, save_strategy="no", disable_tqdm=True, save_final_model=False)
    loss = MultipleNegativesRankingLoss(model, gather_across_devices=True)  # in-batch negatives over all 8 shards
    trainer = SentenceTransformerTrainer(model=model, args=args, loss=loss,
                                         train_dataset=Dataset.from_dict({"anchor": anchors, "positive": positives}))
    adapter_params = LAYERS * 2 * R * (D + D)
    assert trainer.get_num_trainable_parameters() == adapter_params
    with caplog.at_level("INFO", logger="stcore_jax.training.trainer"):
        trainer.train()
    assert f"Trainable parameters: {adapter_params} of" in caplog.text

    for before, after in zip(base_before, _leaves(model.params["0"])):
        np.testing.assert_array_equal(before.view(np.uint32), after.view(np.uint32))  # bitwise
    b = np.asarray(model.adapters["0"]["encoder"]["layer"][1]["attention"]["self"]["value"]["lora_B"])
    assert np.abs(b).max() > 1e-4  # started at zero
    # The frozen base has no optimizer state: Adam's two moments cover exactly the adapters.
    opt_elems = sum(np.size(x) for x in jax.tree_util.tree_leaves(trainer._train_state["opt_state"]) if np.ndim(x) > 0)
    assert opt_elems == 2 * adapter_params
    loss_after = _mnrl(model, anchors, positives)
    assert loss_after < loss_before - 0.05, (loss_before, loss_after)

    out = tmp_path / "export"
    trainer.save_model(str(out))
    np.testing.assert_allclose(RefST(str(out), device="cpu").encode(anchors), model.encode(anchors), atol=ATOL, rtol=0)


def test_modernbert_default_target_is_wqkv(minilm_path, tmp_path, sentences):
    hf = tiny_models.build_modernbert(str(tmp_path / "hf"), str(minilm_path), local_attention=8, num_hidden_layers=2)
    st = tiny_models.build_st(hf, str(tmp_path / "st"), pooling_mode="mean", normalize=True)
    model = SentenceTransformer(st)
    model.add_adapter(LoraConfig(r=2, init_lora_weights=False))
    assert _adapter_paths(model.adapters["0"]) == ["layers.0.attn.Wqkv", "layers.1.attn.Wqkv"]
    assert model.num_trainable_parameters() == 2 * 2 * (D + 3 * D)
    model.save_pretrained(str(tmp_path / "merged"))
    ref = RefST(str(tmp_path / "merged"), device="cpu", model_kwargs={"attn_implementation": "eager"})
    np.testing.assert_allclose(ref.encode(sentences), model.encode(sentences), atol=ATOL, rtol=0)
