"""Launching ``worker.py`` training runs (imported by the reliability tests and their conftest)."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "worker.py")


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


def load_dump(prefix: str, process: int = 0) -> dict:
    return dict(np.load(f"{prefix}.{process}.npz"))
