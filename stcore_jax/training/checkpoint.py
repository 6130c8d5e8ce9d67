"""Checkpoints: ``output_dir/checkpoint-{step}/`` = the sentence-transformers export + ``state/`` (orbax:
params, optimizer state, step, and the model state when the family declares one, e.g. a SparseAutoEncoder's
dead-latent counts) + ``trainer_state.json`` (epoch, position in the data, log history, best metric).

Crash safety. A checkpoint is assembled in ``checkpoint-{step}.partial``: the export, then the orbax
state (orbax writes it asynchronously into its own temporary directory and renames it to ``state/``
when committed; we wait for that), then ``trainer_state.json`` (itself written to a temporary name and
renamed, so it is never truncated) and only then the directory is renamed to ``checkpoint-{step}``.
Removal goes the other way round: a checkpoint is renamed to ``checkpoint-{step}.deleting`` before its
files are removed. So a process killed at any moment (``kill -9`` included) leaves only complete
``checkpoint-{step}`` directories, plus leftovers that :func:`clean_partials` removes on the next start.

Test hook: ``STCORE_JAX_TEST_CHECKPOINT_PAUSE="{step}:{phase}"`` (phase ``state``: the orbax write is in
flight; ``rename``: everything is written, the rename is next) prints ``PAUSED_IN_CHECKPOINT`` and sleeps,
so a test can ``kill -9`` the process at that exact point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

import jax
import orbax.checkpoint as ocp

PREFIX = "checkpoint-"
PARTIAL, DELETING, REPLACED = ".partial", ".deleting", ".replaced"
_STEP_RE = re.compile(r"^checkpoint-(\d+)$")
_LEFTOVER_RE = re.compile(r"^checkpoint-(\d+)(\.partial|\.deleting|\.replaced)$")
_EXPORT_STAGING_RE = re.compile(r"^\.checkpoint-\d+\.partial\.(tmp|old)-")  # base/save.py's, inside a save
_PAUSE_ENV = "STCORE_JAX_TEST_CHECKPOINT_PAUSE"


def _barrier(name: str):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _test_pause(step: int, phase: str) -> None:
    """Test-only: stop dead at ``phase`` of writing checkpoint ``step`` (see the module docstring)."""
    if os.environ.get(_PAUSE_ENV) == f"{step}:{phase}":
        print(f"PAUSED_IN_CHECKPOINT {step}:{phase}", flush=True)
        sys.stdout.flush()
        while True:  # until killed
            time.sleep(3600)


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints as ``(step, path)``, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    out = []
    for name in os.listdir(output_dir):
        m = _STEP_RE.match(name)
        path = os.path.join(output_dir, name)
        if m and is_checkpoint(path):
            out.append((int(m.group(1)), path))
    return sorted(out)


def is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "trainer_state.json")) and os.path.isdir(os.path.join(path, "state"))


def _write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(output_dir: str, step: int, state, trainer_state: dict, export=None) -> str:
    """Write a complete checkpoint; returns its path. Every process calls this (orbax writes each
    process's shards); process 0 writes the export (``export(directory)``: the model in its family's
    format) and ``trainer_state.json`` and does the renames. Returns only once everything is on disk (the
    orbax write included)."""
    final = os.path.join(output_dir, f"{PREFIX}{step}")
    tmp = final + PARTIAL
    main = jax.process_index() == 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        if export is not None:
            export(tmp)
    _barrier(f"stcore_ckpt_prepare_{step}")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(tmp, "state"), state)  # returns once the arrays are on the host; commits in a thread
    _test_pause(step, "state")
    ckptr.wait_until_finished()
    _barrier(f"stcore_ckpt_state_{step}")
    if main:
        _write_json_atomic(os.path.join(tmp, "trainer_state.json"), trainer_state)  # the completion marker
        _test_pause(step, "rename")
        if os.path.isdir(final):  # re-saving a step (e.g. after a resume): set the old one aside first
            old = final + REPLACED
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
    _barrier(f"stcore_ckpt_done_{step}")
    return final


def resume_path(resume, output_dir: str) -> str | None:
    """The checkpoint ``resume_from_checkpoint`` names: None/False none, True the newest complete one in
    ``output_dir`` (after tidying a killed run's leftovers), else the given path (checked)."""
    if resume is None or resume is False:
        return None
    if resume is True:
        clean_partials(output_dir)  # a killed run's leftovers: promote or remove, then list
        found = list_checkpoints(output_dir)
        if not found:
            raise ValueError(f"resume_from_checkpoint=True but {output_dir!r} has no complete checkpoint-*")
        return found[-1][1]
    if not is_checkpoint(str(resume)):
        raise ValueError(f"resume_from_checkpoint={resume!r} is not a stcore_jax checkpoint (expected a directory "
                         "with state/ and trainer_state.json, e.g. output_dir/checkpoint-500)")
    return str(resume)


def restore_checkpoint(path: str, abstract_state):
    """Restore ``state`` (resharded onto ``abstract_state``'s shardings) and the trainer state dict."""
    if not is_checkpoint(path):
        raise ValueError(
            f"resume_from_checkpoint={path!r} is not a stcore_jax checkpoint (expected a directory with "
            "state/ and trainer_state.json, e.g. output_dir/checkpoint-500)"
        )
    state = ocp.StandardCheckpointer().restore(os.path.join(path, "state"), abstract_state)
    with open(os.path.join(path, "trainer_state.json")) as f:
        return state, json.load(f)


def remove_checkpoint(path: str) -> None:
    """Rename, then delete: a kill during the deletion leaves ``*.deleting``, never a gutted checkpoint."""
    doomed = path + DELETING
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def rotate_checkpoints(output_dir: str, limit: int | None, keep: str | None = None) -> None:
    """Delete the oldest checkpoints beyond ``limit``, never ``keep`` (the best one)."""
    if not limit or jax.process_index() != 0:
        return
    ckpts = list_checkpoints(output_dir)
    victims = [p for _, p in ckpts if p != keep]
    excess = len(ckpts) - limit
    for p in victims[: max(excess, 0)]:
        remove_checkpoint(p)


def clean_partials(output_dir: str) -> None:
    """Tidy up after a killed process (process 0 acts; every process must call it).

    A complete ``checkpoint-N.partial`` (it has ``trainer_state.json``, written last) whose
    ``checkpoint-N`` is missing was killed after the write but before its rename: promote it.
    Everything else left over (incomplete partials, ``.deleting``, ``.replaced``, the export's hidden
    staging directories of a checkpoint) is removed.
    """
    if jax.process_index() == 0 and os.path.isdir(output_dir):
        for name in sorted(os.listdir(output_dir)):
            m = _LEFTOVER_RE.match(name)
            path = os.path.join(output_dir, name)
            if not m:
                if _EXPORT_STAGING_RE.match(name):
                    shutil.rmtree(path, ignore_errors=True)
                continue
            final = os.path.join(output_dir, PREFIX + m.group(1))
            if m.group(2) == PARTIAL and is_checkpoint(path) and not os.path.exists(final):
                os.rename(path, final)
            else:
                shutil.rmtree(path, ignore_errors=True)
    _barrier("stcore_ckpt_clean")
