"""Streaming training data (``datasets.IterableDataset``): same steps as map-style data, exact resume,
errors before anything compiles, epochs that wrap when the stream ends (stcore_jax/training/stream.py)."""

import itertools
import json
import logging
import os

import jax
import numpy as np
import pytest
from datasets import Dataset, Features, IterableDataset, Value

from stcore_jax import (
    BatchSamplers,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from stcore_jax.losses import CoSENTLoss, MultipleNegativesRankingLoss
from stcore_jax.sentence_transformer.stream import StreamSource
from stcore_jax.training import TrainerCallback
from stcore_jax.training.stream import StreamPosition, epoch_groups, group_rows

N_ROWS = 40  # global batch 16: three steps per epoch (16, 16, 8), so 20 steps span 7 epochs


def _args(out, **kw):
    base = dict(output_dir=str(out), max_steps=20, per_device_train_batch_size=2, learning_rate=1e-3, warmup_steps=2,
                logging_steps=5, save_strategy="no", disable_tqdm=True, save_final_model=False, seed=3,
                length_buckets=(32,))  # one bucket: one compile per run
    base.update(kw)
    return SentenceTransformerTrainingArguments(**base)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


class Recorder(TrainerCallback):
    """Each step's (dataset, rows); optionally stops the run after ``stop_at`` steps (an interruption)."""

    def __init__(self, stop_at=None):
        self.steps, self.epochs, self.stop_at = [], [], stop_at

    def on_step_end(self, args, state, control, dataset_name=None, rows=None, **kw):
        self.steps.append((state.global_step, dataset_name, rows))
        self.epochs.append(state.epoch)
        if state.global_step == self.stop_at:
            control.should_training_stop = True


@pytest.fixture(scope="module", autouse=True)
def compile_once(tmp_path_factory):
    """A persistent compilation cache for this module: its runs compile the very same step, so only the
    first one pays for XLA (the others load the executable); the settings are restored afterwards."""
    from jax.experimental.compilation_cache import compilation_cache

    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_persistent_cache_min_entry_size_bytes")
    saved = {n: getattr(jax.config, n) for n in names}
    compilation_cache.reset_cache()
    for n, v in zip(names, (str(tmp_path_factory.mktemp("jax_cache")), 0, -1)):
        jax.config.update(n, v)
    yield
    for n, v in saved.items():
        jax.config.update(n, v)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def rows(stsb_train):
    s1, s2, sc = stsb_train
    data = {"sentence1": s1[:N_ROWS], "sentence2": s2[:N_ROWS], "score": [x / 5 for x in sc[:N_ROWS]]}
    assert len(set(data["sentence1"])) == N_ROWS  # unique, so a text names its row
    return data


def _stream(rows):
    """A shuffled stream (reshuffled per epoch through set_epoch) that records the epochs it is set to."""
    stream = Dataset.from_dict(rows).to_iterable_dataset(num_shards=4).shuffle(seed=11, buffer_size=8)
    stream.epochs_set = []
    original = stream.set_epoch

    def set_epoch(epoch):
        stream.epochs_set.append(epoch)
        original(epoch)

    stream.set_epoch = set_epoch
    return stream


def _stream_order(rows, epoch):
    """The row indices a fresh copy of the stream yields in ``epoch``."""
    stream = _stream(rows)
    stream.set_epoch(epoch)
    index = {t: i for i, t in enumerate(rows["sentence1"])}
    return [index[ex["sentence1"]] for ex in stream]


def _train_stream(model_dir, rows, out, stop_at=None, resume=None):
    model = SentenceTransformer(model_dir)
    rec, stream = Recorder(stop_at), _stream(rows)
    save = {"save_strategy": "steps", "save_steps": 10} if stop_at or resume else {}
    trainer = SentenceTransformerTrainer(model=model, args=_args(out, **save), train_dataset=stream,
                                         loss=CoSENTLoss(model), callbacks=[rec])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, rec, stream, _leaves(model.params)


@pytest.fixture(scope="module")
def straight(tiny_bert_dir, rows, tmp_path_factory):
    """20 steps straight on the shuffled stream."""
    return _train_stream(tiny_bert_dir, rows, tmp_path_factory.mktemp("straight"))


def test_stream_equals_map_style_with_the_same_batches(straight, tiny_bert_dir, rows, tmp_path):
    trainer, rec, stream, params = straight
    # Map-style data with a batch sampler that yields exactly the stream's order of each epoch.
    class StreamOrderSampler:
        def __init__(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
            self.batch_size, self.epoch = batch_size, 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            order = _stream_order(rows, self.epoch)
            return iter([order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)])

    model = SentenceTransformer(tiny_bert_dir)
    map_rec = Recorder()
    # Streams are not packed; the map-style run pads too, so both compute alike (packing is tested apart).
    SentenceTransformerTrainer(model=model, args=_args(tmp_path, batch_sampler=StreamOrderSampler, sequence_packing=False),
                               train_dataset=Dataset.from_dict(rows), loss=CoSENTLoss(model), callbacks=[map_rec]).train()

    # The stream's batches are the map-style batches: stream indices within each epoch are row indices
    # of the stream's order, so map them through it.
    orders = {e: _stream_order(rows, e) for e in range(7)}
    as_rows = [[[orders[e][i] for i in mb] for mb in r] for (_, _, r), e in zip(rec.steps, _epochs_of(rec))]
    assert as_rows == [r for _, _, r in map_rec.steps]
    assert [len(r[0]) for _, _, r in rec.steps[:3]] == [16, 16, 8]  # the last batch of an epoch is partial
    assert orders[0] != orders[1]  # set_epoch reshuffles, so the comparison covers the epoch wrap
    moved = max(np.abs(a - b).max() for a, b in zip(params, _leaves(SentenceTransformer(tiny_bert_dir).params)))
    assert moved > 1e-4
    for a, b in zip(params, _leaves(model.params)):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=0)
    assert trainer.compile_count[0] == 1  # one length bucket in use: one compile


def _epochs_of(rec):
    """The epoch index of each recorded step: a stream index going back to 0 starts a new epoch."""
    epoch, out, last = 0, [], None
    for _, _, r in rec.steps:
        if last is not None and r[0][0] <= last:
            epoch += 1
        out.append(epoch)
        last = r[0][0]
    return out


def test_stream_end_wraps_into_the_next_epoch(straight):
    trainer, rec, stream, _ = straight
    assert trainer.state.global_step == 20
    # 40 examples, 16 per step: steps 1-3 are epoch 0 (rows 0-15, 16-31, 32-39), then it starts over.
    starts = [r[0][0] for _, _, r in rec.steps]
    assert starts == [0, 16, 32] * 6 + [0, 16]
    assert stream.epochs_set == list(range(7))  # set_epoch before each pass, as the HF Trainer does
    assert _epochs_of(rec) == [s // 3 for s in range(20)]
    # state.epoch: epoch index + steps into it / max_steps (the HF Trainer's rule without a length)
    assert rec.epochs[3] == pytest.approx(1 + 1 / 20) and rec.epochs[-1] == pytest.approx(6 + 2 / 20)


def test_resume_is_bitwise_exact(straight, tiny_bert_dir, rows, tmp_path):
    _, rec, _, params = straight
    _, first, _, _ = _train_stream(tiny_bert_dir, rows, tmp_path, stop_at=10)
    state = json.load(open(os.path.join(tmp_path, "checkpoint-10", "trainer_state.json")))
    # step 10 is one step into epoch 3 (three steps per epoch): 16 examples of that pass consumed
    assert state["stream"] == {"epoch": 3, "consumed": {"train": 16}, "steps": 1}
    trainer, resumed, stream, resumed_params = _train_stream(tiny_bert_dir, rows, tmp_path, resume=True)
    assert [s for s, _, _ in resumed.steps] == list(range(11, 21))
    assert first.steps + resumed.steps == rec.steps  # the same batches, in the same order
    assert stream.epochs_set == [3, 4, 5, 6]  # resumed inside epoch 3, without replaying epochs 0-2
    for a, b in zip(params, resumed_params):
        np.testing.assert_array_equal(a, b)


# -- errors before anything compiles ---------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tiny_bert_dir):
    return SentenceTransformer(tiny_bert_dir)


def _untouched_stream():
    """A stream that records whether anything read it."""
    read = []

    def gen():
        read.append(True)
        yield {"a": "x y", "b": "y z", "score": 0.5}

    return IterableDataset.from_generator(gen, features=Features(a=Value("string"), b=Value("string"),
                                                                  score=Value("float32"))), read


def test_max_steps_is_required(model, tmp_path):
    stream, read = _untouched_stream()
    with pytest.raises(ValueError, match=r"IterableDataset.*no length.*max_steps.*got max_steps=-1"):
        SentenceTransformerTrainer(model=model, args=_args(tmp_path, max_steps=-1), train_dataset=stream,
                                   loss=CoSENTLoss(model))
    assert read == []  # rejected before reading (or compiling) anything


def test_wrong_column_count(model, tmp_path):
    with_features = Dataset.from_dict({"a": ["x y"], "b": ["y z"], "c": ["z w"], "score": [0.5]}).to_iterable_dataset()

    def gen():
        yield {"a": "x y", "b": "y z", "c": "z w", "score": 0.5}

    without_features = IterableDataset.from_generator(gen)
    assert without_features.column_names is None  # so the columns come from the first example
    for stream in (with_features, without_features):
        with pytest.raises(ValueError, match=r"'train' with input columns \['a', 'b', 'c'\].*CoSENTLoss.*2"):
            SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset=stream, loss=CoSENTLoss(model))
    # a dict of streams: each is checked against its own loss
    with pytest.raises(ValueError, match=r"'nli' with input columns \['a', 'b', 'c'\] and label 'score'.*"
                                         r"MultipleNegativesRankingLoss"):
        SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset={"sts": _untouched_stream()[0],
                                   "nli": with_features}, loss={"sts": CoSENTLoss(model),
                                                                "nli": MultipleNegativesRankingLoss(model)})


def test_bad_row_is_reported_with_its_stream_index(model, tmp_path):
    texts = [f"sentence number {i}" for i in range(20)]
    texts[5] = None
    stream = Dataset.from_dict({"a": texts, "b": texts[::-1], "score": [0.5] * 20}).to_iterable_dataset()
    trainer = SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset=stream, loss=CoSENTLoss(model))
    with pytest.raises(ValueError, match=r"Dataset 'train', column 'a', row 5: the text is None"):
        trainer.train()
    assert trainer.compile_count[0] == 0
    # Rows are validated per step, numbered by their place in the stream; labels too.
    source = trainer.train_streams["train"]
    good = {"a": "x y", "b": "y z", "score": 0.5}
    with pytest.raises(ValueError, match=r"label column 'score', row 33: the label is NaN"):
        source.prepare([good, good, {**good, "score": float("nan")}], first_row=31)
    with pytest.raises(ValueError, match=r"column 'b', row 32: the text is empty"):
        source.prepare([good, {**good, "b": "  "}], first_row=31)


def test_rejected_combinations(model, tmp_path, caplog):
    stream = Dataset.from_dict({"a": ["x y"] * 4, "b": ["y z"] * 4, "score": [0.5] * 4}).to_iterable_dataset()
    mapped = Dataset.from_dict({"a": ["x y"], "b": ["y z"], "score": [0.5]})
    with pytest.raises(ValueError, match=r"\['s'\] are IterableDatasets.*\['m'\] are not"):
        SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset={"s": stream, "m": mapped},
                                   loss=CoSENTLoss(model))
    with pytest.raises(ValueError, match=r"eval.*train_dataset only"):
        SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset=stream, eval_dataset=stream,
                                   loss=CoSENTLoss(model))
    # batch_sampler values do not apply to a stream: the reference warns and batches in order.
    with caplog.at_level(logging.WARNING, logger="stcore_jax.training.stream"):
        SentenceTransformerTrainer(model=model, args=_args(tmp_path, batch_sampler=BatchSamplers.NO_DUPLICATES),
                                   train_dataset=stream, loss=CoSENTLoss(model))
    assert "you cannot specify a batch sampler" in caplog.text


def test_model_card_describes_a_stream(model, tmp_path):
    from stcore_jax.sentence_transformer.model_card import render_model_card

    stream = Dataset.from_dict({"query": ["x y"] * 4, "answer": ["y z"] * 4}).to_iterable_dataset()
    SentenceTransformerTrainer(model=model, args=_args(tmp_path), train_dataset=stream,
                               loss=MultipleNegativesRankingLoss(model))
    (info,) = model.model_card_data.train_dataset_info
    assert info["size"] is None and list(info["columns"]) == ["query", "answer"] and info["samples"] == []
    card = render_model_card(model)
    assert "* Size: unknown (streamed) training samples" in card and "<code>query</code>" in card


def test_resume_needs_a_streaming_checkpoint():
    from stcore_jax.training.stream import resume_position

    saved = {"global_step": 10, "stream": {"epoch": 3, "consumed": {"train": 16}, "steps": 1}}
    assert resume_position(saved, "ckpt") == StreamPosition(3, {"train": 16}, 1)
    with pytest.raises(ValueError, match=r"out/checkpoint-3 was not written by a streaming run"):
        resume_position({"global_step": 3, "epoch_index": 0, "batches_in_epoch": 3}, "out/checkpoint-3")


# -- the stream pieces, without a model --------------------------------------------------------------

def _numbers(n):
    return Dataset.from_dict({"t": [f"t{i}" for i in range(n)]}).to_iterable_dataset()


def _texts(groups):
    return [[[ex["t"] for ex in mb] for mb in g.micro_batches] for g in groups]


def test_epoch_groups_batches_in_order_and_stop_at_the_end():
    groups = list(epoch_groups({"x": _numbers(10)}, 4, 1, False, StreamPosition()))
    assert _texts(groups) == [[["t0", "t1", "t2", "t3"]], [["t4", "t5", "t6", "t7"]], [["t8", "t9"]]]
    assert [g.first_row for g in groups] == [0, 4, 8]
    assert groups[-1].position == StreamPosition(0, {"x": 10}, 3)
    # drop_last drops the short batch; accumulation drops a step short of micro-batches
    assert len(list(epoch_groups({"x": _numbers(10)}, 4, 1, True, StreamPosition()))) == 2
    acc = list(epoch_groups({"x": _numbers(10)}, 3, 2, False, StreamPosition()))
    assert _texts(acc) == [[["t0", "t1", "t2"], ["t3", "t4", "t5"]], [["t6", "t7", "t8"], ["t9"]]]
    examples, local, indices = group_rows(acc[1])
    assert local == [[0, 1, 2], [3]] and indices == [[6, 7, 8], [9]] and examples[3]["t"] == "t9"


def test_epoch_groups_resume_mid_epoch_and_round_robin():
    whole = list(epoch_groups({"x": _numbers(10)}, 4, 1, False, StreamPosition()))
    rest = list(epoch_groups({"x": _numbers(10)}, 4, 1, False, whole[0].position))
    assert _texts(rest) == _texts(whole[1:])
    # two streams take turns; the epoch ends at the first turn whose stream is exhausted
    two = list(epoch_groups({"x": _numbers(10), "y": _numbers(5)}, 4, 1, False, StreamPosition()))
    assert [g.name for g in two] == ["x", "y", "x", "y", "x"]
    assert _texts(two)[3] == [["t4"]] and two[-1].position == StreamPosition(0, {"x": 10, "y": 5}, 5)
    resumed = list(epoch_groups({"x": _numbers(10), "y": _numbers(5)}, 4, 1, False, two[2].position))
    assert [(g.name, g.first_row) for g in resumed] == [(g.name, g.first_row) for g in two[3:]]


def test_a_stream_without_a_single_step_is_an_error():
    with pytest.raises(ValueError, match=r"'x': the stream ended before the first step of epoch 2.*yielded 3"):
        list(epoch_groups({"x": _numbers(3)}, 4, 1, True, StreamPosition(2)))
    def nothing():
        yield from ()

    empty = IterableDataset.from_generator(nothing, features=Features(t=Value("string")))
    with pytest.raises(ValueError, match=r"'x': the stream ended before the first step of epoch 0.*yielded 0"):
        list(epoch_groups({"x": empty}, 4, 1, False, StreamPosition()))
    # resumed at the very end of an epoch: nothing left is no error, the next epoch follows
    assert list(epoch_groups({"x": _numbers(3)}, 4, 1, False, StreamPosition(0, {"x": 3}, 1))) == []


def test_featureless_stream_columns_come_from_the_first_example_without_losing_it(model):
    def gen():
        for i in range(3):
            yield {"q": f"q {i}", "d": f"d {i}"}

    stream = IterableDataset.from_generator(gen)
    source = StreamSource(stream, "s", MultipleNegativesRankingLoss(model), model.input_module)
    assert (source.inputs, source.label) == (["q", "d"], None)
    (group,) = epoch_groups({"s": stream}, 8, 1, False, StreamPosition())
    assert [ex["q"] for ex in group.micro_batches[0]] == ["q 0", "q 1", "q 2"]
    prepared = source.prepare(group_rows(group)[0], 0)
    assert prepared.texts == [["q 0", "q 1", "q 2"], ["d 0", "d 1", "d 2"]] and prepared.labels is None


def test_stream_skip_is_iterate_and_drop_on_a_shuffled_stream():
    stream = _numbers(30).shuffle(seed=1, buffer_size=5)
    stream.set_epoch(2)
    full = [ex["t"] for ex in stream]
    from stcore_jax.training.stream import open_stream

    assert [ex["t"] for ex in open_stream(stream, 2, 7)] == full[7:]
    assert [ex["t"] for ex in itertools.islice(open_stream(stream, 3, 0), 30)] != full  # another epoch, another order
