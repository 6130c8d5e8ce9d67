"""Helpers shared by the CrossEncoder evaluators."""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)


def default_progress_bar(show_progress_bar: bool | None) -> bool:
    """``None`` means: show it when logging is at INFO or DEBUG (the reference's rule)."""
    if show_progress_bar is None:
        return logger.getEffectiveLevel() in (logging.INFO, logging.DEBUG)
    return show_progress_bar


def predict_scores(model, sentence_pairs, *, prompt_name: str | None, batch_size: int,
                   show_progress_bar: bool) -> np.ndarray:
    """``model.predict`` with the model's own activation: ``[N]`` (one label) or ``[N, C]`` numpy."""
    kwargs = {"prompt_name": prompt_name} if prompt_name is not None else {}
    out = model.predict(sentence_pairs, batch_size=batch_size, convert_to_numpy=True,
                        show_progress_bar=show_progress_bar, **kwargs)
    return np.asarray(out)
