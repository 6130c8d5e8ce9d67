"""The CrossEncoder README against the card sentence-transformers 6.2 writes for the same short training run.

One tiny random BertForSequenceClassification, the same 16 training / 8 evaluation STS-B pairs, BCE loss,
2 steps of batch 4, a CrossEncoderCorrelationEvaluator at step 2 and once after training, the same card data
(language, license, model id, dataset names); once through stcore_jax's CrossEncoderTrainer, once through the
reference's. Both READMEs are split at their headings: the same headings in the same order, the same front-matter
keys and tags, every section equal (those with the trained model's numbers after the numbers are masked: the
two runs train with different numerics), except the documented differences: the first sentence, the
architecture string, the hyperparameter lists (other arguments), the durations and the framework versions. The
dataset sections (token statistics, samples, loss and its parameters) are equal byte for byte. Our own numbers
are checked against their sources: model-index and metric tables against the evaluator's output, the
training-log table against the trainer's log history.
"""

from __future__ import annotations

import difflib
import re

import numpy as np
import pytest
import torch
import transformers as tf
import yaml
from datasets import Dataset

import tiny_models
from stcore_jax.cross_encoder import (
    CrossEncoder,
    CrossEncoderModelCardData,
    CrossEncoderTrainer,
    CrossEncoderTrainingArguments,
)
from stcore_jax.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator
from stcore_jax.cross_encoder.losses import BinaryCrossEntropyLoss
from stcore_jax.util import read_sts

CARD = dict(language="en", license="apache-2.0", model_id="org/ce-tiny", train_datasets=[{"name": "stsb-tiny"}],
            eval_datasets=[{"name": "stsb-tiny-dev"}], local_files_only=True)
ARGS = dict(max_steps=2, per_device_train_batch_size=4, learning_rate=1e-4, logging_steps=1, eval_strategy="steps",
            eval_steps=2, save_strategy="no", report_to="none")
OUR_INTRO = " with stcore_jax (JAX/Flax), in the format of the [sentence-transformers](https://www.SBERT.net) library."
REF_INTRO = " using the [sentence-transformers](https://www.SBERT.net) library."
# Sections whose content differs on purpose (compared separately below).
DIFFERENT = {"### Full Model Architecture", "#### Non-Default Hyperparameters", "#### All Hyperparameters",
             "### Training Time", "### Framework Versions"}
# Sections holding the trained model's numbers (its scores, metrics and losses): compared with numbers masked.
NUMERIC = {"### Direct Usage (Sentence Transformers)", "#### Cross Encoder Correlation", "### Training Logs"}


@pytest.fixture(scope="module")
def rows(stsb_dir):
    s1, s2, sc = read_sts(stsb_dir / "sts-train.csv")
    return s1[:32], s2[:32], [x / 5 for x in sc[:32]]


@pytest.fixture(scope="module")
def ce_dirs(tmp_path_factory, minilm_path, rows):
    """Tiny random BertForSequenceClassification dirs with 1 and 3 labels."""
    s1, s2, _ = rows
    root = tmp_path_factory.mktemp("ce_card")
    plain = tiny_models.build_hf("bert", str(root / "plain"), str(minilm_path), s1 + s2)
    out = {}
    for n in (1, 3):
        torch.manual_seed(10 + n)
        model = tf.AutoModelForSequenceClassification.from_config(tf.AutoConfig.from_pretrained(plain, num_labels=n))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        out[n] = str(root / f"cls{n}")
        model.save_pretrained(out[n])
        tf.AutoTokenizer.from_pretrained(plain).save_pretrained(out[n])
    return out


@pytest.fixture(scope="module")
def ce_path(ce_dirs):
    return ce_dirs[1]


def _data(rows):
    s1, s2, sc = rows
    train = Dataset.from_dict({"sentence1": s1[:16], "sentence2": s2[:16], "score": sc[:16]})
    dev = Dataset.from_dict({"sentence1": s1[16:24], "sentence2": s2[16:24], "score": sc[16:24]})
    return train, dev, list(zip(s1[24:32], s2[24:32])), sc[24:32]


@pytest.fixture(scope="module")
def ours(ce_path, rows, tmp_path_factory):
    """(README text, the evaluator's last metrics, the trainer's log history, the model)."""
    out = tmp_path_factory.mktemp("ours")
    train, dev, pairs, gold = _data(rows)
    model = CrossEncoder(ce_path, model_card_data=CrossEncoderModelCardData(**CARD))
    ev = CrossEncoderCorrelationEvaluator(pairs, gold, name="sts-dev")
    args = CrossEncoderTrainingArguments(output_dir=str(out / "run"), mesh_shape={"data": 1}, length_buckets=1,
                                         disable_tqdm=True, save_final_model=False, **ARGS)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                                  loss=BinaryCrossEntropyLoss(model), evaluator=ev)
    trainer.train()
    metrics = ev(model)
    model.save_pretrained(str(out / "saved"))
    return (out / "saved" / "README.md").read_text(encoding="utf-8"), metrics, trainer.state.log_history, model


@pytest.fixture(scope="module")
def reference(ce_path, rows, tmp_path_factory):
    from sentence_transformers.cross_encoder import (
        CrossEncoder as RefCE,
        CrossEncoderModelCardData as RefCard,
        CrossEncoderTrainer as RefTrainer,
        CrossEncoderTrainingArguments as RefArgs,
    )
    from sentence_transformers.cross_encoder.evaluation import CrossEncoderCorrelationEvaluator as RefEv
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss as RefBCE

    out = tmp_path_factory.mktemp("ref")
    train, dev, pairs, gold = _data(rows)
    model = RefCE(ce_path, device="cpu", model_card_data=RefCard(**{k: [dict(d) for d in v] if isinstance(v, list)
                                                                    else v for k, v in CARD.items()}))
    ev = RefEv(pairs, gold, name="sts-dev")
    args = RefArgs(output_dir=str(out / "run"), use_cpu=True, disable_tqdm=True, **ARGS)
    RefTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev, loss=RefBCE(model), evaluator=ev).train()
    ev(model)
    model.save_pretrained(str(out / "saved"))
    return (out / "saved" / "README.md").read_text(encoding="utf-8")


# -- reading a card ---------------------------------------------------------------------------------
def _split(text: str) -> tuple[dict, list[tuple[str, str]]]:
    """(front matter, [(heading, section text)]) with headings outside code fences; the text before the first
    heading is under ''."""
    _, head, body = text.split("---\n", 2)
    sections, fenced, current = [("", [])], False, None
    for line in body.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,4} ", line):
            current = (line.strip(), [])
            sections.append(current)
        else:
            sections[-1][1].append(line)
    return yaml.safe_load(head), [(h, "\n".join(lines)) for h, lines in sections]


_NUMBER = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")


def _masked(text: str) -> str:
    """Numbers as <n>, table padding collapsed: what two runs with different numerics share."""
    text = re.sub(r" +\]", "]", _NUMBER.sub("<n>", text))  # numpy pads the printed scores to one width
    return re.sub(r"-{2,}", "--", re.sub(r" {2,}", " ", text))


def _mask_values(obj):
    if isinstance(obj, dict):
        return {k: _mask_values(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_mask_values(v) for v in obj]
    return "<n>" if isinstance(obj, (int, float)) and not isinstance(obj, bool) else obj


def _differences(ours_text: str, ref_text: str) -> list[str]:
    """Where our card differs from the reference's beyond the documented differences (empty: none)."""
    ours_front, ours_sections = _split(ours_text.replace(OUR_INTRO, REF_INTRO))
    ref_front, ref_sections = _split(ref_text)
    problems = []
    if list(ours_front) != list(ref_front):
        problems.append(f"front-matter keys {list(ours_front)} != {list(ref_front)}")
    for key in ref_front:
        mask = _mask_values if key == "model-index" else (lambda v: v)
        if mask(ours_front.get(key)) != mask(ref_front[key]):
            problems.append(f"front matter {key}: {ours_front.get(key)} != {ref_front[key]}")
    if [h for h, _ in ours_sections] != [h for h, _ in ref_sections]:
        problems.append(f"headings {[h for h, _ in ours_sections]} != {[h for h, _ in ref_sections]}")
    for (h, ours_body), (_, ref_body) in zip(ours_sections, ref_sections):
        mask = _masked if h in NUMERIC else (lambda t: t)
        if h not in DIFFERENT and mask(ours_body) != mask(ref_body):
            diff = difflib.unified_diff(mask(ref_body).splitlines(), mask(ours_body).splitlines(), "reference",
                                        "ours", lineterm="")
            problems.append(f"section {h!r}:\n" + "\n".join(diff))
    return problems


def _section(text: str, heading: str) -> str:
    return dict(_split(text)[1])[heading]


# -- tests -----------------------------------------------------------------------------------------
def test_card_matches_the_reference_structure(ours, reference):
    problems = _differences(ours[0], reference)
    assert not problems, "\n\n".join(problems)


def test_dataset_sections_are_byte_identical(ours, reference):
    """Token statistics of the first rows, samples, loss name and parameters: the same text."""
    for heading in ("#### stsb-tiny", "#### stsb-tiny-dev"):
        assert _section(ours[0], heading) == _section(reference, heading), heading
    assert '"activation_fn": "torch.nn.modules.linear.Identity"' in _section(ours[0], "#### stsb-tiny")
    assert "* Size: 16 training samples" in ours[0] and "* Size: 8 evaluation samples" in ours[0]
    assert "<li>min: 7 tokens</li>" in _section(ours[0], "#### stsb-tiny")


def test_front_matter(ours, reference):
    front, _ = _split(ours[0])
    assert front["library_name"] == "sentence-transformers" and front["pipeline_tag"] == "text-ranking"
    assert front["tags"] == ["sentence-transformers", "cross-encoder", "reranker", "generated_from_trainer",
                             "dataset_size:16", "loss:BinaryCrossEntropyLoss"]
    assert front["tags"] == _split(reference)[0]["tags"]
    assert front["language"] == ["en"] and front["license"] == "apache-2.0"
    assert front["metrics"] == ["pearson", "spearman"]


def test_eval_metrics_are_the_evaluators_output(ours):
    text, metrics = ours[0], ours[1]
    (entry,) = _split(text)[0]["model-index"]
    (result,) = entry["results"]
    assert entry["name"] == "CrossEncoder" and result["task"]["type"] == "cross-encoder-correlation"
    assert {m["type"]: m["value"] for m in result["metrics"]} == {
        "pearson": metrics["sts-dev_pearson"], "spearman": metrics["sts-dev_spearman"]}
    table = _section(text, "#### Cross Encoder Correlation")
    assert f"| pearson      | {round(metrics['sts-dev_pearson'], 4)}" in table
    assert f"| **spearman** | **{round(metrics['sts-dev_spearman'], 4)}**" in table


def test_training_logs_are_the_trainers_logs(ours):
    text, metrics, history = ours[0], ours[1], ours[2]
    table = [line for line in _section(text, "### Training Logs").splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header == ["Epoch", "Step", "Training Loss", "Validation Loss", "sts-dev_spearman"]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    train = [h for h in history if "loss" in h]
    evals = [h for h in history if "eval_loss" in h]
    assert [r[:3] for r in cells[:2]] == [[str(h["epoch"]), str(h["step"]), f"{h['loss']:.4f}"] for h in train]
    assert cells[0][3:] == ["-", "-"]
    assert cells[1][3] == f"{evals[0]['eval_loss']:.4f}"
    assert cells[1][4] == f"{evals[0]['eval_sts-dev_spearman']:.4f}"
    assert cells[2] == ["-1", "-1", "-", "-", f"{metrics['sts-dev_spearman']:.4f}"]  # the call after training


def test_hyperparameters_snippet_and_versions(ours, reference, rows):
    text, model = ours[0], ours[3]
    ref_lines = set(_section(reference, "#### Non-Default Hyperparameters").splitlines())
    ours_lines = [x for x in _section(text, "#### Non-Default Hyperparameters").splitlines() if x]
    for line in ("- `per_device_train_batch_size`: 4", "- `max_steps`: 2", "- `learning_rate`: 0.0001"):
        assert line in ours_lines and line in ref_lines
    assert "- `mesh_shape`: {'data': 1}" in ours_lines  # our own arguments are listed too
    # The usage snippet: the first 5 evaluation pairs and the trained model's scores for them.
    snippet = _section(text, "### Direct Usage (Sentence Transformers)")
    assert "from sentence_transformers import CrossEncoder" in snippet
    assert 'model = CrossEncoder("org/ce-tiny")' in snippet
    pairs = [[a, b] for a, b in zip(rows[0][16:21], rows[1][16:21])]
    assert "pairs = [\n" + "".join(f"    {p!r},\n" for p in pairs) + "]" in snippet
    with np.printoptions(precision=4):
        assert "print(scores)\n# " + str(model.predict(pairs, show_progress_bar=False)) in snippet
    ours_versions = dict(x[2:].split(": ", 1) for x in _section(text, "### Framework Versions").splitlines() if x)
    ref_versions = dict(x[2:].split(": ", 1) for x in _section(reference, "### Framework Versions").splitlines() if x)
    assert set(ours_versions) == set(ref_versions) - {"PyTorch", "Accelerate"} | {"stcore_jax", "JAX", "Flax"}
    for key in ("Python", "Sentence Transformers", "Transformers", "Datasets", "Tokenizers"):
        assert ours_versions[key] == ref_versions[key], key


def test_mutations_are_caught(ours, reference):
    """Mutation control: each change of our card is reported."""
    text = ours[0]
    mutations = {
        "a heading dropped": text.replace("### Training Logs\n", ""),
        "a tag changed": text.replace("- dataset_size:16", "- dataset_size:17"),
        "a statistic changed": text.replace("<li>min: 7 tokens</li>", "<li>min: 8 tokens</li>", 1),
        "the loss parameters changed": text.replace('"pos_weight": null', '"pos_weight": 5.0', 1),
        "a front-matter key dropped": text.replace("license: apache-2.0\n", ""),
        "a metric row dropped": re.sub(r"\| pearson +\| [^|]+\|\n", "", text),
        "a log row dropped": re.sub(r"\| 0\.25 +\| 1 .*\n", "", text),
    }
    for what, mutated in mutations.items():
        assert mutated != text, what
        assert _differences(mutated, reference), what
    bad = text.replace(f"value: {ours[1]['sts-dev_pearson']}", "value: 0.123")
    assert bad != text
    with pytest.raises(AssertionError):
        test_eval_metrics_are_the_evaluators_output((bad, *ours[1:]))


def test_bad_card_data(ce_path, rows):
    with pytest.raises(ValueError, match="CrossEncoderModelCardData"):
        CrossEncoder(ce_path, model_card_data={"language": "en"})
    with pytest.raises(ValueError, match="train_datasets"):
        CrossEncoderModelCardData(train_datasets=["stsb"])
    from stcore_jax.sentence_transformer.model_card import SentenceTransformerModelCardData

    model = CrossEncoder(ce_path)
    model.model_card_data = SentenceTransformerModelCardData()
    with pytest.raises(ValueError, match="must be a stcore_jax.cross_encoder.CrossEncoderModelCardData"):
        CrossEncoderTrainer(model=model, args=CrossEncoderTrainingArguments(output_dir="unused", max_steps=1),
                            train_dataset=_data(rows)[0])
    assert model.trace_count == 0  # before anything compiled


def test_untrained_three_label_card_matches_reference(ce_dirs, tmp_path):
    """No training: the same sections as the reference's card of the same untrained 3-label model (pipeline tag
    text-classification, no datasets, metrics or logs)."""
    from sentence_transformers.cross_encoder import CrossEncoder as RefCE

    RefCE(ce_dirs[3], device="cpu").save_pretrained(str(tmp_path / "ref"))
    model = CrossEncoder(ce_dirs[3])
    model.save_pretrained(str(tmp_path / "ours"))
    ours_text = (tmp_path / "ours" / "README.md").read_text(encoding="utf-8")
    problems = _differences(ours_text, (tmp_path / "ref" / "README.md").read_text(encoding="utf-8"))
    assert not problems, "\n\n".join(problems)
    assert _split(ours_text)[0]["pipeline_tag"] == "text-classification"
    assert "## Evaluation" not in ours_text and "### Training Logs" not in ours_text
    assert "# [[" in _section(ours_text, "### Direct Usage (Sentence Transformers)")  # [3, 3] scores printed


def test_card_data_fields(ce_dirs):
    """Dataset ids (kept without a Hub lookup, listed under ``datasets``), base model and model id."""
    model = CrossEncoder(ce_dirs[3], model_card_data=CrossEncoderModelCardData(
        train_datasets=[{"id": "sentence-transformers/stsb"}], model_id="org/ce", generate_widget_examples=False,
        language=["en", "de"]))
    card = model.model_card_data
    assert card.train_datasets == [{"id": "sentence-transformers/stsb", "name": "sentence-transformers/stsb"}]
    assert card.pipeline_tag == "text-classification" and card.task_name == "text pair classification"
    card.set_base_model("org/base")
    from stcore_jax.cross_encoder.model_card import generate_model_card

    text = generate_model_card(model)
    front = _split(text)[0]
    assert front["datasets"] == ["sentence-transformers/stsb"] and front["base_model"] == "org/base"
    assert list(front) == ["language", "tags", "base_model", "datasets", "pipeline_tag", "library_name"]
    assert "# CrossEncoder based on org/base" in text and 'CrossEncoder("org/ce")' in text
    assert "finetuned from [org/base](https://huggingface.co/org/base)" in text
    assert "- **Languages:** en, de" in text
    assert "print(scores.shape)\n# (3, 3)" in text  # no scores computed
    assert CrossEncoderModelCardData(model_id="no-org").model_id is None


def test_card_links_the_training_curve(ce_dirs, tmp_path):
    """After training (training/plots.py sets ``model_card_data.training_curve``), the save copies the loss plot
    beside README.md and links it under "Training Logs"; a model never trained gets neither."""
    model = CrossEncoder(ce_dirs[3])
    model.save_pretrained(str(tmp_path / "plain"))
    assert not (tmp_path / "plain" / "loss.png").exists()
    assert "![Training loss]" not in (tmp_path / "plain" / "README.md").read_text(encoding="utf-8")
    png = tmp_path / "run" / "loss.png"
    png.parent.mkdir()
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    model.model_card_data.training_curve = str(png)
    model.save_pretrained(str(tmp_path / "saved"))
    text = (tmp_path / "saved" / "README.md").read_text(encoding="utf-8")
    assert "### Training Logs\n![Training loss](loss.png)\n" in text
    assert (tmp_path / "saved" / "loss.png").read_bytes() == png.read_bytes()
