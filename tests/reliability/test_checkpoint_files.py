"""What a killed process leaves on disk, and how the next start tidies it (no training here).

Kills are simulated by raising from inside the write/delete at the point a ``kill -9`` could land;
the subprocess tests (test_crash_and_preemption.py) do it for real.
"""

import json
import os
import shutil

import pytest

from stcore_jax import SentenceTransformer
from stcore_jax.base import save as export
from stcore_jax.training import checkpoint as ckpt


def _fake_checkpoint(path, complete=True):
    os.makedirs(os.path.join(path, "state"))
    open(os.path.join(path, "model.safetensors"), "w").close()
    if complete:
        json.dump({"global_step": 0}, open(os.path.join(path, "trainer_state.json"), "w"))


def test_clean_partials_promotes_complete_and_removes_the_rest(tmp_path):
    out = str(tmp_path)
    _fake_checkpoint(f"{out}/checkpoint-4")
    _fake_checkpoint(f"{out}/checkpoint-8.partial")  # complete, killed before its rename: promoted
    _fake_checkpoint(f"{out}/checkpoint-12.partial", complete=False)  # killed mid-write: removed
    _fake_checkpoint(f"{out}/checkpoint-4.partial")  # a re-save of 4 that lost to the existing one: removed
    _fake_checkpoint(f"{out}/checkpoint-2.deleting")  # killed mid-rotation: removed
    _fake_checkpoint(f"{out}/checkpoint-4.replaced")
    os.makedirs(f"{out}/.checkpoint-12.partial.tmp-abc123")  # the export's staging inside a killed save
    os.makedirs(f"{out}/final")  # not ours to touch
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [4]
    ckpt.clean_partials(out)
    assert sorted(os.listdir(out)) == ["checkpoint-4", "checkpoint-8", "final"]
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [4, 8]


def test_a_kill_during_rotation_never_leaves_a_gutted_checkpoint(tmp_path, monkeypatch):
    out = str(tmp_path)
    for s in (4, 8, 12):
        _fake_checkpoint(f"{out}/checkpoint-{s}")

    def killed(path, ignore_errors=False):  # dies after removing trainer_state.json, before state/
        os.remove(os.path.join(path, "trainer_state.json"))
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ckpt.rotate_checkpoints(out, limit=2)
    monkeypatch.undo()
    assert sorted(os.listdir(out)) == ["checkpoint-12", "checkpoint-4.deleting", "checkpoint-8"]
    ckpt.clean_partials(out)
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [8, 12] and len(os.listdir(out)) == 2


def test_rotation_keeps_the_best_checkpoint(tmp_path):
    out = str(tmp_path)
    for s in (4, 8, 12):
        _fake_checkpoint(f"{out}/checkpoint-{s}")
    ckpt.rotate_checkpoints(out, limit=2, keep=f"{out}/checkpoint-4")
    assert sorted(os.listdir(out)) == ["checkpoint-12", "checkpoint-4"]


@pytest.fixture(scope="module")
def model(tiny_bert):
    return SentenceTransformer(tiny_bert)


def test_export_failing_midway_leaves_no_model_and_keeps_the_old_one(model, tmp_path, monkeypatch):
    target = tmp_path / "final"
    real_write = export._write

    def dies_midway(model_, staging, create_model_card):
        real_write(model_, staging, create_model_card)
        os.remove(os.path.join(staging, "modules.json"))  # half-written ...
        raise OSError("disk full")  # ... and then the write fails

    monkeypatch.setattr(export, "_write", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(str(target))
    assert os.listdir(tmp_path) == []  # neither the target nor the staging directory

    monkeypatch.undo()
    model.save_pretrained(str(target))
    before = sorted(os.listdir(target))
    monkeypatch.setattr(export, "_write", dies_midway)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(str(target))
    assert os.listdir(tmp_path) == ["final"] and sorted(os.listdir(target)) == before  # the old export, intact
    assert SentenceTransformer(str(target)).get_embedding_dimension() == 32
    shutil.rmtree(target)


def test_a_failed_background_write_raises_at_the_wait_and_leaves_no_checkpoint(tmp_path):
    import jax.numpy as jnp

    out = str(tmp_path)

    def export(directory):
        raise OSError("disk full")

    pending = ckpt.start_checkpoint(out, 3, {"w": jnp.arange(4.0)}, {"global_step": 3}, export=export)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"checkpoint-3 \(step 3\).*OSError: disk full"):
        pending.wait()
    assert ckpt.list_checkpoints(out) == [] and "checkpoint-3" not in os.listdir(out), os.listdir(out)
    ckpt.clean_partials(out)  # the next start removes the leftovers (the partial, orbax's staged state)
    assert os.listdir(out) == []
