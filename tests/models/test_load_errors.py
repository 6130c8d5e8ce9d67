"""``max_seq_length`` against the encoder's position table, with the PyTorch reference as ground truth.

A length past the table used to encode long texts to NaN without a word (XLA's gather fills rows out of
range with NaN; PyTorch raises). The errors themselves -- at assignment, at load from
sentence_bert_config.json, for length buckets and configs -- and the bad-model-directory errors are in
tests/reliability/test_bad_input_catalogue.py.
"""

import numpy as np
import pytest

import tiny_models
from stcore_jax import SentenceTransformer

LONG = " ".join(tiny_models.SENTENCES * 12)  # several hundred tokens with either tokenizer


def test_max_seq_length_limit_is_the_references(tiny_dirs):
    """RoBERTa, whose positions start at pad_token_id + 1 = 2, so 158 of the tiny model's 160 rows are usable (the
    offset-free BERT limit, 160, is checked in the catalogue). At the limit a longer text encodes as the reference
    encodes it; one past it the reference's forward fails, and the assignment is refused (the length is kept).

    ``length_buckets=(8,)`` ends below max_seq_length: encode pads to max_seq_length past the last bucket (it
    failed on a numpy broadcast before)."""
    from sentence_transformers import SentenceTransformer as RefST

    path, limit = tiny_dirs["roberta"]["dense"], 158
    ours, ref = SentenceTransformer(path, length_buckets=(8,)), RefST(path, device="cpu")
    ours.max_seq_length = ref.max_seq_length = limit
    assert len(ours.tokenizer(LONG)["input_ids"]) > limit + 1
    got, want = ours.encode([LONG, "short"]), ref.encode([LONG, "short"])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, atol=2e-5)

    ref.max_seq_length = limit + 1
    with pytest.raises((IndexError, RuntimeError)):
        ref.encode([LONG])
    with pytest.raises(ValueError, match=rf"max_seq_length={limit + 1} exceeds the {limit} positions"):
        ours.max_seq_length = limit + 1
    assert ours.max_seq_length == limit
