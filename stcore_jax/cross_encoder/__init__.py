"""CrossEncoder (reranker) family: model, losses, evaluators, trainer."""

from stcore_jax.cross_encoder.model import CrossEncoder  # noqa: E402
from stcore_jax.cross_encoder.model_card import CrossEncoderModelCardData  # noqa: E402
from stcore_jax.cross_encoder.trainer import CrossEncoderTrainer  # noqa: E402
from stcore_jax.cross_encoder.training_args import CrossEncoderTrainingArguments  # noqa: E402

__all__ = ["CrossEncoder", "CrossEncoderModelCardData", "CrossEncoderTrainer", "CrossEncoderTrainingArguments"]
