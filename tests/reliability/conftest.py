"""Fixtures for the reliability tests: a tiny BERT, and launching ``worker.py`` training runs."""

import os

import pytest

import tiny_models
from run_workers import Worker, load_dump
from stcore_jax.util import read_sts


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


@pytest.fixture(scope="session")
def straight_run(tiny_bert, stsb_dir, compile_cache, tmp_path_factory):
    """The uninterrupted 1-process, 8-device run (worker.py defaults): ``(final params, output_dir)``."""
    tmp = tmp_path_factory.mktemp("straight")
    w = Worker({"model_dir": tiny_bert, "stsb": str(stsb_dir), "out_dir": str(tmp / "out"), "dump": str(tmp / "dump")},
               str(tmp), compile_cache, "straight")
    assert w.finish() == 0, w.stderr()[-3000:]
    return load_dump(str(tmp / "dump")), str(tmp / "out")
