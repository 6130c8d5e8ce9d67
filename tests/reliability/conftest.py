"""Fixtures for the reliability tests: a tiny BERT, launching ``worker.py`` training runs, and the seed of
the randomised choices (``STCORE_TEST_SEED``)."""

import contextlib
import os
import random
from typing import NamedTuple

import pytest
from filelock import FileLock

import tiny_models
from run_workers import Worker, load_dump, load_log, sgd_runs
from stcore_jax.util import read_sts

SEED_ENV = "STCORE_TEST_SEED"
DEFAULT_SEED = 20240916


@pytest.fixture
def test_rng(request):
    """``random.Random`` for a test's random choices (a kill's step, ...), seeded from ``STCORE_TEST_SEED``
    (default: a fixed seed), so a failure replays with the seed that its report names."""
    seed = int(os.environ.get(SEED_ENV, DEFAULT_SEED))
    request.node.user_properties.append((SEED_ENV, seed))
    return random.Random(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    seed = dict(item.user_properties).get(SEED_ENV)
    if report.failed and seed is not None:
        report.sections.append(("random seed", f"replay with {SEED_ENV}={seed}"))
    return report


@contextlib.contextmanager
def _once(tmp_path_factory, name):
    """``(directory, build)``: a directory shared by the xdist workers of this run; ``build`` is true for the one
    that gets there first, which fills it while the others wait on a file lock (pytest-xdist's recipe for a session
    fixture computed once per run). The slow modules start together on both workers, so without this each worker
    trained the same straight run (~70 s of CPU on a 2-core machine)."""
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    base = tmp_path_factory.getbasetemp()
    path = (base.parent / f"reliability-{uid}" if uid else base / "reliability-shared") / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        path.mkdir(exist_ok=True)
        done = path / ".done"
        yield str(path), not done.exists()
        done.touch()  # reached only if the build succeeded: a failed one is retried by the next worker


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path, stsb_dir):
    with _once(tmp_path_factory, "bert") as (root, build):
        if build:
            s1, s2, _ = read_sts(stsb_dir / "sts-train.csv")
            hf = tiny_models.build_hf("bert", os.path.join(root, "hf"), str(minilm_path), s1[:500] + s2[:500])
            tiny_models.build_st(hf, os.path.join(root, "st"), max_seq_length=32)
    return os.path.join(root, "st")


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """One persistent compilation cache for all worker processes: only the first one compiles. The suite's own
    (tests/conftest.py), so the workers of both xdist workers and the in-process tests share it."""
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path_factory.mktemp("jax_cache"))


@pytest.fixture
def launch(tiny_bert, stsb_dir, compile_cache, tmp_path):
    """``launch(name, out_dir, **cfg) -> Worker``."""
    started = []

    def _launch(name, out_dir, **cfg):
        env = cfg.pop("env", {})
        full = {"model_dir": tiny_bert, "stsb": str(stsb_dir), "out_dir": os.path.abspath(out_dir), **cfg}
        w = Worker(full, str(tmp_path), compile_cache, name, env)
        started.append(w)
        return w

    yield _launch
    for w in started:  # never leave a process behind
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


class StraightRun(NamedTuple):
    params: dict  # final parameters of the default run
    out_dir: str  # its output_dir (checkpoints 4 and 8, logs.jsonl)
    log: list  # its log history (every step)
    sgd: dict  # run_workers.SGD_RUNS name -> dump prefix of that 1-process SGD run


@pytest.fixture(scope="session")
def straight_run(tiny_bert, stsb_dir, compile_cache, tmp_path_factory):
    """The uninterrupted 1-process, 8-device run (worker.py defaults), then, in the same process, the
    1-process references of test_multi_process.py's SGD runs (one start-up for all of them)."""
    with _once(tmp_path_factory, "straight") as (root, build):
        tmp = os.path.abspath(root)
        runs = sgd_runs(["mnrl_gathered", "cached_gathered"], os.path.join(tmp, "sgd"))
        if build:
            w = Worker({"model_dir": tiny_bert, "stsb": str(stsb_dir), "out_dir": os.path.join(tmp, "out"),
                        "dump": os.path.join(tmp, "dump"), "runs": runs}, tmp, compile_cache, "straight")
            assert w.finish() == 0, w.stderr()[-3000:]
    return StraightRun(load_dump(os.path.join(tmp, "dump")), os.path.join(tmp, "out"),
                       load_log(os.path.join(tmp, "dump")),
                       {os.path.basename(r["out_dir"]): r["dump"] for r in runs})
