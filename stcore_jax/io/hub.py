"""Model locations: a local directory, or a Hugging Face Hub snapshot when online."""

from __future__ import annotations

import os


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
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model",
                            "**/*.json", "**/*.safetensors", "**/*.txt", "README.md"],
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
