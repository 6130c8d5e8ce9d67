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

In the background (:func:`start_checkpoint`, one process). Only the device-to-host copy of the train
state happens at the save step (orbax's ``save`` returns once the arrays are on the host, so the next
steps may donate the device buffers); the export (of a host snapshot of the model, given by the caller),
orbax's commit, ``trainer_state.json`` and the renames run in a thread while training goes on. Orbax then
writes to ``checkpoint-{step}.partial.state`` beside the partial (the export replaces the partial
directory wholesale, see base/save.py ``write_atomically``) and that is moved into it as ``state/`` once
committed. The directory gets its final name last, as above, so rotation and resume never see a
checkpoint still being written. One save in flight at a time: the caller waits (:meth:`PendingSave.wait`)
before the next save, at the end of training and on preemption; a failure in the thread is raised there
(:class:`CheckpointWriteError`, naming the checkpoint). ``STCORE_JAX_SYNC_CHECKPOINTS=1`` makes every save
synchronous (as before; benches compare the two); several processes always save synchronously (orbax's
multi-host commit and our barriers are collectives, kept on the main thread in the same order everywhere).

Test hooks: ``STCORE_JAX_TEST_CHECKPOINT_PAUSE="{step}:{phase}"`` (phase ``state``: the orbax write is in
flight; ``rename``: everything is written, the rename is next) prints ``PAUSED_IN_CHECKPOINT`` and sleeps,
so a test can ``kill -9`` the process at that exact point. ``STCORE_JAX_TEST_CHECKPOINT_SLOW="{step}:{seconds}"``
makes the write of checkpoint ``step`` take ``seconds`` longer (printing ``CHECKPOINT_WRITE_BEGIN {step}``
and ``CHECKPOINT_WRITE_END {step}`` around the wait), so a test can see training go on during a write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import threading
import time

import jax
import orbax.checkpoint as ocp

PREFIX = "checkpoint-"
PARTIAL, DELETING, REPLACED = ".partial", ".deleting", ".replaced"
_STEP_RE = re.compile(r"^checkpoint-(\d+)$")
_LEFTOVER_RE = re.compile(r"^checkpoint-(\d+)(\.partial|\.deleting|\.replaced)$")
_EXPORT_STAGING_RE = re.compile(r"^\.checkpoint-\d+\.partial\.(tmp|old)-")  # base/save.py's, inside a save
_STATE_STAGING_RE = re.compile(r"^checkpoint-\d+\.partial\.state($|\.orbax-checkpoint-tmp)")  # a background save's
_PAUSE_ENV = "STCORE_JAX_TEST_CHECKPOINT_PAUSE"
_SLOW_ENV = "STCORE_JAX_TEST_CHECKPOINT_SLOW"
SYNC_ENV = "STCORE_JAX_SYNC_CHECKPOINTS"  # "1": every save writes in the foreground (the pre-background behaviour)


def _barrier(name: str):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _say(line: str) -> None:
    """Test hooks' output: one write per line. ``print`` writes the text and the newline separately, so a line
    printed by the checkpoint thread could interleave with the training thread's output and never appear whole
    to a test waiting for it."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _test_pause(step: int, phase: str) -> None:
    """Test-only: stop dead at ``phase`` of writing checkpoint ``step`` (see the module docstring)."""
    if os.environ.get(_PAUSE_ENV) == f"{step}:{phase}":
        _say(f"PAUSED_IN_CHECKPOINT {step}:{phase}")
        while True:  # until killed
            time.sleep(3600)


def _test_slow(step: int) -> None:
    """Test-only: make the write of checkpoint ``step`` take longer (see the module docstring)."""
    spec = os.environ.get(_SLOW_ENV, "")
    if spec.partition(":")[0] == str(step):
        _say(f"CHECKPOINT_WRITE_BEGIN {step}")
        time.sleep(float(spec.partition(":")[2]))
        _say(f"CHECKPOINT_WRITE_END {step}")


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
        _rename_into_place(tmp, final)
    _barrier(f"stcore_ckpt_done_{step}")
    return final


class CheckpointWriteError(RuntimeError):
    """A checkpoint written in the background failed; raised at the next wait (the next save, the end of
    training, a preemption's save). The checkpoint never got its final name."""


def background_saves() -> bool:
    """Whether saves go to a background thread: one process, and not ``STCORE_JAX_SYNC_CHECKPOINTS=1``."""
    return jax.process_count() == 1 and os.environ.get(SYNC_ENV, "").strip().lower() not in ("1", "true", "yes")


class PendingSave:
    """A checkpoint being written by a background thread (:func:`start_checkpoint`)."""

    def __init__(self, step: int, path: str, write):
        self.step, self.path, self.error = step, path, None
        self._thread = threading.Thread(target=self._run, args=(write,), name=f"stcore-ckpt-{step}", daemon=True)
        self._thread.start()

    def _run(self, write) -> None:
        try:
            write()
        except BaseException as e:  # noqa: BLE001  re-raised in the training thread by wait()
            self.error = e

    def done(self) -> bool:
        return not self._thread.is_alive()

    def wait(self) -> str:
        """Block until the write ends; returns the checkpoint's path or raises :class:`CheckpointWriteError`."""
        self._thread.join()
        if self.error is not None:
            raise CheckpointWriteError(
                f"writing checkpoint {self.path} (step {self.step}) in the background failed: "
                f"{type(self.error).__name__}: {self.error}. It was not completed (nothing has its final name; the "
                f"leftovers are removed at the next start); the previous checkpoints are intact. Set "
                f"{SYNC_ENV}=1 to save in the foreground") from self.error
        return self.path


def start_checkpoint(output_dir: str, step: int, state, trainer_state: dict, export=None) -> PendingSave:
    """Begin writing ``checkpoint-{step}`` in the background (one process only, see :func:`background_saves`).

    Synchronous part: the partial directory and orbax's device-to-host copy of ``state`` (after this the
    caller may donate ``state``'s buffers) and the text of ``trainer_state`` (the caller keeps appending to
    its log history). ``export(directory)`` runs in the thread, so it must not read anything training
    changes (give it a host snapshot of the model). Returns the :class:`PendingSave`; wait for it before
    the next save."""
    assert jax.process_count() == 1, "background checkpoint writes are for one process"
    final = os.path.join(output_dir, f"{PREFIX}{step}")
    tmp = final + PARTIAL
    staged_state = tmp + ".state"  # orbax writes beside the partial: the export replaces the partial directory
    for leftover in (tmp, staged_state):
        shutil.rmtree(leftover, ignore_errors=True)
    os.makedirs(tmp)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(staged_state, state)  # returns once the arrays are on the host; commits in orbax's thread
    text = json.dumps(trainer_state, indent=2)  # now: the log history grows while the thread writes

    def write():
        try:
            if export is not None:
                export(tmp)
            _test_slow(step)
            _test_pause(step, "state")
            ckptr.wait_until_finished()
        finally:
            ckptr.close()
        os.rename(staged_state, os.path.join(tmp, "state"))
        _write_text_atomic(os.path.join(tmp, "trainer_state.json"), text)  # the completion marker
        _test_pause(step, "rename")
        _rename_into_place(tmp, final)

    return PendingSave(step, final, write)


def _write_text_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _rename_into_place(tmp: str, final: str) -> None:
    if os.path.isdir(final):  # re-saving a step (e.g. after a resume): set the old one aside first
        old = final + REPLACED
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


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
    staging directories of a checkpoint, a background save's ``.partial.state``) is removed.
    """
    if jax.process_index() == 0 and os.path.isdir(output_dir):
        for name in sorted(os.listdir(output_dir)):
            m = _LEFTOVER_RE.match(name)
            path = os.path.join(output_dir, name)
            if not m:
                if _EXPORT_STAGING_RE.match(name) or _STATE_STAGING_RE.match(name):
                    shutil.rmtree(path, ignore_errors=True)
                continue
            final = os.path.join(output_dir, PREFIX + m.group(1))
            if m.group(2) == PARTIAL and is_checkpoint(path) and not os.path.exists(final):
                os.rename(path, final)
            else:
                shutil.rmtree(path, ignore_errors=True)
    _barrier("stcore_ckpt_clean")
