"""One encoder architecture's facts in one record; each architecture file (``bert.py``, ``roberta.py``, ...)
defines its ``ARCHITECTURE`` and ``registry.py`` collects them by ``config.json`` ``model_type``.

Nothing here imports an architecture file, so every one of them can import this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

HEAD_KINDS = ("sequence_classification", "masked_lm")
_HF_SUFFIX = {"sequence_classification": "ForSequenceClassification", "masked_lm": "ForMaskedLM"}
POSITIONS = ("absolute", "padding", "rotary")


@dataclasses.dataclass(frozen=True, eq=False)
class Architecture:
    """What stcore_jax knows about one architecture.

    Attributes:
      model_types: ``config.json`` ``model_type`` -> the Hugging Face class-name stem (``"xlm-roberta"`` ->
        ``"XLMRoberta"``), which names the exported ``*ForSequenceClassification`` / ``*ForMaskedLM``.
      encoder: the Flax NNX encoder class, ``encoder(config, rngs)``.
      config: ``(config.json dict, compute dtype) -> EncoderConfig`` (the field mapping).
      lora_targets: PEFT's default LoRA target modules (names of Linear layers inside the encoder).
      positions: "absolute" (a position table from 0), "padding" (fairseq: the table starts at
        ``pad_token_id + 1``) or "rotary" (no table, no length limit).
      prefix: transformers' ``base_model_prefix``: the encoder's key prefix in ``*For...`` checkpoints.
      sequence_classification: ``cls(config, num_labels, rngs)``, called as ``(input_ids, attention_mask,
        token_type_ids=None, *, dropout_key=None) -> [B, num_labels]`` float32 logits.
      masked_lm: ``cls(config, rngs)``, same call, ``-> [B, T, vocab_size]`` float32 logits.
      tied: the masked-LM keys transformers ties (``_tied_weights_keys``): HF key -> the key it shares its
        tensor with. ``save_pretrained`` writes only the latter, and so do we; on load an alias is dropped
        (or renamed when its target is absent, as in 4.x checkpoints that stored only the decoder's bias).
    """

    model_types: Mapping[str, str]
    encoder: type
    config: Callable[[dict, Any], Any]
    lora_targets: tuple[str, ...]
    positions: str
    prefix: str
    sequence_classification: type
    masked_lm: type
    tied: Mapping[str, str]

    def __post_init__(self):
        if self.positions not in POSITIONS:
            raise ValueError(f"Architecture.positions must be one of {POSITIONS}, got {self.positions!r}")

    def position_offset(self, config) -> int | None:
        """First usable row of the position table (0, or ``pad_token_id + 1`` for fairseq); None: no table."""
        if self.positions == "rotary":
            return None
        return config.pad_token_id + 1 if self.positions == "padding" else 0

    def head_class(self, kind: str) -> type:
        """Our module class for a head kind ("sequence_classification" or "masked_lm")."""
        if kind not in HEAD_KINDS:
            raise ValueError(f"head kind must be one of {HEAD_KINDS}, got {kind!r}")
        return getattr(self, kind)

    def hf_class_name(self, model_type: str, kind: str) -> str:
        """transformers' class for ``kind`` of ``model_type``, e.g. ``XLMRobertaForMaskedLM``."""
        self.head_class(kind)
        return self.model_types[model_type] + _HF_SUFFIX[kind]
