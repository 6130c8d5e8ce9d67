"""A training stream of the bi-encoder family: each step's examples are validated and tokenized as they
arrive, under the rules and messages of map-style data (sentence_transformer/data.py). The generic stream
mechanics (batches in stream order, positions, resume) are in stcore_jax/training/stream.py."""

from __future__ import annotations

import numpy as np

from stcore_jax.sentence_transformer.data import PreparedDataset, check_columns, prepare_columns
from stcore_jax.training.stream import stream_column_names


def _feature_label_dtype(dataset, label: str | None):
    """The label dtype the features promise (float -> float32, int -> int32), or None if unknown."""
    feature = (dataset.features or {}).get(label) if label and dataset.features else None
    dtype = getattr(feature, "dtype", None) or getattr(getattr(feature, "feature", None), "dtype", None)
    if not isinstance(dtype, str):
        return None
    if dtype.startswith("float"):
        return np.dtype(np.float32)
    if dtype.startswith(("int", "uint")):
        return np.dtype(np.int32)
    return None


class StreamSource:
    """One training stream, its columns checked against its loss; turns batches of examples into
    validated, tokenized :class:`PreparedDataset` s (the same rules and messages as map-style data)."""

    def __init__(self, dataset, name: str, loss, tokenizer_module, *, prompts=None, is_dict_dataset=False,
                 router_mapping=None):
        self.dataset, self.name = dataset, name
        self.column_names = stream_column_names(dataset, name)
        self.inputs, self.label = check_columns(self.column_names, name, loss)
        self.label_dtype = _feature_label_dtype(dataset, self.label)  # fixed, so labels never force a recompile
        self._module = tokenizer_module
        self._options = dict(prompts=prompts, is_dict_dataset=is_dict_dataset, router_mapping=router_mapping,
                             loss=loss)  # label ranges (data.check_label_range), per batch as rows arrive

    def prepare(self, examples: list[dict], first_row: int) -> PreparedDataset:
        """Validate and tokenize ``examples`` (stream rows ``first_row``, ``first_row + 1``, ...)."""
        wanted = self.inputs + ([self.label] if self.label else [])
        for i, ex in enumerate(examples, first_row):
            missing = [c for c in wanted if c not in ex]
            if missing:
                raise ValueError(f"Dataset {self.name!r}, row {i}: the example has columns {list(ex)}, but the "
                                 f"stream's columns are {self.column_names} (missing {missing}); every example needs "
                                 "the same columns (declare them with features=...)")
        values = {c: [ex[c] for ex in examples] for c in wanted}
        prepared = prepare_columns(values, self.name, self.inputs, self.label, self._module, first_row=first_row,
                                   **self._options)
        if prepared.labels is not None:
            if self.label_dtype is None:
                self.label_dtype = prepared.labels.dtype
            elif prepared.labels.dtype != self.label_dtype and prepared.labels.dtype.kind == "f":
                self.label_dtype = np.dtype(np.float32)  # int labels so far, now floats: keep the values
            prepared.labels = prepared.labels.astype(self.label_dtype)
        return prepared
