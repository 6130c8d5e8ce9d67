"""The README.md model card, in the layout sentence-transformers 6.x writes.

``SentenceTransformerModelCardData`` collects what a card reports: the base model, the training
datasets (columns, sizes, statistics, samples), the losses and their parameters, the training
arguments that differ from the defaults, evaluator results (evaluators call
``set_evaluation_metrics``) and the training log. :class:`ModelCardCallback` fills it during
training; :func:`render_model_card` turns it, plus the model itself, into Markdown.
"""

from __future__ import annotations

import dataclasses
import json
import os

from stcore_jax.base.model_card import copy_training_curve, guess_base_model
from stcore_jax.training.callbacks import TrainerCallback


@dataclasses.dataclass
class SentenceTransformerModelCardData:
    """Same constructor as sentence-transformers' card data; the rest is filled during training."""

    language: str | list | None = None
    license: str | None = None
    model_name: str | None = None
    model_id: str | None = None
    train_datasets: list | None = None  # [{"name": ..., "id": ...}] overrides for dataset names
    eval_datasets: list | None = None
    task_name: str | None = None
    tags: list | None = None
    local_files_only: bool = False
    generate_widget_examples: bool = True
    base_model: str | None = None
    # Filled by ModelCardCallback / evaluators:
    train_dataset_info: list = dataclasses.field(default_factory=list)
    eval_dataset_info: list = dataclasses.field(default_factory=list)
    losses: list = dataclasses.field(default_factory=list)
    non_default_hyperparameters: dict = dataclasses.field(default_factory=dict)
    eval_results: dict = dataclasses.field(default_factory=dict)  # (class, name) -> metrics
    training_logs: list = dataclasses.field(default_factory=list)
    training_curve: str | None = None  # the loss plot of the last training run (training/plots.py)

    def set_evaluation_metrics(self, evaluator, metrics: dict, epoch: int = 0, step: int = 0) -> None:
        """Called by every evaluator; the latest results of each evaluator are reported."""
        key = (type(evaluator).__name__, getattr(evaluator, "name", "") or "")
        self.eval_results[key] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}

    def set_base_model(self, model_id: str | None) -> None:
        if model_id and not self.base_model:
            self.base_model = model_id


def dataset_info(name: str, ds, n_samples: int = 3) -> dict:
    """Columns with dtype and statistics over the first 1000 rows, the size and a few sample rows.
    A stream (IterableDataset) gives its columns only: reading rows from it here would cost a pass."""
    if not hasattr(ds, "select"):  # IterableDataset: like the reference's card, columns without stats
        features = ds.features or {}
        return {"name": name, "size": None, "samples": [],
                "columns": {c: {"dtype": getattr(features.get(c), "dtype", "unknown"), "stats": ""}
                            for c in ds.column_names or []}}
    head = ds.select(range(min(len(ds), 1000)))
    columns = {}
    for c in ds.column_names:
        vals = head[c]
        if vals and isinstance(vals[0], str):
            words = [len(v.split()) for v in vals]
            columns[c] = {"dtype": "string", "stats": f"min: {min(words)}, mean: {sum(words) / len(words):.2f}, "
                                                      f"max: {max(words)} words"}
        elif vals and isinstance(vals[0], (int, float)):
            columns[c] = {"dtype": type(vals[0]).__name__, "stats": f"min: {min(vals)}, mean: "
                                                                    f"{sum(vals) / len(vals):.3f}, max: {max(vals)}"}
        else:
            columns[c] = {"dtype": type(vals[0]).__name__ if vals else "unknown", "stats": ""}
    samples = [{c: ds[i][c] for c in ds.column_names} for i in range(min(n_samples, len(ds)))]
    return {"name": name, "size": len(ds), "columns": columns, "samples": samples}


def loss_info(name: str, loss) -> dict:
    cfg = loss.get_config_dict() if hasattr(loss, "get_config_dict") else {}
    return {"dataset": name, "loss": type(loss).__name__,
            "config": {k: (v if isinstance(v, (int, float, str, bool, list, type(None))) else str(v))
                       for k, v in cfg.items()}}


class ModelCardCallback(TrainerCallback):
    """Fills ``model.model_card_data`` from a trainer (datasets, losses, arguments, logs)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def _card(self, model):
        if getattr(model, "model_card_data", None) is None:
            model.model_card_data = SentenceTransformerModelCardData()
        return model.model_card_data

    def on_init_end(self, args, state, control, model=None, **kwargs):
        t = self.trainer
        card = self._card(model)
        card.set_base_model(guess_base_model(getattr(model, "model_path", None)))
        card.train_dataset_info = [dataset_info(n, d) for n, d in t.train_data.items()]
        card.eval_dataset_info = [dataset_info(n, d) for n, d in t.eval_data.items()]
        # Names the user gave (train_datasets=[{"name": ...}]) replace the trainer's dataset keys.
        for infos, given in ((card.train_dataset_info, card.train_datasets),
                             (card.eval_dataset_info, card.eval_datasets)):
            for info, g in zip(infos, given or []):
                if isinstance(g, dict) and g.get("name"):
                    info["name"] = g["name"]
        seen, card.losses = set(), []
        for n, lo in t.loss.items():
            if n in t.train_data and id(lo) not in seen:
                seen.add(id(lo))
                card.losses.append(loss_info(n, lo))
        renamed = {n: i["name"] for n, i in zip(t.train_data, card.train_dataset_info)}
        for lo in card.losses:
            lo["dataset"] = renamed.get(lo["dataset"], lo["dataset"])
        from stcore_jax.training.arguments import non_default_args

        skip = ("output_dir", "report_to", "disable_tqdm", "save_final_model", "overwrite_output_dir")
        card.non_default_hyperparameters = {k: v for k, v in non_default_args(args).items() if k not in skip}

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if logs:
            self._card(model).training_logs.append({"step": state.global_step, "epoch": state.epoch, **logs})


# -- rendering ---------------------------------------------------------------------------------
def _fmt(v):
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _versions() -> str:
    import importlib.metadata as md

    lines = []
    for pkg in ("stcore-jax", "jax", "flax", "optax", "transformers", "tokenizers", "datasets"):
        try:
            lines.append(f"- {pkg}: {md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class CardText:
    """What differs between the bi-encoder families' cards (sentence-transformers 6.x wording)."""

    model_class: str = "SentenceTransformer"
    model_type: str = "Sentence Transformer"
    tags: tuple = ("sentence-transformers", "sentence-similarity", "feature-extraction")
    pipeline_tag: str = "sentence-similarity"
    space: str = "dense vector space"
    usage: tuple = ('sentences = ["How do I reset my password?", "I forgot my password.", "Where is my order?"]',
                    "embeddings = model.encode(sentences)", "print(embeddings.shape)")


SENTENCE_TRANSFORMER = CardText()
SPARSE_ENCODER = CardText(
    model_class="SparseEncoder", model_type="SPLADE Sparse Encoder",
    tags=("sentence-transformers", "sparse-encoder", "sparse", "splade", "feature-extraction"),
    pipeline_tag="feature-extraction", space="sparse vector space (one dimension per vocabulary token)",
    usage=('queries = ["How do I reset my password?"]',
           'documents = ["I forgot my password.", "Where is my order?"]',
           "query_embeddings = model.encode_query(queries)", "document_embeddings = model.encode_document(documents)",
           "print(query_embeddings.shape)"))


def _front_matter(model, card, text: CardText = SENTENCE_TRANSFORMER) -> str:
    tags = [*text.tags, "stcore_jax", *(f"loss:{lo['loss']}" for lo in card.losses), *(card.tags or [])]
    lines = ["---"]
    if card.language:
        langs = card.language if isinstance(card.language, list) else [card.language]
        lines += ["language:"] + [f"- {x}" for x in langs]
    if card.license:
        lines.append(f"license: {card.license}")
    lines.append("tags:")
    lines += [f"- {t}" for t in dict.fromkeys(tags)]
    if card.base_model:
        lines.append(f"base_model: {card.base_model}")
    lines += [f"pipeline_tag: {text.pipeline_tag}", "library_name: sentence-transformers"]
    if card.eval_results:
        lines.append("metrics:")
        lines += [f"- {k}" for k in dict.fromkeys(k for m in card.eval_results.values() for k in m)]
    return "\n".join(lines + ["---", ""])


def _datasets_section(title, infos, card) -> list[str]:
    if not infos:
        return []
    out = [f"### {title} Dataset{'s' if len(infos) > 1 else ''}", ""]
    for info in infos:
        size = f"{info['size']:,}" if info["size"] is not None else "unknown (streamed)"
        out += [f"#### {info['name']}", "", f"* Size: {size} {title.lower()} samples",
                f"* Columns: {', '.join(f'<code>{c}</code>' for c in info['columns'])}",
                "* Approximate statistics based on the first 1000 samples:", "",
                "  | | " + " | ".join(info["columns"]) + " |",
                "  |:--|" + "|".join(":--" for _ in info["columns"]) + "|",
                "  | type | " + " | ".join(c["dtype"] for c in info["columns"].values()) + " |",
                "  | details | " + " | ".join(c["stats"] for c in info["columns"].values()) + " |",
                "* Samples:", "",
                "  | " + " | ".join(info["columns"]) + " |",
                "  |" + "|".join(":--" for _ in info["columns"]) + "|"]
        for s in info["samples"]:
            out.append("  | " + " | ".join(str(s[c]).replace("|", "\\|") for c in info["columns"]) + " |")
        for lo in card.losses:
            if lo["dataset"] == info["name"] or len(card.losses) == 1:
                out += [f"* Loss: <code>{lo['loss']}</code> with these parameters:", "  ```json",
                        *("  " + line for line in json.dumps(lo["config"], indent=4).splitlines()), "  ```"]
        out.append("")
    return out


def render_model_card(model, text: CardText = SENTENCE_TRANSFORMER, training_curve: str | None = None) -> str:
    """Markdown for ``model`` (a stcore_jax SentenceTransformer, or a SparseEncoder with ``text=SPARSE_ENCODER``)
    and its ``model_card_data``; ``training_curve``: a loss plot's file name beside the README, shown above the
    training-log table."""
    card = getattr(model, "model_card_data", None)
    if card is None:
        card = SentenceTransformerModelCardData()
    card.set_base_model(guess_base_model(getattr(model, "model_path", None)))
    name = card.model_name or (f"{text.model_class} based on {card.base_model}" if card.base_model
                               else f"{text.model_type} model")
    names = [i["name"] for i in card.train_dataset_info]
    out = [_front_matter(model, card, text), f"# {name}", "",
           f"This is a [sentence-transformers](https://www.SBERT.net) {text.model_class} model"
           + (f" finetuned from [{card.base_model}](https://huggingface.co/{card.base_model})"
              if card.base_model else "")
           + (f" on {', '.join(names)}" if names else "")
           + " with stcore_jax (JAX/Flax). It maps sentences & paragraphs to a "
           f"{model.get_embedding_dimension()}-dimensional {text.space}.", "",
           "## Model Details", "", "### Model Description", f"- **Model Type:** {text.model_type}"]
    if card.base_model:
        out.append(f"- **Base model:** [{card.base_model}](https://huggingface.co/{card.base_model})")
    out += [f"- **Maximum Sequence Length:** {model.max_seq_length} tokens",
            f"- **Output Dimensionality:** {model.get_embedding_dimension()} dimensions",
            f"- **Similarity Function:** {model.similarity_fn_name}"]
    if names:
        out.append(f"- **Training Dataset{'s' if len(names) > 1 else ''}:** {', '.join(names)}")
    if card.language:
        out.append(f"- **Language:** {card.language}")
    if card.license:
        out.append(f"- **License:** {card.license}")
    out += ["", "### Full Model Architecture", "", "```", repr(model), "```", "", "## Usage", "",
            "### Direct Usage (Sentence Transformers)", "", "```bash", "pip install -U sentence-transformers", "```",
            "", "```python", f"from sentence_transformers import {text.model_class}", "",
            f'model = {text.model_class}("{card.model_id or "path/to/this/model"}")', *text.usage,
            f"# ({1 if text.model_class == 'SparseEncoder' else 3}, {model.get_embedding_dimension()})",
            ("similarities = model.similarity(query_embeddings, document_embeddings)"
             if text.model_class == "SparseEncoder" else "similarities = model.similarity(embeddings, embeddings)"),
            "```", "", "### Direct Usage (stcore_jax, JAX)", "", "```python",
            f"from stcore_jax import {text.model_class}  # the same API, on TPU / GPU / CPU", "",
            f'model = {text.model_class}("{card.model_id or "path/to/this/model"}")',
            'embeddings = model.encode(["How do I reset my password?", "I forgot my password."])',
            "similarities = model.similarity(embeddings, embeddings)", "```", ""]
    if card.eval_results:
        out += ["## Evaluation", "", "### Metrics", ""]
        for (cls, ev_name), metrics in card.eval_results.items():
            out += [f"#### {ev_name or cls}", "", f"* Evaluated with <code>{cls}</code>", "",
                    "| Metric | Value |", "|:--|:--|"]
            prefix = f"{ev_name}_" if ev_name else ""
            out += [f"| {k[len(prefix):] if k.startswith(prefix) else k} | {_fmt(v)} |" for k, v in metrics.items()]
            out.append("")
    if card.train_dataset_info or card.non_default_hyperparameters or card.training_logs or training_curve:
        out += ["## Training Details", ""]
        out += _datasets_section("Training", card.train_dataset_info, card)
        out += _datasets_section("Evaluation", card.eval_dataset_info, card)
        if card.non_default_hyperparameters:
            out += ["### Training Hyperparameters", "#### Non-Default Hyperparameters", ""]
            out += [f"- `{k}`: {v}" for k, v in card.non_default_hyperparameters.items()]
            out.append("")
        train_logs = [r for r in card.training_logs if "loss" in r or any(k.startswith("eval_") for k in r)]
        if train_logs or training_curve:
            out += ["### Training Logs", ""]
        if training_curve:
            out += [f"![Training loss]({training_curve})", ""]
        if train_logs:
            def shown(k):
                return k == "loss" or (k.startswith("eval_") and not k.endswith(("runtime", "_per_second")))

            cols = ["epoch", "step"] + [k for k in dict.fromkeys(k for r in train_logs for k in r) if shown(k)]
            header = " | ".join("Training Loss" if c == "loss" else c for c in cols)
            out += ["| " + header + " |", "|" + "|".join(":--" for _ in cols) + "|"]
            out += ["| " + " | ".join(_fmt(r[c]) if c in r and r[c] is not None else "-" for c in cols) + " |"
                    for r in train_logs]
            out.append("")
    out += ["### Framework Versions", _versions(), ""]
    return "\n".join(out)


def write_model_card(model, directory: str, text: CardText = SENTENCE_TRANSFORMER) -> None:
    """``directory/README.md``; after training, with the loss plot copied beside it and linked."""
    curve = copy_training_curve(getattr(getattr(model, "model_card_data", None), "training_curve", None),
                                directory)
    with open(os.path.join(directory, "README.md"), "w", encoding="utf-8") as f:
        f.write(render_model_card(model, text, training_curve=curve))
