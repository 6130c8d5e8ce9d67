"""TranslationEvaluator: is each sentence's nearest neighbour (cosine) its translation?"""

from __future__ import annotations

import logging

import numpy as np

from stcore_jax.base.evaluation.evaluator import SentenceEvaluator, append_csv_row, embed, epoch_text
from stcore_jax.similarity import cos_sim
from stcore_jax.util.semantic_search import top_k_search

logger = logging.getLogger(__name__)


class TranslationEvaluator(SentenceEvaluator):
    """``src2trg_accuracy``, ``trg2src_accuracy`` and ``mean_accuracy`` (primary) of top-1 retrieval.

    ``source_sentences[i]`` and ``target_sentences[i]`` are translations of each other; a match
    counts as correct when the retrieved sentence has the same text as the expected one. The
    nearest neighbours come from the chunked top-k search (cosine; ties go to the lowest index,
    like ``numpy.argmax``), so the ``N x N`` similarity matrix is never held.
    """

    def __init__(
        self,
        source_sentences: list[str],
        target_sentences: list[str],
        show_progress_bar: bool = False,
        batch_size: int = 16,
        name: str = "",
        print_wrong_matches: bool = False,
        write_csv: bool = True,
        truncate_dim: int | None = None,
    ):
        super().__init__()
        assert len(source_sentences) == len(target_sentences)
        self.source_sentences = source_sentences
        self.target_sentences = target_sentences
        self.name = name
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.print_wrong_matches = print_wrong_matches
        self.truncate_dim = truncate_dim
        self.csv_file = "translation_evaluation" + (f"_{name}" if name else "") + "_results.csv"
        self.csv_headers = ["epoch", "steps", "src2trg", "trg2src"]
        self.write_csv = write_csv
        self.primary_metric = "mean_accuracy"

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        logger.info(
            f"Evaluating translation matching Accuracy of the model on the {self.name} dataset"
            f"{epoch_text(epoch, steps, self.truncate_dim)}:"
        )
        emb1 = self.embed_inputs(model, self.source_sentences)
        emb2 = self.embed_inputs(model, self.target_sentences)
        chunks = dict(score_function=cos_sim, query_chunk_size=1024, corpus_chunk_size=65536)
        scores12, best12 = top_k_search(emb1, emb2, 1, **chunks)
        _, best21 = top_k_search(emb2, emb1, 1, **chunks)

        correct_src2trg = 0
        for i, j in enumerate(best12[:, 0].tolist()):
            if self.target_sentences[i] == self.target_sentences[j]:
                correct_src2trg += 1
            elif self.print_wrong_matches:
                print("\nIncorrect  : Source", i, "is most similar to target", j, "instead of target", i)
                print("Source     :", self.source_sentences[i])
                print("Pred Target:", self.target_sentences[j], f"(Score: {scores12[i, 0]:.4f})")
                print("True Target:", self.target_sentences[i])
        correct_trg2src = sum(
            self.source_sentences[i] == self.source_sentences[j] for i, j in enumerate(best21[:, 0].tolist())
        )
        acc_src2trg = correct_src2trg / len(self.target_sentences)
        acc_trg2src = correct_trg2src / len(self.source_sentences)
        logger.info(f"Accuracy src2trg: {acc_src2trg * 100:.2f}")
        logger.info(f"Accuracy trg2src: {acc_trg2src * 100:.2f}")
        if output_path is not None and self.write_csv:
            append_csv_row(output_path, self.csv_file, self.csv_headers, [epoch, steps, acc_src2trg, acc_trg2src])
        metrics = {
            "src2trg_accuracy": acc_src2trg,
            "trg2src_accuracy": acc_trg2src,
            "mean_accuracy": (acc_src2trg + acc_trg2src) / 2,
        }
        metrics = self.prefix_name_to_metrics(metrics, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def embed_inputs(self, model, sentences, **kwargs) -> np.ndarray:
        return embed(
            model,
            sentences,
            batch_size=self.batch_size,
            show_progress_bar=self.show_progress_bar,
            truncate_dim=self.truncate_dim,
            **kwargs,
        )

    def get_config_dict(self):
        return {"truncate_dim": self.truncate_dim} if self.truncate_dim is not None else {}
