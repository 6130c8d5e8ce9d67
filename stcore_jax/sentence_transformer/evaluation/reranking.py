"""RerankingEvaluator: rank each query's own positives and negatives; MAP, MRR@k and NDCG@k.

Scoring and ranking run on device over padded ``[samples, max_docs]`` blocks. Ties follow the
reference's scikit-learn metrics: average precision takes one point per distinct score, NDCG
averages the gain over tied documents; for MRR tied documents keep their input order (positives
before negatives).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_csv_row, embed, epoch_text
from stcore_jax.similarity import cos_sim
from stcore_jax.util.semantic_search import _bucket, get_scorer

logger = logging.getLogger(__name__)

_BLOCK_ELEMENTS = 1 << 24  # gathered document floats per device block


@functools.partial(jax.jit, static_argnames=("scorer",))
def rank_metrics(queries, docs, relevant, valid, at_k, *, scorer):
    """Per-sample MRR@k, NDCG@k and average precision.

    Args:
      queries: ``[B, D]`` query embeddings.
      docs: ``[B, N, D]`` each sample's candidate embeddings (padding where ``~valid``).
      relevant: ``[B, N]`` bool, True for positives.
      valid: ``[B, N]`` bool, False for padding.
      at_k: cut-off of MRR and NDCG (a traced scalar: one compilation serves every k).
      scorer: ``Scorer`` of the similarity.

    Returns:
      ``(mrr, ndcg, ap)``, each ``[B]`` float32.
    """
    q = scorer.prepare(queries)
    d = jax.vmap(scorer.prepare)(docs)
    scores = jax.vmap(lambda qi, di: scorer.score(qi[None, :], di)[0])(q, d).astype(jnp.float32)
    scores = jnp.where(valid, scores, -jnp.inf)
    order = jnp.argsort(-scores, axis=1, stable=True)
    s = jnp.take_along_axis(scores, order, axis=1)
    rel = jnp.take_along_axis(relevant & valid, order, axis=1).astype(jnp.float32)
    n = s.shape[1]
    pos = jnp.broadcast_to(jnp.arange(n), s.shape)
    # First and last sorted position of each element's tie group.
    differs = s[:, 1:] != s[:, :-1]
    is_first = jnp.concatenate([jnp.ones_like(differs[:, :1]), differs], axis=1)
    is_last = jnp.concatenate([differs, jnp.ones_like(differs[:, :1])], axis=1)
    start = jax.lax.cummax(jnp.where(is_first, pos, 0), axis=1)
    end = jax.lax.cummin(jnp.where(is_last, pos, n - 1), axis=1, reverse=True)
    cum = jnp.cumsum(rel, axis=1)
    cum_at_end = jnp.take_along_axis(cum, end, 1)
    num_pos = cum[:, -1]

    first = jnp.argmax(rel > 0, axis=1)
    mrr = jnp.where(first < at_k, 1.0 / (first + 1.0), 0.0)

    # sklearn: one precision point per distinct score, i.e. each positive gets its group's precision.
    ap = jnp.sum(rel * cum_at_end / (end + 1.0), axis=1) / num_pos

    # sklearn's tie-averaged DCG: each position gets the mean gain of its tie group.
    group_gain = cum_at_end - jnp.take_along_axis(cum, start, 1) + jnp.take_along_axis(rel, start, 1)
    mean_gain = group_gain / (end - start + 1.0)
    discount = jnp.where(pos < at_k, 1.0 / jnp.log2(pos + 2.0), 0.0)
    dcg = jnp.sum(mean_gain * discount, axis=1)
    ideal = jnp.sum(jnp.where(pos < jnp.minimum(num_pos, at_k)[:, None], discount, 0.0), axis=1)
    ndcg = jnp.where(ideal > 0, dcg / ideal, 0.0)
    return mrr, ndcg, ap


class RerankingEvaluator(SentenceEvaluator):
    """Rerank ``samples = [{"query", "positive": [...], "negative": [...]}]`` by similarity.

    Reports ``map``, ``mrr@{at_k}`` and ``ndcg@{at_k}`` (primary). ``similarity_fct`` defaults to
    cosine (not the model's similarity, as in the reference); any JAX-traceable
    ``f(a [1, D], b [N, D]) -> [1, N]`` works. Queries use ``encode_query``, documents
    ``encode_document``. ``use_batched_encoding=False`` encodes sample by sample.
    """

    def __init__(
        self,
        samples: list[dict],
        at_k: int = 10,
        name: str = "",
        write_csv: bool = True,
        similarity_fct: Callable = cos_sim,
        batch_size: int = 64,
        show_progress_bar: bool = False,
        use_batched_encoding: bool = True,
        truncate_dim: int | None = None,
        mrr_at_k: int | None = None,
    ):
        super().__init__()
        if mrr_at_k is not None:
            logger.warning(f"The `mrr_at_k` parameter has been deprecated; please use `at_k={mrr_at_k}` instead.")
            at_k = mrr_at_k
        self.at_k = at_k
        self.name = name
        self.similarity_fct = similarity_fct
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.use_batched_encoding = use_batched_encoding
        self.truncate_dim = truncate_dim
        if isinstance(samples, dict):
            samples = list(samples.values())
        samples = [
            {
                **sample,
                "positive": [sample["positive"]] if isinstance(sample["positive"], str) else sample["positive"],
                "negative": [sample["negative"]] if isinstance(sample["negative"], str) else sample["negative"],
            }
            for sample in samples
        ]
        self.samples = [s for s in samples if len(s["positive"]) > 0 and len(s["negative"]) > 0]
        self.csv_file = "RerankingEvaluator" + (f"_{name}" if name else "") + f"_results_@{self.at_k}.csv"
        self.csv_headers = ["epoch", "steps", "MAP", f"MRR@{self.at_k}", f"NDCG@{self.at_k}"]
        self.write_csv = write_csv
        self.primary_metric = f"ndcg@{self.at_k}"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        when = epoch_text(epoch, steps, self.truncate_dim)
        logger.info(f"RerankingEvaluator: Evaluating the model on the {self.name} dataset{when}:")
        scores = self.compute_metrics(model)
        num_pos = [len(s["positive"]) for s in self.samples]
        num_neg = [len(s["negative"]) for s in self.samples]
        logger.info(
            f"Queries: {len(self.samples)} \t Positives: Min {np.min(num_pos):.1f}, Mean {np.mean(num_pos):.1f}, "
            f"Max {np.max(num_pos):.1f} \t Negatives: Min {np.min(num_neg):.1f}, Mean {np.mean(num_neg):.1f}, "
            f"Max {np.max(num_neg):.1f}"
        )
        logger.info(f"MAP: {scores['map'] * 100:.2f}")
        logger.info(f"MRR@{self.at_k}: {scores['mrr'] * 100:.2f}")
        logger.info(f"NDCG@{self.at_k}: {scores['ndcg'] * 100:.2f}")
        if output_path is not None and self.write_csv:
            row = [epoch, steps, scores["map"], scores["mrr"], scores["ndcg"]]
            append_csv_row(output_path, self.csv_file, self.csv_headers, row)
        metrics = {"map": scores["map"], f"mrr@{self.at_k}": scores["mrr"], f"ndcg@{self.at_k}": scores["ndcg"]}
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def compute_metrics(self, model) -> dict[str, float]:
        """``{"map", "mrr", "ndcg"}`` averaged over samples."""
        docs = [[*s["positive"], *s["negative"]] for s in self.samples]
        queries = [s["query"] for s in self.samples]
        if self.use_batched_encoding:
            query_emb = self.embed_inputs(model, queries, encode_fn_name="query")
            all_docs = [d for sample_docs in docs for d in sample_docs]
            doc_emb = self.embed_inputs(model, all_docs, encode_fn_name="document")
        else:
            query_emb = np.concatenate([self.embed_inputs(model, [q], encode_fn_name="query") for q in queries])
            doc_emb = np.concatenate([self.embed_inputs(model, d, encode_fn_name="document") for d in docs])
        return self.compute_metrics_from_embeddings(query_emb, doc_emb)

    compute_metrices = compute_metrics

    def compute_metrics_from_embeddings(self, query_embeddings, doc_embeddings) -> dict[str, float]:
        """Metrics from ``[S, D]`` query embeddings and the samples' documents ``[sum N_i, D]``
        (each sample's positives then negatives, samples in order)."""
        sizes = np.asarray([len(s["positive"]) + len(s["negative"]) for s in self.samples])
        num_pos = np.asarray([len(s["positive"]) for s in self.samples])
        width = _bucket(int(sizes.max()), int(sizes.max()) * 2)
        dim = query_embeddings.shape[1]
        block = max(1, min(256, _BLOCK_ELEMENTS // (width * dim)))
        block = 1 << (block.bit_length() - 1)
        block = min(block, _bucket(len(sizes), 1 << 30))
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        scorer = get_scorer(self.similarity_fct)
        doc_emb = np.asarray(doc_embeddings, np.float32)
        results = []
        for start in range(0, len(sizes), block):
            rows = np.arange(start, min(start + block, len(sizes)))
            col = np.arange(width)[None, :]
            valid = np.zeros((block, width), bool)
            valid[: len(rows)] = col < sizes[rows, None]
            relevant = np.zeros((block, width), bool)
            relevant[: len(rows)] = col < num_pos[rows, None]
            index = np.zeros((block, width), np.int64)
            index[: len(rows)] = np.where(valid[: len(rows)], offsets[rows, None] + col, 0)
            q = np.zeros((block, dim), np.float32)
            q[: len(rows)] = query_embeddings[rows]
            mrr, ndcg, ap = rank_metrics(q, doc_emb[index], relevant, valid, np.int32(self.at_k), scorer=scorer)
            results.append(np.stack([np.asarray(mrr), np.asarray(ndcg), np.asarray(ap)], 1)[: len(rows)])
        mrr, ndcg, ap = np.concatenate(results).astype(np.float64).T
        return {"map": float(np.mean(ap)), "mrr": float(np.mean(mrr)), "ndcg": float(np.mean(ndcg))}

    def embed_inputs(self, model, sentences, encode_fn_name: str | None = None, **kwargs) -> np.ndarray:
        return embed(
            model,
            sentences,
            kind=encode_fn_name,
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress_bar,
            truncate_dim=self.truncate_dim,
            **kwargs,
        )

    def get_config_dict(self):
        config = {"at_k": self.at_k}
        if self.truncate_dim is not None:
            config["truncate_dim"] = self.truncate_dim
        return config
