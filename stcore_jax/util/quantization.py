"""``quantize_embeddings``: float32 embeddings -> int8 / uint8 / binary / ubinary (sentence-transformers semantics)."""

from __future__ import annotations

import numpy as np

PRECISIONS = ("float32", "int8", "uint8", "binary", "ubinary")


def quantize_embeddings(embeddings, precision: str, ranges=None, calibration_embeddings=None) -> np.ndarray:
    """Quantize ``[N, D]`` float embeddings.

    int8/uint8: per-dimension [min, max] (from ``ranges`` [2, D], else ``calibration_embeddings``,
    else the embeddings themselves) split into 255 steps; int8 = bucket - 128.
    binary: ``packbits(x > 0) - 128`` as int8 [N, ceil(D/8)]; ubinary: ``packbits(x > 0)`` as uint8.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not supported; choose one of {PRECISIONS}")
    emb = np.asarray(embeddings, dtype=np.float32)
    if precision == "float32":
        return emb
    if emb.ndim == 2 and emb.shape[0] == 0:
        width = emb.shape[1] if precision.endswith("int8") else (emb.shape[1] + 7) // 8
        return np.zeros((0, width), dtype=np.int8 if precision in ("int8", "binary") else np.uint8)
    if precision.endswith("int8"):
        if ranges is None:
            calib = emb if calibration_embeddings is None else np.asarray(calibration_embeddings, np.float32)
            if calib.ndim == 1 or calib.shape[0] == 1:
                raise ValueError(
                    f"Cannot compute {precision} quantization ranges from a single embedding; pass `ranges` "
                    "or `calibration_embeddings` from a representative set."
                )
            ranges = np.vstack((calib.min(axis=0), calib.max(axis=0)))
        ranges = np.asarray(ranges, np.float32)
        starts = ranges[0]
        steps = (ranges[1] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        q = np.clip(np.floor((emb - starts) / steps), 0, 255)
        return q.astype(np.uint8) if precision == "uint8" else (q - 128).astype(np.int8)
    packed = np.packbits(emb > 0, axis=-1)
    return (packed - 128).astype(np.int8) if precision == "binary" else packed
