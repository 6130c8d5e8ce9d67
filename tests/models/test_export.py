"""save_pretrained: loads in PyTorch sentence-transformers and transformers, round-trips bitwise, never half-writes."""

import os

import jax
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer as RefST

from stcore_jax import SentenceTransformer
from tiny_models import SENTENCES


def _leaves(params):
    return jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]


def _assert_bitwise_equal(p1, p2):
    l1, l2 = _leaves(p1), _leaves(p2)
    assert [k for k, _ in l1] == [k for k, _ in l2]
    for (k, a), (_, b) in zip(l1, l2):
        assert np.asarray(a).dtype == np.asarray(b).dtype, k
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(k))


def _roundtrip(src, dst):
    from transformers import AutoModel

    ours = SentenceTransformer(src)
    ours.save_pretrained(dst)
    # PyTorch sentence-transformers loads the export and gives the same embeddings.
    ref = RefST(dst, device="cpu")
    np.testing.assert_allclose(ref.encode(SENTENCES), ours.encode(SENTENCES), atol=1e-5, rtol=0)
    # transformers loads the encoder with no missing or unexpected keys.
    _, info = AutoModel.from_pretrained(dst, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    # stcore_jax loads it back bit for bit.
    _assert_bitwise_equal(SentenceTransformer(dst).params, ours.params)
    return ours


def test_minilm_roundtrip(minilm_path, tmp_path):
    dst = str(tmp_path / "export")
    _roundtrip(str(minilm_path), dst)
    import json

    modules = json.load(open(os.path.join(dst, "modules.json")))
    assert [m["type"] for m in modules] == [
        "sentence_transformers.models.Transformer",
        "sentence_transformers.models.Pooling",
        "sentence_transformers.models.Normalize",
    ]
    assert [m["path"] for m in modules] == ["", "1_Pooling", "2_Normalize"]
    pool = json.load(open(os.path.join(dst, "1_Pooling", "config.json")))
    assert pool == {"word_embedding_dimension": 384, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
                    "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False}
    assert json.load(open(os.path.join(dst, "sentence_bert_config.json"))) == {"max_seq_length": 256, "do_lower_case": False}
    assert os.path.isfile(os.path.join(dst, "README.md"))
    from safetensors import safe_open

    with safe_open(os.path.join(dst, "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}


@pytest.mark.parametrize("arch", ["bert", "mpnet", "roberta", "xlm-roberta", "distilbert"])
def test_tiny_roundtrip_with_dense(arch, tiny_dirs, tmp_path):
    _roundtrip(tiny_dirs[arch]["dense"], str(tmp_path / "export"))


def test_all_pooling_modes_roundtrip(tiny_dirs, tmp_path):
    _roundtrip(tiny_dirs["bert"]["modes"], str(tmp_path / "export"))


def test_export_replaces_another_model_without_mixing(tiny_dirs, tmp_path):
    dst = tmp_path / "export"
    SentenceTransformer(tiny_dirs["bert"]["dense"]).save_pretrained(str(dst))
    assert (dst / "2_Dense").is_dir()
    SentenceTransformer(tiny_dirs["roberta"]["modes"]).save_pretrained(str(dst))
    assert not (dst / "2_Dense").exists() and not (dst / "3_Normalize").exists()
    assert not (dst / "vocab.txt").exists()  # the BERT tokenizer's file is gone, not mixed in
    np.testing.assert_allclose(RefST(str(dst), device="cpu").encode(SENTENCES),
                               SentenceTransformer(tiny_dirs["roberta"]["modes"]).encode(SENTENCES), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging leftovers


def test_failed_export_leaves_target_untouched(tiny_dirs, tmp_path, monkeypatch):
    dst = tmp_path / "export"
    SentenceTransformer(tiny_dirs["bert"]["dense"]).save_pretrained(str(dst))
    before = {p: p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    model = SentenceTransformer(tiny_dirs["roberta"]["dense"])

    def boom(path):
        raise OSError("disk full")

    monkeypatch.setattr(model.modules[2], "save", boom)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(str(dst))
    after = {p: p.read_bytes() for p in dst.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_export_refuses_non_model_directory(tiny_dirs, tmp_path):
    dst = tmp_path / "notes"
    dst.mkdir()
    (dst / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="non-empty directory"):
        SentenceTransformer(tiny_dirs["bert"]["dense"]).save_pretrained(str(dst))
    assert sorted(p.name for p in dst.iterdir()) == ["todo.txt"]
