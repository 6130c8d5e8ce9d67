"""NanoBEIR data shared by the families' NanoBEIR evaluators: the dataset names and the loading of one subset split.

A NanoBEIR dataset id (``sentence-transformers/NanoBEIR-en`` and its translations) holds one config per subset
(``corpus``, ``queries``, ``qrels``, and for reranking ``bm25``), each with one split per dataset named
``Nano{HumanReadable}`` (``NanoMSMARCO``). Without network access the same data is read from a local directory:
a snapshot of the Hub repository (``datasets.load_dataset`` reads its README configs), or one ``save_to_disk``
``DatasetDict`` per subset (``{dir}/{subset}/dataset_dict.json``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

DATASET_NAME_TO_HUMAN_READABLE = {
    "climatefever": "ClimateFEVER",
    "dbpedia": "DBPedia",
    "fever": "FEVER",
    "fiqa2018": "FiQA2018",
    "hotpotqa": "HotpotQA",
    "msmarco": "MSMARCO",
    "nfcorpus": "NFCorpus",
    "nq": "NQ",
    "quoraretrieval": "QuoraRetrieval",
    "scidocs": "SCIDOCS",
    "arguana": "ArguAna",
    "scifact": "SciFact",
    "touche2020": "Touche2020",
}


def load_subset_split(dataset_id: str, subset: str, split: str, *, evaluator: str, subsets: Sequence[str],
                      alternative: str = ""):
    """One ``datasets.Dataset``: ``split`` of ``subset`` from a local ``save_to_disk`` directory
    (``{dataset_id}/{subset}``), else ``datasets.load_dataset(dataset_id, subset, split=split)`` (a local
    snapshot directory, the cache or the Hub).

    Raises a ValueError naming the subset, split and dataset, and what to pass offline: ``subsets`` are the
    subsets the caller needs, ``alternative`` (``", or …"``) another way the caller accepts the data.
    """
    try:
        import datasets
    except ImportError as e:
        raise ValueError(f"{evaluator} needs the `datasets` package (`pip install datasets`).") from e
    saved = os.path.join(str(dataset_id), subset)
    try:
        if os.path.isdir(saved) and os.path.isfile(os.path.join(saved, "dataset_dict.json")):
            return datasets.load_from_disk(saved)[split]
        return datasets.load_dataset(dataset_id, subset, split=split)
    except Exception as e:  # any failure, network or file, gets the same offline advice
        raise ValueError(
            f"Could not load subset '{subset}' split '{split}' from dataset '{dataset_id}' "
            f"({type(e).__name__}: {e}). "
            "Without network access, pass the data explicitly: dataset_id='/path/to/NanoBEIR-en' (a local snapshot "
            "of the Hugging Face dataset repository, or a directory with one `save_to_disk` DatasetDict per subset "
            f"{', '.join(map(repr, subsets))} whose splits are named like 'NanoMSMARCO'){alternative}."
        ) from e


def validate_dataset_names(dataset_names: Sequence[str]) -> None:
    """ValueError for an empty list or a name that is not a NanoBEIR dataset (case-insensitive)."""
    if len(dataset_names) == 0:
        raise ValueError("dataset_names cannot be empty. Use None to evaluate on all datasets.")
    if missing := [n for n in dataset_names if n.lower() not in DATASET_NAME_TO_HUMAN_READABLE]:
        raise ValueError(
            f"Dataset(s) {missing} are not valid NanoBEIR datasets. "
            f"Valid dataset names are: {list(DATASET_NAME_TO_HUMAN_READABLE)}"
        )
