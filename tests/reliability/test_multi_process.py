"""Multi-host on one machine: 2 processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo), each
collating only its slice of every global batch, equal the 1-process 8-device run (parameters, and the loss
and gradient norm logged at every step); with plain SGD the first step's gradient is equal too, also with
global in-batch negatives gathered across the processes (MNRL and CachedMNRL ``gather_across_devices=True``);
only process 0 writes exports and logs; a checkpoint written by the 2 processes restores (resharded) in 1
process; a SIGTERM to one process stops both at the same step.

Controls: per-device negatives give another loss than gathered ones, and a deliberate bug (the gradient, not
the loss, scaled by the process count) fails the gradient comparisons, so these comparisons see what they
claim to check.

Process start-up and compiles dominate, so one 2-process launch (``two_process_run``) serves several tests:
worker.py's default run, then its SGD runs (run_workers.SGD_RUNS), and ``straight_run`` (conftest.py) holds
the 1-process references of all of them.
"""

import json
import os
import re
import signal
import socket

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from run_workers import SGD_RUNS, Worker, load_dump, load_log, sgd_runs
from stcore_jax import SentenceTransformer
from stcore_jax.training import checkpoint as ckpt

GATHERED = ("mnrl_gathered", "cached_gathered")
MUTANT = "mutant_grad_x_processes"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_close(a, b, what, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=atol, err_msg=f"{what}: {k}")


def _assert_logs_equal(got, want, what):
    """The per-step logs (worker.py logs every step): same steps, loss and grad_norm equal to float32 noise."""
    assert [e["step"] for e in got] == [e["step"] for e in want] == list(range(1, len(want) + 1)), what
    for a, b in zip(got, want):
        for key in ("loss", "grad_norm"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=f"{what}: step {b['step']} {key}")
        assert (a["learning_rate"], a["skipped_nonfinite"]) == (b["learning_rate"], 0), (what, a, b)


def _metrics(log):
    return [(e["step"], e["loss"], e["grad_norm"]) for e in log]


def _first_step_gradient(prefix, process=0):
    """The gradient of step 1 of an SGD run: ``(params before - params after) / lr``."""
    p0, p1 = load_dump(prefix, process, "step0"), load_dump(prefix, process, "step1")
    lr = SGD_RUNS[os.path.basename(os.path.dirname(prefix))]["lr"]
    return {k: (p0[k] - p1[k]) / lr for k in p0}


@pytest.fixture(scope="module")
def two_process_run(tiny_bert, stsb_dir, compile_cache, tmp_path_factory):
    """worker.py's default run on 2 processes x 4 devices (export, checkpoints; output ``out``, dump ``dump``), then
    in the same processes the SGD runs ``sgd`` (name -> dump prefix): the gathered ones and the mutant."""
    tmp = tmp_path_factory.mktemp("two_processes")
    out, dump, coord = str(tmp / "out"), str(tmp / "mp"), f"127.0.0.1:{_free_port()}"
    runs = sgd_runs([*GATHERED, MUTANT], str(tmp / "sgd"))
    workers = [Worker({"model_dir": tiny_bert, "stsb": str(stsb_dir), "out_dir": out, "local_devices": 4,
                       "num_processes": 2, "process_id": i, "coordinator": coord, "dump": dump,
                       "save_final_model": True, "runs": runs}, str(tmp), compile_cache, f"proc{i}") for i in range(2)]
    try:
        for w in workers:
            assert w.finish(timeout=600) == 0, w.stderr()[-3000:]
    finally:
        for w in workers:  # never leave a process behind
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
    return {"out": out, "dump": dump, "sgd": {os.path.basename(r["out_dir"]): r["dump"] for r in runs}}


def test_two_processes_equal_one(two_process_run, straight_run):
    out, dump = two_process_run["out"], two_process_run["dump"]
    p0, p1 = load_dump(dump, 0), load_dump(dump, 1)
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)  # one global array, seen from both processes
    _assert_close(p0, straight_run.params, "2 processes vs 1")
    # Adam's update is nearly blind to a constant gradient scale; the logged loss and gradient norm are not.
    for process in (0, 1):
        _assert_logs_equal(load_log(dump, process), straight_run.log, f"2 processes (process {process}) vs 1")

    # Only process 0 writes the export and the logs; process 1 writes only its orbax shards.
    assert os.path.isfile(os.path.join(out, "final", "model.safetensors"))
    logged = [json.loads(line)["step"] for line in open(os.path.join(out, "logs.jsonl"))]
    assert logged == list(range(1, 11)), logged  # each log line once
    writes1 = json.load(open(f"{dump}.1.writes.json"))
    stray = [p for _, p in writes1 if "/state" not in p]
    assert not stray, stray
    assert any("final" in p for _, p in json.load(open(f"{dump}.0.writes.json")))

    # The checkpoint the 2 processes wrote restores in this 1-process, 8-device runtime (orbax reshards
    # onto the target's shardings) and matches the 1-process run's checkpoint of the same step.
    mp_state = _restore_on_one_process(os.path.join(out, "checkpoint-8"))
    one_state = _restore_on_one_process(os.path.join(straight_run.out_dir, "checkpoint-8"))
    assert int(mp_state["step"]) == int(one_state["step"]) == 8
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(mp_state)[0], jax.tree_util.tree_leaves(one_state)):
        assert a.sharding.num_devices == 8 and a.sharding.is_fully_replicated, path
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    mp_trainer_state = json.load(open(os.path.join(out, "checkpoint-8", "trainer_state.json")))
    assert (mp_trainer_state["epoch_index"], mp_trainer_state["batches_in_epoch"]) == (1, 2)


@pytest.mark.parametrize("name", GATHERED)
def test_global_negatives_gathered_across_two_processes_equal_one(two_process_run, straight_run, name):
    """``gather_across_devices=True`` on 2 processes: every anchor is scored against the 16 candidates of the
    global batch, 8 of them on the other process; 3 SGD steps equal the 1-process run with the same global
    batch (every step's loss and gradient norm, step 1's gradient, the final parameters). Control: with
    per-device negatives (2 candidates; the default run's step 1: same parameters, batch and dropout) the
    loss differs."""
    mp, one = two_process_run["sgd"][name], straight_run.sgd[name]
    for process in (0, 1):
        _assert_logs_equal(load_log(mp, process), load_log(one), f"{name}: 2 processes (process {process}) vs 1")
        assert _metrics(load_log(mp, process)) == _metrics(load_log(mp, 0))  # replicated: bitwise the same
        np.testing.assert_equal(load_dump(mp, process, "step0"), load_dump(one, 0, "step0"))
        _assert_close(_first_step_gradient(mp, process), _first_step_gradient(one), f"{name}: step 1 gradient")
        _assert_close(load_dump(mp, process), load_dump(one), f"{name}: parameters after 3 SGD steps")

    with pytest.raises(AssertionError, match="step 1 loss"):
        _assert_logs_equal(load_log(mp)[:1], straight_run.log[:1], "control: per-device negatives")


def test_a_gradient_scaled_by_the_process_count_is_caught(two_process_run, straight_run):
    """Mutation control for the comparisons above: worker.py's ``grad_x_processes`` bug (the train step's loss
    value is right, its gradient 2x: summed over the processes instead of averaged) on the gathered-MNRL run.
    The loss at step 1 still matches, but the gradient norm and the step-1 gradient comparisons fail."""
    mutant, one = two_process_run["sgd"][MUTANT], straight_run.sgd["mnrl_gathered"]
    got, want = load_log(mutant), load_log(one)[:1]
    np.testing.assert_allclose(got[0]["loss"], want[0]["loss"], rtol=1e-5)  # blind to this bug on its own
    with pytest.raises(AssertionError, match="grad_norm"):
        _assert_logs_equal(got, want, "mutant")
    g_mut, g_one = _first_step_gradient(mutant), _first_step_gradient(one)
    with pytest.raises(AssertionError):
        _assert_close(g_mut, g_one, "mutant")
    _assert_close(g_mut, {k: 2 * v for k, v in g_one.items()}, "the mutant's gradient is 2x", atol=2e-5)


def test_fsdp_across_two_processes(launch, tmp_path, straight_run):
    """mesh {"data": 1, "fsdp": 8} over 2 processes x 4 devices: parameters are split across the processes (so the
    model's parameters and process 0's export must be gathered from both), and the result equals the
    1-process data-parallel run (same 8 batch blocks, so the same per-device in-batch negatives)."""
    out, dump = str(tmp_path / "out"), str(tmp_path / "mp")
    coord = f"127.0.0.1:{_free_port()}"
    workers = [launch(f"fsdp{i}", out, local_devices=4, num_processes=2, process_id=i, coordinator=coord, dump=dump,
                      save_final_model=True, mesh_shape={"data": 1, "fsdp": 8}, fsdp_min_size=1024) for i in range(2)]
    for w in workers:
        assert w.finish() == 0, w.stderr()[-3000:]
    sharded = json.load(open(f"{dump}.0.sharded.json"))
    assert any("word_embeddings" in k for k in sharded) and any("kernel" in k for k in sharded), sharded
    p0, p1 = load_dump(dump, 0), load_dump(dump, 1)
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    _assert_close(p0, straight_run.params, "fsdp over 2 processes vs data-parallel 1 process")
    for process in (0, 1):
        _assert_logs_equal(load_log(dump, process), straight_run.log, f"fsdp over 2 processes (process {process}) vs 1")
    exported = SentenceTransformer(os.path.join(out, "final"))
    for path, a in jax.tree_util.tree_flatten_with_path(exported.params)[0]:
        np.testing.assert_array_equal(np.asarray(a), p0[jax.tree_util.keystr(path)], err_msg=jax.tree_util.keystr(path))
    mp_state = _restore_on_one_process(os.path.join(out, "checkpoint-8"))  # fsdp shards from 2 processes, replicated
    one_state = _restore_on_one_process(os.path.join(straight_run.out_dir, "checkpoint-8"))
    for a, b in zip(jax.tree_util.tree_leaves(mp_state), jax.tree_util.tree_leaves(one_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)


def _restore_on_one_process(path):
    meta = ocp.StandardCheckpointer().metadata(os.path.join(path, "state"))
    tree = getattr(meta, "item_metadata", meta)
    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P())
    abstract = jax.tree_util.tree_map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=replicated), tree)
    state, _ = ckpt.restore_checkpoint(path, abstract)
    return state


def test_sigterm_to_one_process_stops_both_at_the_same_step(launch, tmp_path):
    """A scheduler's SIGTERM to one host: JAX's preemption service (on in jax.distributed) makes every
    process stop after the same step; they write one checkpoint together and exit 143."""
    out = str(tmp_path / "out")
    coord = f"127.0.0.1:{_free_port()}"
    workers = [launch(f"proc{i}", out, local_devices=4, num_processes=2, process_id=i, coordinator=coord,
                      step_sleep=1.0) for i in range(2)]
    workers[0].wait_for("STEP 5")
    workers[0].proc.send_signal(signal.SIGTERM)
    stops = []
    for w in workers:
        assert w.finish(timeout=120) == 128 + signal.SIGTERM, w.stderr()[-3000:]
        m = re.search(r"stopped after step (\d+) and wrote \S+checkpoint-(\d+)", w.stderr())
        assert m and m.group(1) == m.group(2), w.stderr()[-3000:]
        stops.append(int(m.group(1)))
    assert stops[0] == stops[1] and 5 <= stops[0] < 10, stops
    assert ckpt.list_checkpoints(out)[-1][0] == stops[0]
    assert not [n for n in os.listdir(out) if "partial" in n]
