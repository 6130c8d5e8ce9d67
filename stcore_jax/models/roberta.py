"""RoBERTa / XLM-RoBERTa / CamemBERT: BERT with fairseq position ids (offset by ``padding_idx``)."""

from stcore_jax.models.bert import BertModel


class RobertaModel(BertModel):
    roberta_positions = True
