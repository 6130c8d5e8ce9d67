"""Launching ``worker.py`` training runs (imported by the reliability tests and their conftest)."""

import json
import os
import queue
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "worker.py")


class Worker:
    """A ``worker.py`` process (or another ``script`` taking a config path): stdout lines are read one by one
    by a reader thread (so a worker that goes silent fails :meth:`wait_for` at its timeout instead of blocking
    the test forever); stderr goes to a file."""

    def __init__(self, cfg: dict, tmp, cache_dir: str, name: str, env: dict | None = None, script: str = WORKER):
        self.cfg_path = os.path.join(tmp, f"{name}.json")
        json.dump(cfg, open(self.cfg_path, "w"))
        self.err_path = os.path.join(tmp, f"{name}.stderr")
        full_env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                        PYTHONUNBUFFERED="1", **(env or {}))
        full_env.pop("XLA_FLAGS", None)  # worker.py sets the device count from its config
        self.proc = subprocess.Popen([sys.executable, script, self.cfg_path], stdout=subprocess.PIPE,
                                     stderr=open(self.err_path, "w"), text=True, env=full_env)
        self.lines = []
        self._queue = queue.Queue()  # stdout lines, then None at EOF
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._queue.put(line.rstrip())
        self._queue.put(None)

    def stderr(self) -> str:
        return open(self.err_path).read()

    def wait_for(self, prefix: str, timeout: float = 300) -> str:
        """Read stdout until a line starts with ``prefix``; fail (with stderr) if the process ends first."""
        deadline = time.monotonic() + timeout
        why = f"within {timeout:.0f} s"
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                why = "before it ended"
                break
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        self.proc.kill()
        pytest.fail(f"worker never printed {prefix!r} {why}; stdout: {self.lines[-5:]}\n"
                    f"stderr: {self.stderr()[-3000:]}")

    def finish(self, timeout: float = 300) -> int:
        try:
            returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        while (line := self._queue.get(timeout=60)) is not None:  # the reader drains stdout to EOF
            self.lines.append(line)
        return returncode


def load_dump(prefix: str, process: int = 0, which: str = "") -> dict:
    """The parameters ``worker.py`` dumped: final (``which=""``), or ``"step0"`` / ``"step1"`` (``snapshot_step1``)."""
    return dict(np.load(f"{prefix}.{process}{'.' + which if which else ''}.npz"))


def load_log(prefix: str, process: int = 0) -> list[dict]:
    """The run's ``trainer.state.log_history`` (worker.py logs every step)."""
    return json.load(open(f"{prefix}.{process}.log.json"))


# Trainings that worker.py runs after its default one (config key ``runs``), all with plain SGD: an update is
# ``-lr * gradient``, so a wrong gradient scale shows in the parameters (Adam divides it out). Global in-batch
# negatives (``gather``) on 2 processes x 4 devices gather candidates across the processes.
SGD = dict(optimizer="sgd", lr=0.1, max_steps=3, save_steps=1000, snapshot_step1=True)
SGD_RUNS = {
    "mnrl_gathered": dict(SGD, loss="mnrl", gather=True),
    "cached_gathered": dict(SGD, loss="cached_mnrl", gather=True),
    # 2 processes only: mnrl_gathered with a deliberate bug (worker.py ``mutated``), the control of the comparisons
    "mutant_grad_x_processes": dict(SGD, loss="mnrl", gather=True, max_steps=1, mutate="grad_x_processes"),
}


def sgd_runs(names, root) -> list[dict]:
    """``runs`` entries for worker.py: each with its own output_dir and dump prefix under ``root``."""
    return [dict(SGD_RUNS[n], out_dir=os.path.join(root, n), dump=os.path.join(root, n, "dump")) for n in names]
