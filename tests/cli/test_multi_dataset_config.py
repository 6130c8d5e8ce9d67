"""``stcore-jax train`` configs with several datasets and losses: named ``data.train``/``data.eval`` datasets, a loss
per dataset and per-dataset prompts train a tiny bi-encoder through the CLI with the same step losses as the recipe
written with the Python API (a control with another loss for one dataset differs from its first step of that dataset
on), the prompts reach the tokenized inputs, and bad multi-dataset configs (unknown keys in a dataset entry, a loss
entry or the prompts; a loss dict that does not match the datasets; ambiguous mappings) fail naming the key before a
model loads."""

import csv
import json
import os

import pytest
from datasets import Dataset

from stcore_jax.cli import main
from stcore_jax.config import ConfigError, DatasetConfig, LossConfig, build, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "tpu_configs", "multi-dataset-nli-stsb-gpu-1x.yaml")
PROMPT = "query: "


@pytest.fixture(scope="module")
def rows(stsb_dir):
    """(anchor, positive) pairs and (sentence1, sentence2, score) rows from STS-B train, 24 each, disjoint."""
    from stcore_jax.config.datasets import load_stsb

    ds = load_stsb(str(stsb_dir), "train", 200)
    triples = list(zip(ds["sentence1"], ds["sentence2"], ds["score"]))
    pairs = [(a, b) for a, b, s in triples if s >= 0.6][:24]
    scored = [t for t in triples if t[2] < 0.6][:24]
    assert len(pairs) == len(scored) == 24
    return pairs, scored


@pytest.fixture(scope="module")
def files(rows, tmp_path_factory):
    """The rows as a .jsonl file (anchor, positive) and a .csv file (sentence1, sentence2, score)."""
    pairs, scored = rows
    root = tmp_path_factory.mktemp("multi_data")
    (root / "pairs.jsonl").write_text("".join(json.dumps({"anchor": a, "positive": p}) + "\n" for a, p in pairs))
    with open(root / "sts.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence1", "sentence2", "score"])
        w.writerows([a, b, repr(s)] for a, b, s in scored)
    return str(root / "pairs.jsonl"), str(root / "sts.csv")


def _yaml(tmp_path, model, files, name="multi.yaml", out="run") -> str:
    pairs, sts = files
    text = f"""
model: {{name_or_path: {model}, max_seq_length: 32}}
data:
  train:
    nli: {{path: {pairs}, columns: [anchor, positive]}}
    sts: {{path: {sts}, max_rows: 16}}
  eval:
    nli: {{path: {pairs}, max_rows: 8, columns: [anchor, positive]}}
    sts: {{path: {sts}, max_rows: 8}}
loss:
  nli: {{name: MultipleNegativesRankingLoss, kwargs: {{scale: 20.0}}}}
  sts: {{name: CoSENTLoss}}
arguments:
  output_dir: {tmp_path / out}
  max_steps: 4
  per_device_train_batch_size: 4
  learning_rate: 1.0e-3
  save_strategy: "no"
  save_final_model: false  # nothing to export: the losses are compared
  logging_steps: 1
  eval_strategy: steps
  eval_steps: 4
  length_buckets: [32]
  multi_dataset_batch_sampler: round_robin
  prompts: {{nli: {{anchor: "{PROMPT}"}}}}
  seed: 12
mesh: {{data: 1}}  # one device: compiles faster than over the 8 simulated ones
"""
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def _logs(path, evaluated=True) -> tuple[list, dict | None]:
    """The step losses and the last eval record of a run's logs.jsonl."""
    records = [json.loads(line) for line in open(path)]
    evals = next(r for r in reversed(records) if "eval_nli_loss" in r) if evaluated else None
    return [r["loss"] for r in records if "loss" in r], evals


def _python_run(tmp_path, model_path, rows, sts_loss, evaluate=True):
    """The recipe with the Python API; ``sts_loss``: the loss class of dataset 'sts'. Returns (losses, the eval
    record (None without ``evaluate``), the dataset of each step)."""
    from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from stcore_jax.sentence_transformer.losses import MultipleNegativesRankingLoss
    from stcore_jax.training.callbacks import TrainerCallback

    pairs, scored = rows
    nli = Dataset.from_dict({"anchor": [a for a, _ in pairs], "positive": [p for _, p in pairs]})
    sts = Dataset.from_dict({"sentence1": [r[0] for r in scored], "sentence2": [r[1] for r in scored],
                             "score": [r[2] for r in scored]})
    model = SentenceTransformer(model_path)
    model.max_seq_length = 32
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, learning_rate=1e-3,
        save_strategy="no", logging_steps=1, eval_strategy="steps" if evaluate else "no", eval_steps=4, length_buckets=(32,),
        multi_dataset_batch_sampler="round_robin", prompts={"nli": {"anchor": PROMPT}}, seed=12,
        mesh_shape={"data": 1})
    order = []

    class Order(TrainerCallback):
        def on_step_end(self, args, state, control, dataset_name=None, **kwargs):
            order.append(dataset_name)

    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset={"nli": nli, "sts": sts.select(range(16))},
        eval_dataset={"nli": nli.select(range(8)), "sts": sts.select(range(8))},
        loss={"nli": MultipleNegativesRankingLoss(model, scale=20.0), "sts": sts_loss(model)}, callbacks=[Order()])
    trainer.train()
    return (*_logs(tmp_path / "logs.jsonl", evaluate), order)


def test_cli_trains_several_datasets_and_losses_as_python_does(tmp_path, tiny_cli_model, files, rows, monkeypatch,
                                                               capsys):
    """4 steps (round robin: nli, sts, nli, sts) through ``stcore-jax train``; the step and per-dataset eval losses
    equal the Python recipe's, and the prompt reached the anchors' token ids (only theirs)."""
    from stcore_jax.sentence_transformer.losses import CoSENTLoss, CosineSimilarityLoss

    made = []
    plain_trainer_class = build.trainer_class

    def recording(cfg):
        class Recorded(plain_trainer_class(cfg)):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                made.append(self)
        return Recorded

    monkeypatch.setattr(build, "trainer_class", recording)
    assert main(["train", _yaml(tmp_path, tiny_cli_model, files)]) == 0
    assert "trained 4 steps" in capsys.readouterr().out
    losses, evals = _logs(tmp_path / "run" / "logs.jsonl")
    assert len(losses) == 4 and {"eval_nli_loss", "eval_sts_loss"} <= set(evals)

    (trainer,) = made
    assert set(trainer.loss) == {"nli", "sts"}
    assert type(trainer.loss["nli"]).__name__ == "MultipleNegativesRankingLoss" and trainer.loss["nli"].scale == 20.0
    assert type(trainer.loss["sts"]).__name__ == "CoSENTLoss"
    # the prompt: on the nli anchors (train and eval), nowhere else; the anchors' ids are the prompted text's
    tokenize_ids = trainer.model.input_module.tokenize_ids
    for prepared in (trainer.train_prepared, trainer.eval_prepared):
        nli, sts = prepared["nli"], prepared["sts"]
        assert nli.prompt_lengths[0] > 0 and nli.prompt_lengths[1] is None and sts.prompt_lengths == [None, None]
        anchors = list(nli.texts[0])
        assert nli.token_ids[0]["input_ids"] == tokenize_ids([PROMPT + a for a in anchors])["input_ids"]
        assert nli.token_ids[0]["input_ids"] != tokenize_ids(anchors)["input_ids"]
        assert nli.token_ids[1]["input_ids"] == tokenize_ids(list(nli.texts[1]))["input_ids"]

    ours, ours_eval, order = _python_run(tmp_path / "py", tiny_cli_model, rows, CoSENTLoss)
    assert order == ["nli", "sts", "nli", "sts"]
    assert losses == ours, (losses, ours)
    assert [evals[k] for k in ("eval_nli_loss", "eval_sts_loss")] == [ours_eval[k] for k in ("eval_nli_loss",
                                                                                             "eval_sts_loss")]
    # control: another loss on 'sts' leaves step 1 (nli) as it was and changes step 2 (the first sts step) on (no
    # evaluation: the same schedule and MNRL step as above, which the compilation cache then serves)
    other, _, _ = _python_run(tmp_path / "control", tiny_cli_model, rows, CosineSimilarityLoss, evaluate=False)
    assert other[0] == losses[0] and abs(other[1] - losses[1]) > 1e-3, (other, losses)


def test_forms_and_inheritance(files):
    """A source string (as before), one spec mapping, named datasets; unset keys come from the data section, and
    relative paths in a spec resolve against the config's directory."""
    pairs, sts = files
    p = os.path.join(os.path.dirname(sts), "forms.yaml")  # beside the data: 'sts.csv' below is relative
    with open(p, "w") as f:
        f.write(f"data: {{train: {sts}, columns: [sentence1, sentence2, score], max_train_rows: 5}}\n")
    cfg = load_config(p)
    assert cfg.data.train == sts and cfg.data.datasets("train") == (
        {"train": DatasetConfig(path=sts, format="auto", split="train", columns=["sentence1", "sentence2", "score"],
                                max_rows=5, hard_negatives=cfg.data.hard_negatives)}, False)
    assert isinstance(cfg.loss, LossConfig) and len(build.build_datasets(cfg)[0]) == 5

    one = load_config(p, ["data.train={path: sts.csv, max_rows: 3}", "data.eval={path: " + sts + ", split: test}"])
    assert one.data.train == DatasetConfig(path=sts, format="auto", split="train",
                                           columns=["sentence1", "sentence2", "score"], max_rows=3,
                                           hard_negatives=one.data.hard_negatives)
    assert one.data.eval.split == "test" and one.data.eval.hard_negatives.model is None
    train, ev = build.build_datasets(one)
    assert len(train) == 3 and train.column_names == ["sentence1", "sentence2", "score"]

    named = load_config(p, ["data.columns=null", f"data.train={{a: {pairs}, b: {{path: sts.csv, max_rows: 2}}}}",
                            "arguments.prompts={a: 'q: ', b: {sentence1: 'x: '}}"])
    specs, is_dict = named.data.datasets("train")
    assert is_dict and list(specs) == ["a", "b"] and specs["a"].max_rows == 5 and specs["b"].max_rows == 2
    train, _ = build.build_datasets(named)
    assert {n: (d.column_names, len(d)) for n, d in train.items()} == {
        "a": (["anchor", "positive"], 5), "b": (["sentence1", "sentence2", "score"], 2)}
    # the one loss applies to every dataset: the trainer gets one loss object
    assert isinstance(named.loss, LossConfig)
    # the evaluator reads the named eval dataset evaluator.data names
    ev = load_config(p, ["data.columns=null", f"data.eval={{a: {pairs}, b: sts.csv}}",
                         "evaluator={name: EmbeddingSimilarityEvaluator, data: b, max_rows: 4}"])
    evaluator = build.build_evaluator(ev)
    scored = build.load_spec(ev.data.eval["b"], "b")
    assert evaluator.sentences1 == scored["sentence1"][:4] and evaluator.scores == scored["score"][:4]


def test_example_config():
    """tpu_configs/multi-dataset-nli-stsb-gpu-1x.yaml (its mesh is checked with the other tpu_configs in
    test_config.py): two hub datasets, a loss each, the evaluator on one named eval dataset."""
    cfg = load_config(EXAMPLE)
    train, named = cfg.data.datasets("train")
    assert named and list(train) == ["nli", "stsb"] and train["nli"].subset == "triplet"
    assert {n: lo.name for n, lo in cfg.loss.items()} == {"nli": "MultipleNegativesRankingLoss", "stsb": "CoSENTLoss"}
    assert list(cfg.data.datasets("eval")[0]) == ["nli", "stsb"] and cfg.evaluator.data == "stsb"
    assert cfg.arguments.multi_dataset_batch_sampler.value == "proportional"


def _bad_yaml(tmp_path, files, family_lines="") -> str:
    pairs, sts = files
    p = tmp_path / "bad.yaml"
    p.write_text(f"""
model: {{name_or_path: some/model{family_lines}}}
data:
  train:
    nli: {{path: {pairs}, columns: [anchor, positive]}}
    sts: {{path: {sts}, columns: [sentence1, sentence2, score]}}
  eval: {{nli: {{path: {pairs}, columns: [anchor, positive]}}}}
loss:
  nli: {{name: MultipleNegativesRankingLoss}}
  sts: {{name: CoSENTLoss}}
arguments: {{output_dir: out, max_steps: 2, eval_strategy: steps, eval_steps: 1,
             prompts: {{nli: {{anchor: "q: "}}, sts: "s: "}}}}
""")
    return str(p)


@pytest.mark.parametrize("overrides, match", [
    # unknown keys: in a dataset entry, a loss entry, the prompts
    (["data.train.nli.splt=dev"], r"config key 'data.train.nli.splt' is unknown; allowed keys under 'data.train.nli': "
                                  r"\['columns', 'format', 'hard_negatives', 'max_rows', 'path', 'score_scale', "
                                  r"'split', 'subset'\]"),
    (["data.eval.nli={path: x, max_row: 2}"], r"'data.eval.nli.max_row' is unknown; allowed keys under 'data.eval.nli'"),
    (["loss.nli.kwarg={scale: 2}"], r"config key 'loss.nli.kwarg' is unknown; allowed keys under 'loss.nli': "
                                    r"\['kwargs', 'name'\]"),
    (["loss.nli.kwargs.temperature=2"], r"'loss.nli.kwargs.temperature': MultipleNegativesRankingLoss has no argument "
                                        r"'temperature'"),
    (["loss.sts.name=CoolLoss"], r"'loss.sts.name': unknown loss 'CoolLoss'; allowed values"),
    (["arguments.prompts.nli.anchr=q"], r"config key 'arguments.prompts.nli.anchr' is unknown; allowed keys under "
                                        r"'arguments.prompts.nli' \(the columns of dataset 'nli'\): \['anchor', "
                                        r"'positive'\]"),
    (["arguments.prompts.nlii={anchor: q}"], r"'arguments.prompts.nlii': a mapping is one dataset's \{column: "
                                             r"prompt\}, but 'nlii' is not a dataset name \(the named datasets are "
                                             r"\['nli', 'sts'\]\)"),
    (["arguments.prompts.snippet=x"], r"'arguments.prompts.snippet' is unknown \(not a dataset name or a column\); "
                                      r"allowed keys under 'arguments.prompts': \['nli', 'sts', 'anchor', "),
    (["arguments.prompts.sts=[1]"], r"'arguments.prompts.sts' must be str \(a prompt\) or a mapping"),
    # the loss dict against the datasets
    (["loss={nli: {name: MultipleNegativesRankingLoss}}", "arguments.eval_strategy='no'"],
     r"config key 'loss': one loss per training dataset, but datasets \['sts'\] have no loss \(data.train has "
     r"\['nli', 'sts'\]\)"),
    (["loss.stsb={name: CoSENTLoss}"], r"'loss': one loss per training dataset, but \['stsb'\] are not datasets of "
                                       r"data.train"),
    (["loss.name=CoSENTLoss"], r"config key 'loss' mixes one loss's keys \['name'\] with dataset names \['nli', "
                               r"'sts'\]"),
    (["data.train=quickstart", "arguments.prompts=null"], r"config key 'loss' is keyed by dataset names \['nli', "
                                                          r"'sts'\], but data.train is not several named datasets"),
    (["data.eval=quickstart"], r"config key 'data.eval': the losses are per dataset .* needs named eval datasets"),
    (["data.eval.other=quickstart"], r"'data.eval': eval datasets \['other'\] have no loss"),
    # ambiguous or malformed dataset mappings
    (["data.train.split=dev"], r"config key 'data.train' mixes one dataset's keys \['split'\] with other keys "
                               r"\['nli', 'sts'\]"),
    (["data.train={columns: {path: x}}", "loss={name: CoSENTLoss}", "arguments.prompts=null"],
     r"'data.train.columns': a dataset cannot be named 'columns', a dataset spec key"),
    (["data.train.nli={split: dev}"], r"config key 'data.train.nli.path' is required"),
    (["data.train.nli.path=no/such.jsonl"], r"'data.train.nli.path': 'no/such.jsonl' does not exist"),
    (["data.train.nli.format=xml"], r"'data.train.nli.format': 'xml' is not supported"),
    (["data.train.nli.max_rows=0"], r"'data.train.nli.max_rows' must be >= 1, got 0"),
    (["data.train={1: quickstart}"], r"config key 'data.train': dataset names must be non-empty strings, got 1"),
    (["data.train=[a]"], r"config key 'data.train' must be a source .*, got list"),
    (["data.eval.nli={path: quickstart, hard_negatives: {model: m}}"],
     r"'data.eval.nli.hard_negatives': negatives are mined for training datasets"),
    (["data.train.nli.hard_negatives={model: m, kwargs: {num_negative: 5}}"],
     r"'data.train.nli.hard_negatives.kwargs.num_negative': mine_hard_negatives has no argument"),
    (["evaluator.name=EmbeddingSimilarityEvaluator"], r"'evaluator.data': data.eval holds several datasets \['nli'\]"),
    (["arguments.multi_dataset_batch_sampler=random"], r"multi_dataset_batch_sampler='random' is not a known sampler"),
])
def test_bad_multi_dataset_config_names_the_key(tmp_path, files, overrides, match, monkeypatch):
    import stcore_jax.sentence_transformer as st

    monkeypatch.setattr(st.SentenceTransformer, "__init__", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("a model was loaded before the config was checked")))
    with pytest.raises(ConfigError, match=match):
        load_config(_bad_yaml(tmp_path, files), overrides)


def test_other_families(tmp_path, files):
    """Per-dataset losses and prompts are checked as the family's: a CrossEncoder's prompts are per dataset only,
    a Sparse* loss alone is refused in a loss entry too."""
    ce = [r"model.family=cross_encoder", "loss.nli.name=MultipleNegativesRankingLoss",
          "loss.sts.name=BinaryCrossEntropyLoss", "arguments.prompts={nli: 'q: ', sts: 's: '}"]
    cfg = load_config(_bad_yaml(tmp_path, files), ce)
    assert {n: lo.name for n, lo in cfg.loss.items()} == {"nli": "MultipleNegativesRankingLoss",
                                                          "sts": "BinaryCrossEntropyLoss"}
    with pytest.raises(ConfigError, match=r"CrossEncoder prompts cannot be per-column"):
        load_config(_bad_yaml(tmp_path, files), ce[:-1])
    with pytest.raises(ConfigError, match=r"'loss.nli.name': SparseMultipleNegativesRankingLoss should not be used "
                                          r"alone; wrap it in SpladeLoss"):
        load_config(_bad_yaml(tmp_path, files), ["model.family=sparse_encoder",
                                                 "loss.nli.name=SparseMultipleNegativesRankingLoss",
                                                 "loss.sts.name=SparseCoSENTLoss"])


def test_prompt_columns_checked_once_rows_load(tmp_path, files, capsys, monkeypatch):
    """Without ``columns`` the prompts' column keys are checked when the rows load, still before the model."""
    monkeypatch.setattr(build, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    path = _bad_yaml(tmp_path, files)
    assert main(["train", path, "--set", "data.train.nli.columns=null", "--set", "arguments.prompts.nli={anchr: q}",
                 "--set", "arguments.eval_strategy='no'"]) == 2
    err = capsys.readouterr().err
    assert "config key 'arguments.prompts.nli.anchr' is unknown; allowed keys under 'arguments.prompts.nli' (the " \
           "columns of dataset 'nli'): ['anchor', 'positive']" in err, err
