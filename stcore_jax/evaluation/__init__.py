"""``stcore_jax.evaluation``: the SentenceTransformer evaluators, where sentence-transformers 2.x-5.x import them from
(``sentence_transformers.evaluation``). They live in :mod:`stcore_jax.sentence_transformer.evaluation`.
"""

from stcore_jax.sentence_transformer.evaluation import (  # noqa: F401
    BaseEvaluator,
    BinaryClassificationEvaluator,
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
    LabelAccuracyEvaluator,
    MSEEvaluator,
    MSEEvaluatorFromDataFrame,
    NanoBEIREvaluator,
    ParaphraseMiningEvaluator,
    RerankingEvaluator,
    SentenceEvaluator,
    SequentialEvaluator,
    SimilarityFunction,
    TranslationEvaluator,
    TripletEvaluator,
    paraphrase_mining_embeddings,
)

__all__ = [
    "BaseEvaluator",
    "SentenceEvaluator",
    "SimilarityFunction",
    "BinaryClassificationEvaluator",
    "EmbeddingSimilarityEvaluator",
    "InformationRetrievalEvaluator",
    "LabelAccuracyEvaluator",
    "MSEEvaluator",
    "MSEEvaluatorFromDataFrame",
    "NanoBEIREvaluator",
    "ParaphraseMiningEvaluator",
    "RerankingEvaluator",
    "SequentialEvaluator",
    "TranslationEvaluator",
    "TripletEvaluator",
    "paraphrase_mining_embeddings",
]
