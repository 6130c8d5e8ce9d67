"""Compile once: the persistent compilation cache's location (stcore_jax/compile_cache.py), a second process
loading what the first compiled, and the train step's shapes compiled ahead of time in the background."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from stcore_jax.compile_cache import ENV, default_cache_dir, enable_compilation_cache, resolve_cache_dir
from stcore_jax.losses import CoSENTLoss


def test_cache_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == str(tmp_path / "xdg" / "stcore_jax" / "xla")
    assert resolve_cache_dir() == default_cache_dir()
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == os.path.expanduser("~/.cache/stcore_jax/xla")
    assert resolve_cache_dir(environ={ENV: str(tmp_path / "moved")}) == str(tmp_path / "moved")
    for off in ("0", "off", "OFF", "false", "no"):
        assert resolve_cache_dir(environ={ENV: off}) is None
    # the argument wins over the environment variable
    assert resolve_cache_dir(str(tmp_path / "arg"), environ={ENV: "off"}) == str(tmp_path / "arg")
    assert resolve_cache_dir("off", environ={ENV: str(tmp_path / "moved")}) is None
    assert SentenceTransformerTrainingArguments(output_dir=str(tmp_path)).compilation_cache_dir is None


def test_a_users_cache_setting_is_left_alone(tmp_path):
    """tests/conftest.py sets JAX_COMPILATION_CACHE_DIR (a user's setting): neither an argument nor the default
    moves it."""
    before = jax.config.jax_compilation_cache_dir
    assert before is not None
    assert enable_compilation_cache(str(tmp_path / "elsewhere")) == before
    assert enable_compilation_cache("off") == before
    assert jax.config.jax_compilation_cache_dir == before
    assert not (tmp_path / "elsewhere").exists()


RUN = textwrap.dedent("""
    import json, sys
    from jax import monitoring
    events = {"hits": 0, "compiles": 0, "compile_s": 0.0}
    def on_event(name, **kw):
        if name == "/jax/compilation_cache/cache_hits":
            events["hits"] += 1
    def on_duration(name, secs, **kw):
        if name == "/jax/core/compile/backend_compile_duration":
            events["compiles"] += 1
            events["compile_s"] += secs
    monitoring.register_event_listener(on_event)
    monitoring.register_event_duration_secs_listener(on_duration)
    from datasets import Dataset
    from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from stcore_jax.losses import CoSENTLoss
    model = SentenceTransformer(sys.argv[1])
    data = Dataset.from_dict({"sentence1": ["a b c", "d e"] * 4, "sentence2": ["f g", "h i j k"] * 4,
                              "score": [0.1, 0.9] * 4})
    args = SentenceTransformerTrainingArguments(output_dir=sys.argv[2], max_steps=2, per_device_train_batch_size=1,
                                                save_strategy="no", disable_tqdm=True, save_final_model=False)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=CoSENTLoss(model))
    trainer.train()
    print("EVENTS", json.dumps(events))
""")


def test_a_second_run_loads_what_the_first_compiled(tiny_bert_dir, tmp_path):
    """Two fresh processes of one tiny recipe, the cache at its default place (under $XDG_CACHE_HOME): the first
    writes entries, the second reads them and compiles (almost) nothing."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", ENV)}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    script = tmp_path / "run.py"
    script.write_text(RUN)

    def run():
        out = subprocess.run([sys.executable, str(script), str(tiny_bert_dir), str(tmp_path / "out")], env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.split("EVENTS", 1)[1])

    first = run()
    cache = tmp_path / "xdg" / "stcore_jax" / "xla"
    entries = [p for p in cache.iterdir() if not p.name.endswith("-atime")]
    assert first["hits"] == 0 and entries  # the default directory was used and filled
    second = run()
    assert second["hits"] >= len(entries)  # every entry the first run wrote was loaded
    # JAX's compile event times a cache load too; the small programs under MIN_COMPILE_SECS still compile (the
    # 20% target is bench/compile_time.py's, on the real quickstart)
    assert second["compile_s"] < 0.5 * first["compile_s"], (first, second)


def _trainer(model_dir, data, tmp_path, **kw):
    model = SentenceTransformer(model_dir)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=2, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", disable_tqdm=True, save_final_model=False, sequence_packing=False,
        **kw)
    return SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=CoSENTLoss(model))


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


@pytest.fixture
def bucketed(pairs):
    # one row in 16 twice as long, so that batches land in different length buckets
    return pairs.select(range(64)).map(
        lambda r, i: {"sentence1": r["sentence1"] + " " + r["sentence2"] if i % 16 == 0 else r["sentence1"]},
        with_indices=True)


def test_ahead_of_time_steps_give_the_same_losses(tiny_bert_dir, bucketed, tmp_path):
    aot = _trainer(tiny_bert_dir, bucketed, tmp_path / "aot")
    used = {aot._collate_step(name, [rows], aot.global_batch)["columns"][0]["input_ids"].shape[1]
            for name, rows in aot.epoch_plan(0)}
    assert len(used) >= 2  # the epoch really spans several buckets
    aot.train()
    assert aot._aot is not None and not aot._aot._thread.is_alive()  # compiled ahead, and the thread is gone
    assert aot._aot.compiled == len(used) and aot.compile_count[0] == len(used)  # each shape once, none again

    plain = _trainer(tiny_bert_dir, bucketed, tmp_path / "plain", aot_compile=False)
    plain.train()
    assert plain._aot is None and plain.compile_count[0] == len(used)
    assert len(_losses(aot)) == len(aot.epoch_plan(0)) and _losses(aot) == _losses(plain)  # bit for bit
    for a, b in zip(jax.tree_util.tree_leaves(aot.model.params), jax.tree_util.tree_leaves(plain.model.params),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # control: the comparison sees a difference (other batches, the same compiled shapes)
    other = _trainer(tiny_bert_dir, bucketed, tmp_path / "other", aot_compile=False, data_seed=1)
    other.train()
    assert _losses(other) != _losses(plain)
