"""``config.json`` ``model_type`` -> our encoder class."""

from __future__ import annotations

from stcore_jax.models.bert import BertModel
from stcore_jax.models.distilbert import DistilBertModel
from stcore_jax.models.modernbert import ModernBertModel
from stcore_jax.models.mpnet import MPNetModel
from stcore_jax.models.roberta import RobertaModel

ENCODERS = {
    "bert": BertModel,
    "roberta": RobertaModel,
    "xlm-roberta": RobertaModel,
    "camembert": RobertaModel,
    "mpnet": MPNetModel,
    "distilbert": DistilBertModel,
    "modernbert": ModernBertModel,
}


def encoder_class(model_type: str | None, where: str = "config.json"):
    """Return the encoder class for ``model_type`` or raise a clear error listing the supported ones."""
    try:
        return ENCODERS[model_type]
    except KeyError:
        raise ValueError(
            f"Unsupported architecture model_type={model_type!r} in {where}. "
            f"stcore_jax supports: {', '.join(sorted(ENCODERS))}."
        ) from None
