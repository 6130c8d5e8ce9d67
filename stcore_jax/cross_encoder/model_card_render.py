"""sentence-transformers 6.2's CrossEncoder card template (``cross_encoder/model_card_template.md``) as Python.

:func:`render` takes the template's variables (``CrossEncoderModelCardData.to_dict()``) and writes the text
the Jinja template renders for them, blank lines included, with the differences listed in
cross_encoder/model_card.py (framework versions, the first sentence, documentation links of stcore_jax's
losses and evaluators). No CodeCarbon section: stcore_jax does not measure emissions.
"""

from __future__ import annotations

from stcore_jax.base import model_card as mc

_DOCS = "https://sbert.net/docs/package_reference/cross_encoder"
_MIRRORS = {"losses": ("sentence_transformers.", "stcore_jax.cross_encoder.losses."),
            "evaluation": ("sentence_transformers.", "stcore_jax.cross_encoder.evaluation.")}

_SOURCES = """### Model Sources

- **Documentation:** [Sentence Transformers Documentation](https://sbert.net)
- **Documentation:** [Cross Encoder Documentation](https://www.sbert.net/docs/cross_encoder/usage/usage.html)
- **Repository:** [Sentence Transformers on GitHub](https://github.com/huggingface/sentence-transformers)
- **Hugging Face:** [Cross Encoders on Hugging Face](https://huggingface.co/models?library=sentence-transformers&other=cross-encoder)
"""
_USAGE = """## Usage

### Direct Usage (Sentence Transformers)

First install the Sentence Transformers library:

```bash
pip install -U sentence-transformers
```

Then you can load this model and run inference.
"""
_AFTER_USAGE = """
<!--
### Direct Usage (Transformers)

<details><summary>Click to see the direct usage in Transformers</summary>

</details>
-->

<!--
### Downstream Usage (Sentence Transformers)

You can finetune this model on your own dataset.

<details><summary>Click to expand</summary>

</details>
-->

<!--
### Out-of-Scope Use

*List how the model may foreseeably be misused and address what users ought not to do with the model.*
-->
"""
_BIAS = """<!--
## Bias, Risks and Limitations

*What are the known or foreseeable issues stemming from this model? You could also flag here known failure cases or weaknesses of the model.*
-->

<!--
### Recommendations

*What are recommendations with respect to the foreseeable issues? For example, filtering explicit content.*
-->

## Training Details
"""  # noqa: E501 (the template's text, verbatim)
_RESOURCES = """
## Additional Resources

- [Training and Finetuning Reranker Models with Sentence Transformers](https://huggingface.co/blog/train-reranker): the end-to-end guide for training or finetuning Cross Encoder (reranker) models.
- [Multimodal Embedding & Reranker Models with Sentence Transformers](https://huggingface.co/blog/multimodal-sentence-transformers): use text, image, audio, and video reranker models through the same API.
- [Training and Finetuning Multimodal Embedding & Reranker Models with Sentence Transformers](https://huggingface.co/blog/train-multimodal-sentence-transformers): training multimodal Cross Encoders.

## Citation

### BibTeX
"""  # noqa: E501 (the template's text, verbatim)
_TAIL = """
<!--
## Glossary

*Clearly define terms in order to be accessible across audiences.*
-->

<!--
## Model Card Authors

*Lists the people who create the model card, providing recognition and accountability for the detailed work that goes into its construction.*
-->

<!--
## Model Card Contact

*Provides a way for people who have updates to the Model Card, suggestions, or questions, to contact the Model Card authors.*
-->"""  # noqa: E501 (the template's text, verbatim)


def _doc_link(name: str, kind: str) -> str:
    """A loss or evaluator: a link to sentence-transformers' documentation of the class (stcore_jax's mirror
    the reference's, name for name), else its full name in ``<code>``."""
    short = name.split(".")[-1]
    if not name.startswith(_MIRRORS[kind]):
        return f"<code>{name}</code>"
    anchor = short.lower() if kind == "losses" else f"sentence_transformers.cross_encoder.evaluation.{short}"
    return f"[<code>{short}</code>]({_DOCS}/{kind}.html#{anchor})"


def _and(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c`` (the template's dataset-name lists)."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def usage_snippet(model_id, examples, similarities, num_labels: int) -> str:
    """The reference's ``generate_usage_snippet``: ``CrossEncoder(...).predict(pairs)`` (its printed scores
    when computed) and, for one label, ``rank``."""
    lines = ["from sentence_transformers import CrossEncoder", "", "# Download from the \U0001f917 Hub",
             f'model = CrossEncoder("{model_id or "cross_encoder_model_id"}")', "# Get scores for pairs of inputs",
             "pairs = [", *(f"    {[*pair]!r}," for pair in examples), "]", "scores = model.predict(pairs)"]
    if similarities:
        lines += ["print(scores)", similarities]
    else:
        lines += ["print(scores.shape)", f"# ({len(examples)}, {num_labels})" if num_labels > 1
                  else f"# ({len(examples)},)"]
    if num_labels == 1:
        lines += ["", "# Or rank different texts based on similarity to a single text", "ranks = model.rank(",
                  f"    {examples[0][0]!r},", "    [", *(f"        {pair[1]!r}," for pair in examples), "    ]", ")",
                  "# [{'corpus_id': ..., 'score': ...}, {'corpus_id': ..., 'score': ...}, ...]"]
    return "```python\n" + "\n".join(lines) + "\n```"


def _intro(v) -> str:
    named = [d for d in v["train_datasets"] if d.get("name")]
    text = "This is a [Cross Encoder](https://www.sbert.net/docs/cross_encoder/usage/usage.html) model"
    text += (f" finetuned from [{v['base_model']}](https://huggingface.co/{v['base_model']})" if v["base_model"]
             else " trained")
    if named:
        if len(", ".join(d["name"] for d in named)) > 200:
            text += f" on {len(v['train_datasets'])}"
        else:
            text += " on the " + _and([f"[{d['name']}](https://huggingface.co/datasets/{d['id']})" if d.get("id")
                                       else d["name"] for d in named])
        text += f" dataset{'s' if len(named) > 1 else ''}"
    return text + (" with stcore_jax (JAX/Flax), in the format of the [sentence-transformers](https://www.SBERT.net) "
                   f"library. It computes scores for pairs of texts, which can be used for {v['task_name']}.")


def _description(v) -> str:
    out = ["### Model Description", "- **Model Type:** Cross Encoder"]
    if v["base_model"]:
        rev = f" <!-- at revision {v['base_model_revision']} -->" if v["base_model_revision"] else ""
        out.append(f"- **Base model:** [{v['base_model']}](https://huggingface.co/{v['base_model']}){rev}")
    else:
        out.append("<!-- - **Base model:** [Unknown](https://huggingface.co/unknown) -->")
    n = v["model_num_labels"]
    out += [f"- **Maximum Sequence Length:** {v['model_max_length']} tokens",
            f"- **Number of Output Labels:** {n} label{'s' if n > 1 else ''}"]
    mods = v["supported_modalities"]
    out.append(f"- **Supported Modalit{'ies' if len(mods) > 1 else 'y'}:** {', '.join(mods)}" if mods else "")
    named = [d for d in v["train_datasets"] if d.get("name")]
    if named:
        out.append(f"- **Training Dataset{'s' if len(named) > 1 else ''}:**" + "".join(
            f"\n    - [{d['name']}](https://huggingface.co/datasets/{d['id']})" if d.get("id")
            else f"\n    - {d['name']}" for d in named))
    else:
        out.append("<!-- - **Training Dataset:** Unknown -->")
    lang = v["language"]
    if lang:
        out.append(f"- **Language{'s' if len(lang) > 1 else ''}:** {', '.join(lang)}" if not isinstance(lang, str)
                   else f"- **Language:** {lang}")
    else:
        out.append("<!-- - **Language:** Unknown -->")
    out.append(f"- **License:** {v['license']}" if v["license"] else "<!-- - **License:** Unknown -->")
    return "\n".join(out) + "\n"


def _evaluation(v) -> str:
    if not v.get("eval_metrics"):
        return ""
    out = "\n## Evaluation\n\n### Metrics\n"
    for m in v["eval_metrics"]:
        out += f"\n#### {m['description']}\n"
        names = m["dataset_name"]
        if names:
            if isinstance(names, str):
                out += f"\n* Dataset: `{names}`"
            else:
                out += f"\n* Dataset{'s' if len(names) > 1 else ''}: " + _and([f"`{n}`" for n in names])
        out += f"\n* Evaluated with {_doc_link(m['class_name'], 'evaluation')}"
        if m["config_code"]:
            out += f" with these parameters:\n{m['config_code']}"
        out += f"\n\n{m['table']}"
    return out


def _datasets(v) -> str:
    out = ""
    for kind, given in (("training", v["train_datasets"]), ("evaluation", v["eval_datasets"])):
        infos = [d for d in given if "columns" in d]  # the datasets a trainer saw (the reference fails on others)
        if not infos:
            continue
        out += f"\n### {kind.title()} Dataset{'s' if len(infos) > 1 else ''}\n"
        fold = len(infos) > 3
        for d in infos:
            name = d.get("name") or "Unnamed Dataset"
            out += f"<details><summary>{name}</summary>\n" if fold else ""
            out += f"\n#### {name}\n"
            if d.get("name"):
                out += "\n* Dataset: " + (f"[{d['name']}](https://huggingface.co/datasets/{d['id']})" if "id" in d
                                          else d["name"])
                if "revision" in d and "id" in d:
                    out += f" at [{d['revision'][:7]}](https://huggingface.co/datasets/{d['id']}/tree/{d['revision']})"
            out += "\n"
            if d.get("size"):
                out += f"* Size: {d['size']:,} {kind} samples\n"
            cols = d["columns"]
            out += "* Columns: " + (cols[0] if len(cols) == 1 else f"{cols[0]} and {cols[1]}" if len(cols) == 2
                                    else ", ".join(cols[:-1]) + f", and {cols[-1]}") + "\n"
            if d.get("stats_table"):
                out += f"* Approximate statistics based on the first {min(d['size'], mc.STATS_ROWS)} samples:\n"
                out += d["stats_table"]
            if d.get("examples_table"):
                out += "* Samples:\n" + d["examples_table"]
            out += f"* Loss: {_doc_link(d['loss']['fullname'], 'losses')}"
            if "config_code" in d["loss"]:
                out += f" with these parameters:\n{d['loss']['config_code']}"
            out += "\n" + ("</details>\n" if fold else "")
    return out


def _hyperparameters(v) -> str:
    if not v["all_hyperparameters"]:
        return ""
    out = "\n### Training Hyperparameters\n"
    if v["non_default_hyperparameters"]:
        out += "#### Non-Default Hyperparameters\n\n" + "".join(
            f"- `{k}`: {val}\n" for k, val in v["non_default_hyperparameters"].items())
    out += "\n#### All Hyperparameters\n<details><summary>Click to expand</summary>\n\n"
    out += "".join(f"- `{k}`: {val}\n" for k, val in v["all_hyperparameters"].items())
    return out + "\n</details>\n"


def _logs_and_times(v) -> str:
    out = ""
    curve = f"![Training loss]({v['training_curve']})\n\n" if v.get("training_curve") else ""
    if curve and not v.get("eval_lines"):
        out += "\n### Training Logs\n" + curve
    if v.get("eval_lines"):
        hide = v["hide_eval_lines"]
        out += "\n### Training Logs\n" + curve + ("<details><summary>Click to expand</summary>\n\n" if hide else "")
        out += v["eval_lines"]
        out += "\n* The bold row denotes the saved checkpoint." if v["explain_bold_in_eval"] else ""
        out += ("\n</details>" if hide else "") + "\n"
    if v["training_time"] is not None:
        out += f"\n### Training Time\n- **Training**: {v['training_time']}"
        if v["evaluation_time"] is not None:
            out += f"\n- **Evaluation**: {v['evaluation_time']}\n- **Total**: {v['total_time']}"
        out += "\n"
    return out


def _versions(v) -> str:
    ver = v["version"]
    return ("\n### Framework Versions\n"
            f"- Python: {ver['python']}\n- Sentence Transformers: {ver['sentence_transformers']}\n"
            f"- Transformers: {ver['transformers']}\n- stcore_jax: {ver['stcore_jax']}\n- JAX: {ver['jax']}\n"
            f"- Flax: {ver['flax']}\n- Datasets: {ver['datasets']}\n- Tokenizers: {ver['tokenizers']}\n")


def render(v: dict) -> str:
    """The README text (front matter + body) for the template variables ``v``."""
    body = (f"\n# {v['model_name'] or 'Cross Encoder model'}\n\n{_intro(v)}\n\n## Model Details\n\n"
            f"{_description(v)}\n{_SOURCES}\n### Full Model Architecture\n\n```\n{v['model_string']}\n```\n\n"
            f"{_USAGE}{v['usage_snippet']}\n{_AFTER_USAGE}{_evaluation(v)}\n{_BIAS}"
            f"{_datasets(v)}{_hyperparameters(v)}{_logs_and_times(v)}{_versions(v)}{_RESOURCES}")
    body += "".join(f"\n#### {name}\n```bibtex\n{text.strip()}\n```\n" for name, text in v["citations"].items())
    return f"---\n{mc.front_matter(v)}\n---\n{body}{_TAIL}"
