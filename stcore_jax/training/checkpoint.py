"""Checkpoints: ``output_dir/checkpoint-{step}/`` = the sentence-transformers export + ``state/`` (orbax:
params, optimizer state, step) + ``trainer_state.json`` (epoch, position in the data, log history,
best metric).

A checkpoint is assembled in ``checkpoint-{step}.partial`` and renamed when complete, so a process
killed at any moment leaves only complete ``checkpoint-*`` directories (and a stale ``.partial``
that the next save or resume removes).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import jax
import orbax.checkpoint as ocp

PREFIX = "checkpoint-"
_STEP_RE = re.compile(r"^checkpoint-(\d+)$")


def _barrier(name: str):
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


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


def save_checkpoint(output_dir: str, step: int, state, trainer_state: dict, model=None) -> str:
    """Write a complete checkpoint (all processes call this; process 0 writes the non-orbax files)."""
    final = os.path.join(output_dir, f"{PREFIX}{step}")
    tmp = final + ".partial"
    main = jax.process_index() == 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        if model is not None:
            model.save_pretrained(tmp, create_model_card=False)
    _barrier(f"stcore_ckpt_prepare_{step}")
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(os.path.join(tmp, "state"), state)
    ckptr.wait_until_finished()
    _barrier(f"stcore_ckpt_state_{step}")
    if main:
        with open(os.path.join(tmp, "trainer_state.json"), "w") as f:
            json.dump(trainer_state, f, indent=2)
        if os.path.isdir(final):  # re-saving the same step (e.g. after a resume): replace it
            shutil.rmtree(final)
        os.rename(tmp, final)
    _barrier(f"stcore_ckpt_done_{step}")
    return final


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


def rotate_checkpoints(output_dir: str, limit: int | None, keep: str | None = None) -> None:
    """Delete the oldest checkpoints beyond ``limit``, never ``keep`` (the best one)."""
    if not limit or jax.process_index() != 0:
        return
    ckpts = list_checkpoints(output_dir)
    victims = [p for _, p in ckpts if p != keep]
    excess = len(ckpts) - limit
    for p in victims[: max(excess, 0)]:
        shutil.rmtree(p, ignore_errors=True)


def clean_partials(output_dir: str) -> None:
    if jax.process_index() == 0 and os.path.isdir(output_dir):
        for name in os.listdir(output_dir):
            if name.startswith(PREFIX) and name.endswith(".partial"):
                shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)
