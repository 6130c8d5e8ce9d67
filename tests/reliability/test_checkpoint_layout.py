"""The on-disk format of a checkpoint, pinned: the files of ``checkpoint-N/``, the keys of
``trainer_state.json`` (and of a ``log_history`` entry, and of the stream position of a streaming run) and
the tree of the orbax ``state/``. A checkpoint written before a change of the trainer must resume after it,
so these change only on purpose (and then with a migration)."""

import json
import os

import orbax.checkpoint as ocp
import pytest
from datasets import Dataset

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.losses import CoSENTLoss
from stcore_jax.util import read_sts

N_ROWS = 48  # global batch 16 (8 devices x 2): 3 steps per epoch, so the checkpoint at step 2 is mid-epoch

# The sentence-transformers export (a tiny BERT + mean pooling), the orbax state and the trainer state.
CHECKPOINT_FILES = [
    "1_Pooling/",
    "1_Pooling/config.json",
    "config.json",
    "config_sentence_transformers.json",
    "model.safetensors",
    "modules.json",
    "sentence_bert_config.json",
    "state/",
    "tokenizer.json",
    "tokenizer_config.json",
    "trainer_state.json",
]
# What orbax (StandardCheckpointer, OCDBT, one process) writes into state/; its data files have hashed names,
# so the files under a ``d/`` directory are written as ``d/*``.
STATE_FILES = [
    "_CHECKPOINT_METADATA",
    "_METADATA",
    "_sharding",
    "array_metadatas/",
    "array_metadatas/process_0",
    "commit_success.txt",
    "d/",
    "d/*",
    "manifest.ocdbt",
    "ocdbt.process_0/",
    "ocdbt.process_0/d/",
    "ocdbt.process_0/d/*",
    "ocdbt.process_0/manifest.ocdbt",
]
TRAINER_STATE_KEYS = {"global_step", "epoch", "epoch_index", "batches_in_epoch", "log_history", "best_metric",
                      "best_model_checkpoint", "data_seed", "global_batch"}
LOG_KEYS = {"loss", "grad_norm", "learning_rate", "epoch", "samples_per_second", "tokens_per_second",
            "skipped_nonfinite", "step"}
STREAM_KEYS = {"epoch", "consumed", "steps"}  # training/stream.py StreamPosition
# The state tree, with each parameter tree (the model's, as the optimizer mirrors it) cut at "model".
# opt_state = chain(clip_by_global_norm: empty, adamw = chain(scale_by_adam: count/mu/nu,
# add_decayed_weights (masked): inner_state, scale_by_schedule: count)).
STATE_TREE = {
    ("trainable", "model"), ("trainable", "loss"), ("step",), ("skipped",),
    ("opt_state", "0"),
    ("opt_state", "1", "0", "count"),
    ("opt_state", "1", "0", "mu", "model"), ("opt_state", "1", "0", "mu", "loss"),
    ("opt_state", "1", "0", "nu", "model"), ("opt_state", "1", "0", "nu", "loss"),
    ("opt_state", "1", "1", "inner_state"),
    ("opt_state", "1", "2", "count"),
}


def _walk(root):
    """Sorted relative paths under ``root`` (directories with a trailing ``/``; files under a ``d/``
    directory, orbax's hashed data files, as ``d/*``)."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel + "/"
        out.update(prefix + d + "/" for d in dirnames)
        if os.path.basename(dirpath) == "d" and filenames:
            out.add(prefix + "*")
        else:
            out.update(prefix + f for f in filenames)
    return sorted(out)


def _tree_paths(tree, prefix=()):
    """Paths to the leaves of a tree of dicts and lists (an empty dict or list, or None, is a leaf)."""
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            yield from _tree_paths(v, prefix + (str(k),))
    elif isinstance(tree, (list, tuple)) and tree:
        for i, v in enumerate(tree):
            yield from _tree_paths(v, prefix + (str(i),))
    else:
        yield prefix


def _train(model_dir, rows, out_dir, stream):
    model = SentenceTransformer(model_dir)
    ds = Dataset.from_dict(rows)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir), max_steps=2, save_steps=2, logging_steps=1, per_device_train_batch_size=2,
        disable_tqdm=True, save_final_model=False, seed=3, length_buckets=(32,))  # one bucket: one compile
    SentenceTransformerTrainer(model=model, args=args, loss=CoSENTLoss(model),
                               train_dataset=ds.to_iterable_dataset(num_shards=2) if stream else ds).train()
    return str(out_dir)


@pytest.fixture(scope="module")
def rows(stsb_dir):
    s1, s2, sc = read_sts(stsb_dir / "sts-train.csv")
    return {"sentence1": s1[:N_ROWS], "sentence2": s2[:N_ROWS], "score": [x / 5 for x in sc[:N_ROWS]]}


@pytest.fixture(scope="module")
def map_run(tiny_bert, rows, tmp_path_factory):
    return _train(tiny_bert, rows, tmp_path_factory.mktemp("layout_map"), stream=False)


def test_checkpoint_files(map_run):
    assert sorted(os.listdir(map_run)) == ["checkpoint-2", "logs.jsonl"]
    ckpt = os.path.join(map_run, "checkpoint-2")
    walked = _walk(ckpt)
    state = [p for p in walked if p.startswith("state/") and p != "state/"]
    assert [p for p in walked if p not in state] == CHECKPOINT_FILES
    assert [p[len("state/"):] for p in state] == STATE_FILES


def test_trainer_state_keys(map_run):
    ts = json.load(open(os.path.join(map_run, "checkpoint-2", "trainer_state.json")))
    assert set(ts) == TRAINER_STATE_KEYS
    assert (ts["global_step"], ts["epoch_index"], ts["batches_in_epoch"], ts["global_batch"]) == (2, 0, 2, 16)
    assert [e["step"] for e in ts["log_history"]] == [1, 2]
    for entry in ts["log_history"]:
        assert set(entry) == LOG_KEYS


def test_state_tree(map_run):
    tree = ocp.StandardCheckpointer().metadata(os.path.join(map_run, "checkpoint-2", "state")).item_metadata
    assert set(tree) == {"trainable", "opt_state", "step", "skipped"} and set(tree["trainable"]) == {"model", "loss"}
    paths = list(_tree_paths(dict(tree)))
    cut = {p[: p.index("model") + 1] if "model" in p else p for p in paths}
    assert cut == STATE_TREE
    model = sorted(p[2:] for p in paths if p[:2] == ("trainable", "model"))
    assert len(model) > 10  # the BERT weights: the same paths in the parameters and in both Adam moments
    for moment in ("mu", "nu"):
        assert sorted(p[5:] for p in paths if p[:5] == ("opt_state", "1", "0", moment, "model")) == model
    assert (tree["step"].shape, str(tree["step"].dtype)) == ((), "int32")
    assert (tree["skipped"].shape, str(tree["skipped"].dtype)) == ((), "int32")


def test_streaming_checkpoint(tiny_bert, rows, map_run, tmp_path):
    out = _train(tiny_bert, rows, tmp_path, stream=True)
    assert _walk(os.path.join(out, "checkpoint-2")) == _walk(os.path.join(map_run, "checkpoint-2"))
    ts = json.load(open(os.path.join(out, "checkpoint-2", "trainer_state.json")))
    assert set(ts) == TRAINER_STATE_KEYS | {"stream"}
    assert set(ts["stream"]) == STREAM_KEYS
    assert ts["stream"] == {"epoch": 0, "consumed": {"train": 32}, "steps": 2}  # a lone dataset is named "train"
    for entry in ts["log_history"]:
        assert set(entry) == LOG_KEYS
