"""Tiny random Hugging Face models, saved as checkpoints and sentence-transformers directories.

Built with ``transformers`` (PyTorch) so both stcore_jax and the reference load the very same files.
"""

from __future__ import annotations

import os

ARCHS = ("bert", "mpnet", "roberta", "xlm-roberta", "distilbert")
SENTENCES = [
    "A girl is styling her hair.",
    "A group of men play soccer on the beach.",
    "One woman is measuring another woman's ankle.",
    "Hi",
    "The quick brown fox jumps over the lazy dog while the cat watches from the window sill.",
    "",
    "Numbers 123 and symbols #@! mixed with ÜNÏCÖDE text.",
]


def _bert_tokenizer(minilm_path, out_dir, pad_token=None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path)
    if pad_token is not None:
        tok.pad_token = pad_token
    tok.model_max_length = 128
    tok.save_pretrained(out_dir)
    return tok


def _bpe_tokenizer(corpus, out_dir):
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=600, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>", mask_token="<mask>", cls_token="<s>", sep_token="</s>",
                                  model_max_length=128)
    tok.save_pretrained(out_dir)
    return tok


def build_hf(arch: str, out_dir: str, minilm_path: str, corpus, seed: int = 0) -> str:
    """Save a tiny random ``arch`` model + tokenizer to ``out_dir`` (a plain HF checkpoint)."""
    import torch
    import transformers as tf

    os.makedirs(out_dir, exist_ok=True)
    if arch in ("roberta", "xlm-roberta"):
        tok = _bpe_tokenizer(corpus, out_dir)
    elif arch == "mpnet":
        tok = _bert_tokenizer(minilm_path, out_dir, pad_token="[unused0]")  # MPNet pads with id 1
    else:
        tok = _bert_tokenizer(minilm_path, out_dir)
    common = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=160)
    if arch == "bert":
        cfg = tf.BertConfig(**common, type_vocab_size=2)
    elif arch == "mpnet":
        cfg = tf.MPNetConfig(**common, pad_token_id=1)
    elif arch == "roberta":
        cfg = tf.RobertaConfig(**common, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    elif arch == "xlm-roberta":
        cfg = tf.XLMRobertaConfig(**common, pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1)
    elif arch == "distilbert":
        cfg = tf.DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                  max_position_embeddings=160)
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = tf.AutoModel.from_config(cfg)
    # Random init leaves LayerNorms at 1/0 and biases at 0; perturb everything so a wrong mapping shows.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    model.save_pretrained(out_dir)
    return out_dir


def build_st(hf_dir: str, out_dir: str, pooling_mode="mean", dense=None, normalize=False, include_prompt=True,
             max_seq_length=128, prompts=None) -> str:
    """Wrap a HF checkpoint in a PyTorch sentence-transformers pipeline and save it."""
    import torch
    from sentence_transformers import SentenceTransformer, models

    t = models.Transformer(hf_dir, max_seq_length=max_seq_length)
    dim = t.get_embedding_dimension()
    mods = [t, models.Pooling(dim, pooling_mode=pooling_mode, include_prompt=include_prompt)]
    if dense is not None:
        torch.manual_seed(1)
        mods.append(models.Dense(mods[-1].get_sentence_embedding_dimension(), dense, activation_function=torch.nn.Tanh()))
    if normalize:
        mods.append(models.Normalize())
    st = SentenceTransformer(modules=mods, device="cpu", prompts=prompts)
    st.save(out_dir)
    return out_dir


def build_modernbert(out_dir: str, minilm_path: str, seed: int = 0, local_attention: int = 8,
                     global_attn_every_n_layers: int = 2, num_hidden_layers: int = 3, **overrides) -> str:
    """Save a tiny random ModernBertModel (+ MiniLM's WordPiece tokenizer) to ``out_dir``.

    Small ``local_attention`` so ordinary sentences are longer than the sliding window; rope bases
    far from the defaults so swapping the global and local ones shows.
    """
    import torch
    import transformers as tf

    os.makedirs(out_dir, exist_ok=True)
    tok = _bert_tokenizer(minilm_path, out_dir)
    tok.model_input_names = ["input_ids", "attention_mask"]  # ModernBERT's tokenizers give no token types
    tok.save_pretrained(out_dir)
    cfg = tf.ModernBertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_attention_heads=4,
                              num_hidden_layers=num_hidden_layers, max_position_embeddings=256,
                              local_attention=local_attention, global_attn_every_n_layers=global_attn_every_n_layers,
                              global_rope_theta=1000.0, local_rope_theta=50.0, pad_token_id=tok.pad_token_id,
                              bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
                              cls_token_id=tok.cls_token_id, sep_token_id=tok.sep_token_id, **overrides)
    torch.manual_seed(seed)
    model = tf.ModernBertModel(cfg)
    with torch.no_grad():  # perturb norms and zero-initialised biases too, so a wrong mapping shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    model.save_pretrained(out_dir)
    return out_dir


def copy_without_dropout(src: str, dst: str, **module_config) -> str:
    """Copy the sentence-transformers directory ``src`` to ``dst`` with hidden and attention dropout 0 (a
    deterministic model, so that two trainers or two layouts can be compared step by step); ``module_config``
    entries overwrite the same keys in any module's config.json (e.g. Pooling's ``include_prompt``)."""
    import json
    import shutil

    shutil.copytree(src, dst)
    for root, _, files in os.walk(dst):
        if "config.json" in files:
            path = os.path.join(root, "config.json")
            with open(path) as f:
                cfg = json.load(f)
            if "hidden_dropout_prob" in cfg:
                cfg["hidden_dropout_prob"] = cfg["attention_probs_dropout_prob"] = 0.0
            cfg.update({k: v for k, v in module_config.items() if k in cfg})
            with open(path, "w") as f:
                json.dump(cfg, f)
    return str(dst)
