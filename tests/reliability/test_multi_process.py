"""Multi-host on one machine: 2 processes x 4 CPU devices (jax.distributed on 127.0.0.1, gloo), each
collating only its slice of every global batch, equal the 1-process 8-device run; only process 0
writes exports and logs; a checkpoint written by the 2 processes restores (resharded) in 1 process;
a SIGTERM to one process stops both at the same step."""

import json
import os
import re
import signal
import socket

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from run_workers import load_dump
from stcore_jax import SentenceTransformer
from stcore_jax.training import checkpoint as ckpt


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_close(a, b, what):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5, err_msg=f"{what}: {k}")


def test_two_processes_equal_one(launch, tmp_path, straight_run):
    straight_params, straight_dir = straight_run
    out, dump = str(tmp_path / "out"), str(tmp_path / "mp")
    coord = f"127.0.0.1:{_free_port()}"
    workers = [launch(f"proc{i}", out, local_devices=4, num_processes=2, process_id=i, coordinator=coord,
                      dump=dump, save_final_model=True) for i in range(2)]
    for w in workers:
        assert w.finish() == 0, w.stderr()[-3000:]

    p0, p1 = load_dump(dump, 0), load_dump(dump, 1)
    for k in p0:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)  # one global array, seen from both processes
    _assert_close(p0, straight_params, "2 processes vs 1")

    # Only process 0 writes the export and the logs; process 1 writes only its orbax shards.
    assert os.path.isfile(os.path.join(out, "final", "model.safetensors"))
    logged = [json.loads(line)["step"] for line in open(os.path.join(out, "logs.jsonl"))]
    assert logged == sorted(set(logged)) and logged, logged  # each log line once
    writes1 = json.load(open(f"{dump}.1.writes.json"))
    stray = [p for _, p in writes1 if "/state" not in p]
    assert not stray, stray
    assert any("final" in p for _, p in json.load(open(f"{dump}.0.writes.json")))

    # The checkpoint the 2 processes wrote restores in this 1-process, 8-device runtime (orbax reshards
    # onto the target's shardings) and matches the 1-process run's checkpoint of the same step.
    mp_state = _restore_on_one_process(os.path.join(out, "checkpoint-8"))
    one_state = _restore_on_one_process(os.path.join(straight_dir, "checkpoint-8"))
    assert int(mp_state["step"]) == int(one_state["step"]) == 8
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(mp_state)[0], jax.tree_util.tree_leaves(one_state)):
        assert a.sharding.num_devices == 8 and a.sharding.is_fully_replicated, path
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    mp_trainer_state = json.load(open(os.path.join(out, "checkpoint-8", "trainer_state.json")))
    assert (mp_trainer_state["epoch_index"], mp_trainer_state["batches_in_epoch"]) == (1, 2)


def test_fsdp_across_two_processes(launch, tmp_path, straight_run):
    """mesh {"data": 1, "fsdp": 8} over 2 processes x 4 devices: parameters are split across the processes (so the
    model's parameters and process 0's export must be gathered from both), and the result equals the
    1-process data-parallel run (same 8 batch blocks, so the same per-device in-batch negatives)."""
    straight_params, straight_dir = straight_run
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
    _assert_close(p0, straight_params, "fsdp over 2 processes vs data-parallel 1 process")
    exported = SentenceTransformer(os.path.join(out, "final"))
    for path, a in jax.tree_util.tree_flatten_with_path(exported.params)[0]:
        np.testing.assert_array_equal(np.asarray(a), p0[jax.tree_util.keystr(path)], err_msg=jax.tree_util.keystr(path))
    mp_state = _restore_on_one_process(os.path.join(out, "checkpoint-8"))  # fsdp shards from 2 processes, replicated
    one_state = _restore_on_one_process(os.path.join(straight_dir, "checkpoint-8"))
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
