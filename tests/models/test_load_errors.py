"""Bad model directories fail with clear errors before anything is compiled."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from stcore_jax import SentenceTransformer


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SentenceTransformer(str(tmp_path / "nope"))


def test_hub_id_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="offline.*local directory"):
        SentenceTransformer("some-org/some-model-that-is-not-cached")


def test_unsupported_architecture_lists_supported(tiny_dirs, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(tiny_dirs["bert"]["hf"], dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"gpt2.*bert.*distilbert.*mpnet.*roberta"):
        SentenceTransformer(str(dst))


def test_missing_weights_file(tiny_dirs, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(tiny_dirs["bert"]["hf"], dst)
    (dst / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        SentenceTransformer(str(dst))


def test_wrong_weight_shape_names_key_and_shapes(tiny_dirs, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(tiny_dirs["bert"]["hf"], dst)
    tensors = load_file(dst / "model.safetensors")
    key = "encoder.layer.1.attention.self.query.weight"
    tensors[key] = np.zeros((32, 31), np.float32)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.attention\.self\.query\.weight.*\(32, 31\).*\(32, 32\)"):
        SentenceTransformer(str(dst))


def test_missing_weight_key(tiny_dirs, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(tiny_dirs["bert"]["hf"], dst)
    tensors = load_file(dst / "model.safetensors")
    del tensors["embeddings.LayerNorm.weight"]
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="embeddings.LayerNorm.weight"):
        SentenceTransformer(str(dst))


def test_unknown_module_type(tiny_dirs, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(tiny_dirs["bert"]["dense"], dst)
    mods = json.loads((dst / "modules.json").read_text())
    mods[1]["type"] = "my_package.FancyPooling"
    (dst / "modules.json").write_text(json.dumps(mods))
    with pytest.raises(ValueError, match="FancyPooling.*supported"):
        SentenceTransformer(str(dst))
