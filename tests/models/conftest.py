import pytest

import tiny_models

ALL_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, minilm_path, stsb_dir):
    """arch -> {"hf": plain checkpoint, "modes": all pooling modes, "dense": mean+Dense+Normalize}."""
    from stcore_jax.util import read_sts

    s1, s2, _ = read_sts(stsb_dir / "sts-train.csv")
    corpus = s1[:2000] + s2[:2000]
    out = {}
    for arch in tiny_models.ARCHS:
        root = tmp_path_factory.mktemp(arch.replace("-", "_"))
        hf = tiny_models.build_hf(arch, str(root / "hf"), str(minilm_path), corpus)
        out[arch] = {
            "hf": hf,
            "modes": tiny_models.build_st(hf, str(root / "modes"), pooling_mode=ALL_MODES),
            "dense": tiny_models.build_st(hf, str(root / "dense"), dense=24, normalize=True),
        }
    return out


@pytest.fixture(scope="session")
def sentences():
    return list(tiny_models.SENTENCES)
