"""``push_to_hub=True``: the training run pushed to the Hugging Face Hub in the background.

transformers' ``hub_strategy`` semantics, on this trainer's checkpoints (``output_dir/checkpoint-{step}``: the
model export + ``state/`` + ``trainer_state.json``):

- ``"end"``: the final model, once, at the end of training;
- ``"every_save"`` (the default): also the model of every checkpoint, at each save, to the repo's root;
- ``"checkpoint"``: like ``"every_save"``, plus the whole latest checkpoint as ``last-checkpoint/`` (download it
  and pass it as ``resume_from_checkpoint`` to continue elsewhere); files of the previous one are deleted in
  the same commit, so it is never a mix of two checkpoints;
- ``"all_checkpoints"``: like ``"every_save"``, plus every checkpoint as its own ``checkpoint-{step}/``.

At the end of training the final model (with its model card, the card's ``model_id`` set to the repo) is
pushed whatever the strategy, as ``"End of training"``.

Never blocking a step: at a save the checkpoint's files are hard-linked (copied where links are impossible)
into a staging directory inside ``output_dir`` (so deleting old checkpoints, ``save_total_limit``, cannot pull
them away mid-upload) and one upload is queued; a single worker thread commits the queue in order, one
commit per save. A queued upload not yet started is replaced by a newer one that overwrites the same
files (a slow link then pushes the latest save, not a backlog). ``on_train_end`` waits for the queue.

Failures: an upload that fails is logged at once (the repo, what was being pushed, the error; the local
checkpoint is untouched) and training goes on; at the end, uploads that failed and were not superseded by a
later successful push of the same files raise :class:`HubUploadError`, after the final model is written to
``output_dir/final`` (with ``save_final_model``). The repo is created (or reused) when training begins, so a
bad token or repo name fails before the first step. Only process 0 talks to the Hub. Uploads still queued
when training stops with an error are abandoned with the process; the checkpoints are on disk to push later.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import shutil
import tempfile
import threading

from stcore_jax.training.callbacks import TrainerCallback
from stcore_jax.training.checkpoint import PREFIX

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".hub-upload-"
_CHECKPOINT_ONLY = ("state", "trainer_state.json")  # what a checkpoint adds to the model export


class HubUploadError(RuntimeError):
    """One or more pushes to the Hub failed; the message names the repo and each checkpoint."""


@dataclasses.dataclass
class _Upload:
    target: str  # the repo files it writes: uploads with the same target supersede each other
    folder: str  # staged tree, in the repo's layout
    what: str  # for messages: "checkpoint-12 (step 12)", "the final model"
    source: str  # the local directory it came from (intact whatever happens)
    message: str
    delete_patterns: list | None = None
    staged: bool = True  # remove ``folder`` when done


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(src, dst)


def stage_checkpoint(checkpoint: str, staging: str, checkpoint_folder: str | None) -> None:
    """Lay out in ``staging`` what a save pushes: the model export at the root (the checkpoint without its
    ``state/`` and ``trainer_state.json``) and, with ``checkpoint_folder``, the whole checkpoint under it."""
    for name in os.listdir(checkpoint):
        if name in _CHECKPOINT_ONLY:
            continue
        src, dst = os.path.join(checkpoint, name), os.path.join(staging, name)
        if os.path.isdir(src):
            shutil.copytree(src, dst, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, dst)
    if checkpoint_folder:
        shutil.copytree(checkpoint, os.path.join(staging, checkpoint_folder), copy_function=_link_or_copy)


class HubUploader(TrainerCallback):
    """The trainer's pushes to ``args.hub_model_id`` (see the module docstring); ``repo_id`` is the full id
    once training began, ``commits`` the ``(what, commit URL)`` of each finished push."""

    def __init__(self, trainer):
        self.trainer, self.args = trainer, trainer.args
        self.repo_id: str | None = None
        self.commits: list[tuple[str, str]] = []
        self.failures: dict[str, str] = {}  # target -> message of its latest failed upload
        self._queue: collections.deque[_Upload] = collections.deque()
        self._cond = threading.Condition()
        self._running: _Upload | None = None
        self._worker: threading.Thread | None = None

    # -- hooks -----------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from stcore_jax.io.hub import create_hub_repo

        for name in os.listdir(args.output_dir):  # a killed run's staging leftovers
            if name.startswith(STAGING_PREFIX):
                shutil.rmtree(os.path.join(args.output_dir, name), ignore_errors=True)
        name = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
        try:
            self.repo_id = create_hub_repo(name, token=args.hub_token, private=args.hub_private_repo, exist_ok=True)
        except Exception as e:
            raise HubUploadError(f"push_to_hub: could not create or reach the Hub repo {name!r} "
                                 f"({type(e).__name__}: {e}); check hub_model_id and hub_token (or HF_TOKEN)") from e
        logger.info("Pushing to the Hub repo %s (hub_strategy=%r)", self.repo_id, args.hub_strategy)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or args.hub_strategy == "end" or self.repo_id is None:
            return
        step = state.global_step
        checkpoint = os.path.join(args.output_dir, f"{PREFIX}{step}")
        folder = {"checkpoint": "last-checkpoint", "all_checkpoints": f"{PREFIX}{step}"}.get(args.hub_strategy)
        staging = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=args.output_dir)
        try:
            stage_checkpoint(checkpoint, staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        progress = (f"step {step}" if args.save_strategy != "epoch"
                    else f"epoch {int(round(state.epoch or 0))}")
        self.submit(_Upload(
            target={"every_save": "model", "checkpoint": "model+last-checkpoint"}.get(args.hub_strategy, folder),
            folder=staging, what=f"{PREFIX}{step} (step {step})", source=checkpoint,
            message=f"Training in progress, {progress}" + (", checkpoint" if folder else ""),
            delete_patterns=["last-checkpoint/*"] if folder == "last-checkpoint" else None))

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.repo_id is None:
            return
        card = getattr(self.trainer.model, "model_card_data", None)
        if card is not None and hasattr(card, "set_model_id"):
            card.set_model_id(self.repo_id)
        elif card is not None and hasattr(card, "model_id"):
            card.model_id = self.repo_id
        # Written where the trainer writes its final export right after, so the model is on disk even if the
        # push fails and the error below stops train() before that export.
        if args.save_final_model:
            final, staged = os.path.join(args.output_dir, "final"), False
        else:
            final, staged = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=args.output_dir), True
        self.trainer.task.save(final)
        self.submit(_Upload(target="model", folder=final, what="the final model", source=final,
                            message="End of training", staged=staged))
        self.wait()
        if self.failures:
            raise HubUploadError(f"{len(self.failures)} push(es) to the Hub repo {self.repo_id} failed; the local "
                                 f"files are intact:\n" + "\n".join(f"- {m}" for m in self.failures.values()))

    # -- the queue -------------------------------------------------------------------------------
    def submit(self, upload: _Upload) -> None:
        """Queue ``upload`` (replacing a queued, not started one with the same target); returns at once."""
        with self._cond:
            for old in [u for u in self._queue if u.target == upload.target]:
                self._queue.remove(old)
                logger.info("Hub push of %s superseded by %s before it started", old.what, upload.what)
                self._discard(old)
            self._queue.append(upload)
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="stcore-jax-hub-upload", daemon=True)
                self._worker.start()
            self._cond.notify_all()

    def wait(self) -> None:
        """Block until every queued upload finished (or failed)."""
        with self._cond:
            if self._queue or self._running:
                logger.info("Waiting for %d Hub upload(s) to %s to finish", len(self._queue) + 1, self.repo_id)
            self._cond.wait_for(lambda: not self._queue and self._running is None)

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._queue:
                    return
                upload = self._running = self._queue.popleft()
            try:
                self._push(upload)
            finally:
                self._discard(upload)
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _push(self, upload: _Upload) -> None:
        from stcore_jax.io.hub import upload_folder

        try:
            info = upload_folder(upload.folder, self.repo_id, commit_message=upload.message, token=self.args.hub_token,
                                 delete_patterns=upload.delete_patterns)
        except Exception as e:  # noqa: BLE001 - recorded, logged now and raised at the end of training
            msg = (f"pushing {upload.what} to the Hub repo {self.repo_id} failed ({type(e).__name__}: {e}); the "
                   f"local copy {upload.source} is intact")
            logger.error("push_to_hub: %s", msg)
            self.failures[upload.target] = msg
            return
        self.failures.pop(upload.target, None)
        self.commits.append((upload.what, info.commit_url))
        logger.info("Pushed %s to %s", upload.what, info.commit_url)

    @staticmethod
    def _discard(upload: _Upload) -> None:
        if upload.staged:
            shutil.rmtree(upload.folder, ignore_errors=True)


def hub_callbacks(trainer) -> list[TrainerCallback]:
    """``[HubUploader(trainer)]`` when ``trainer.args.push_to_hub``, else ``[]``."""
    return [HubUploader(trainer)] if getattr(trainer.args, "push_to_hub", False) else []
