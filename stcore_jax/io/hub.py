"""The Hugging Face Hub, both ways: model locations (a local directory, or a Hub snapshot by repo id) and
uploads (create the repo, upload a folder as one commit), all through ``huggingface_hub``.

The Hub endpoint, cache and offline mode are ``huggingface_hub``'s: ``HF_ENDPOINT``, ``HF_HOME`` /
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE``, ``HF_TOKEN`` (or ``token=``).
"""

from __future__ import annotations

import os

# What a model directory of any family holds (configs, weights, tokenizer vocabularies, sentencepiece models,
# idf.json, router and module subfolders). huggingface_hub matches with fnmatch, whose ``*`` crosses ``/``:
# "*.json" also matches "1_Pooling/config.json".
MODEL_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "README.md"]
# A training run's pushes can leave checkpoints in the repo (hub_strategy "checkpoint" / "all_checkpoints"):
# loading the model never needs them.
CHECKPOINT_FOLDER_PATTERNS = ["last-checkpoint/*", "checkpoint-*/*"]


def resolve_model_path(name_or_path: str, *, cache_folder=None, revision=None, token=None,
                       local_files_only=False) -> str:
    """A local directory for ``name_or_path``: the path itself, or a hub snapshot when online.

    Raises FileNotFoundError for a missing local path and OSError, saying what to do, when a hub id
    cannot be fetched (offline, or not found).
    """
    path = os.path.expanduser(str(name_or_path))
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise NotADirectoryError(f"{path!r} is a file; pass the model directory that contains it")
    # Hub ids look like "name" or "org/name"; anything else is a local path that does not exist.
    if path.startswith((".", "/", "~")) or path.count("/") > 1 or (os.sep != "/" and os.sep in path):
        raise FileNotFoundError(f"Model path {path!r} does not exist (no such directory)")
    offline = local_files_only or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(
            repo_id=path, revision=revision, cache_dir=cache_folder, token=token, local_files_only=offline,
            allow_patterns=MODEL_FILE_PATTERNS, ignore_patterns=CHECKPOINT_FOLDER_PATTERNS,
        )
    except Exception as e:  # noqa: BLE001 - re-raised with instructions
        how = (
            "We are offline (HF_HUB_OFFLINE=1 or local_files_only=True) and it is not in the local cache: "
            "download it where you have network (`huggingface-cli download " + path + "`) or pass a local directory."
            if offline
            else "Check the id and your network, or pass a local directory."
        )
        raise OSError(f"{path!r} is not a local directory and could not be fetched from the Hugging Face Hub. "
                      f"{how} ({type(e).__name__}: {e})") from e


def create_hub_repo(repo_id: str, *, token=None, private=None, exist_ok=False, branch=None) -> str:
    """Create the model repo ``repo_id`` ("name" or "org/name"; a bare name goes to the token's user) and, when
    given, the branch ``branch`` from ``main`` (kept if it exists). Returns the full ``"org/name"`` id.

    Raises ``huggingface_hub`` errors as they come (409 when the repo exists and not ``exist_ok``).
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id=repo_id, private=private, repo_type=None, exist_ok=exist_ok).repo_id
    if branch is not None:
        api.create_branch(repo_id=repo_id, branch=branch, exist_ok=True)
    return repo_id


def upload_folder(folder: str, repo_id: str, *, commit_message: str, token=None, revision=None, create_pr=False,
                  commit_description=None, delete_patterns=None):
    """Upload everything under ``folder`` to the root of ``repo_id`` as one commit (large and weight files go
    through LFS, or Xet storage where the client uses it); remote files matching ``delete_patterns`` that the
    folder does not hold are deleted in the same commit. Returns ``huggingface_hub``'s ``CommitInfo``."""
    from huggingface_hub import HfApi

    return HfApi(token=token).upload_folder(
        repo_id=repo_id, folder_path=folder, commit_message=commit_message, commit_description=commit_description,
        revision=revision, create_pr=create_pr, delete_patterns=delete_patterns)


def hub_file_exists(repo_id: str, filename: str, *, token=None, revision=None) -> bool:
    """Whether ``filename`` is in ``repo_id`` at ``revision`` (a HEAD request; errors other than "not there"
    propagate)."""
    from huggingface_hub import HfApi

    return HfApi(token=token).file_exists(repo_id, filename, revision=revision)
