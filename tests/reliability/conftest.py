"""Fixtures for the reliability tests: a tiny BERT, and launching ``worker.py`` training runs."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import tiny_models
from stcore_jax.util import read_sts

WORKER = os.path.join(os.path.dirname(__file__), "worker.py")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory, minilm_path, stsb_dir):
    s1, s2, _ = read_sts(stsb_dir / "sts-train.csv")
    root = tmp_path_factory.mktemp("reliability_bert")
    hf = tiny_models.build_hf("bert", str(root / "hf"), str(minilm_path), s1[:500] + s2[:500])
    return tiny_models.build_st(hf, str(root / "st"), max_seq_length=32)


@pytest.fixture(scope="session")
def compile_cache(tmp_path_factory):
    """One persistent compilation cache for all worker processes: only the first one compiles."""
    return str(tmp_path_factory.mktemp("jax_cache"))


class Worker:
    """A ``worker.py`` process: stdout lines are read one by one; stderr goes to a file."""

    def __init__(self, cfg: dict, tmp, cache_dir: str, name: str, env: dict | None = None):
        self.cfg_path = os.path.join(tmp, f"{name}.json")
        json.dump(cfg, open(self.cfg_path, "w"))
        self.err_path = os.path.join(tmp, f"{name}.stderr")
        full_env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                        PYTHONUNBUFFERED="1", **(env or {}))
        full_env.pop("XLA_FLAGS", None)  # worker.py sets the device count from its config
        self.proc = subprocess.Popen([sys.executable, WORKER, self.cfg_path], stdout=subprocess.PIPE,
                                     stderr=open(self.err_path, "w"), text=True, env=full_env)
        self.lines = []

    def stderr(self) -> str:
        return open(self.err_path).read()

    def wait_for(self, prefix: str, timeout: float = 300) -> str:
        """Read stdout until a line starts with ``prefix``; fail (with stderr) if the process ends first."""
        deadline = time.monotonic() + timeout
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.startswith(prefix):
                return line.rstrip()
            if time.monotonic() > deadline:
                break
        self.proc.kill()
        pytest.fail(f"worker never printed {prefix!r}; stdout: {self.lines[-5:]}\nstderr: {self.stderr()[-3000:]}")

    def finish(self, timeout: float = 300) -> int:
        out, _ = self.proc.communicate(timeout=timeout)
        self.lines += out.splitlines()
        return self.proc.returncode


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


def load_dump(prefix: str, process: int = 0) -> dict:
    return dict(np.load(f"{prefix}.{process}.npz"))


@pytest.fixture(scope="session")
def straight_run(tiny_bert, stsb_dir, compile_cache, tmp_path_factory):
    """The uninterrupted 1-process, 8-device run (worker.py defaults): ``(final params, output_dir)``."""
    tmp = tmp_path_factory.mktemp("straight")
    w = Worker({"model_dir": tiny_bert, "stsb": str(stsb_dir), "out_dir": str(tmp / "out"), "dump": str(tmp / "dump")},
               str(tmp), compile_cache, "straight")
    assert w.finish() == 0, w.stderr()[-3000:]
    return load_dump(str(tmp / "dump")), str(tmp / "out")
