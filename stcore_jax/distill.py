"""Distilling a transformer into a static token table (Model2Vec's recipe, in JAX and NumPy).

``StaticEmbedding.from_distillation`` in the reference calls ``model2vec.distill``; the same steps here:

1. Every vocabulary id ``t`` is run through the encoder as the 3-token sequence ``[eos, t, bos]``
   (the tokenizer's closing and opening special tokens, in that reversed order, which Model2Vec
   found to work better), all attended; the token's vector is the mean of the 3 output states.
2. Tokens matching ``token_remove_pattern`` (BERT's ``[unusedN]``) are dropped from the table and
   from the tokenizer's vocabulary, the remaining ids renumbered in order.
3. PCA to ``pca_dims`` (centred; component signs as scikit-learn's ``svd_flip``).
4. SIF weighting with Zipf-estimated frequencies: row ``r`` (vocabulary order taken as frequency
   rank) is scaled by ``a / (a + p_r)``, ``p_r ∝ 1 / (r + 2)``, ``a = sif_coefficient``.
"""

from __future__ import annotations

import json
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger(__name__)


def resolve_sif(apply_zipf, sif_coefficient):
    """Model2Vec's rule: ``apply_zipf=False`` disables weighting; ``True`` with no coefficient means 1e-4."""
    if apply_zipf is not None:
        if not apply_zipf:
            return None
        if sif_coefficient is None:
            sif_coefficient = 1e-4
    if sif_coefficient is not None and not 0.0 < float(sif_coefficient) < 1.0:
        raise ValueError(f"sif_coefficient must be > 0 and < 1 (1e-4 is the usual value), got {sif_coefficient}")
    return sif_coefficient


def pca(x_nd: np.ndarray, n_components) -> np.ndarray:
    """Centre and project ``[N, D]`` onto its top principal components -> ``[N, k]`` (float64).

    ``n_components``: an int, or a float in (0, 1) for the smallest k explaining more than that
    fraction of the variance. Component signs follow scikit-learn (largest |loading| positive), so
    results match ``sklearn.decomposition.PCA(svd_solver="full").fit_transform``.
    """
    x = np.asarray(x_nd, np.float64)
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    if isinstance(n_components, float) and 0.0 < n_components < 1.0:
        ratio = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(ratio, n_components, side="right") + 1)
    else:
        k = int(n_components)
    vt = vt[:k]
    signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])
    vt = vt * np.where(signs == 0, 1.0, signs)[:, None]
    return xc @ vt.T


def sif_weights(n_rows: int, sif_coefficient: float) -> np.ndarray:
    """``a / (a + p_r)`` per row, with Zipf probabilities ``p_r ∝ 1 / (r + 2)`` -> ``[n_rows]``."""
    inv_rank = 1.0 / np.arange(2, n_rows + 2)
    proba = inv_rank / inv_rank.sum()
    return sif_coefficient / (sif_coefficient + proba)


def post_process(embeddings: np.ndarray, pca_dims, sif_coefficient) -> np.ndarray:
    """PCA (``None``: none; ``"auto"``: keep the width, rotate only) then SIF weighting."""
    emb = np.asarray(embeddings, np.float64)
    if pca_dims is not None:
        if pca_dims == "auto":
            pca_dims = emb.shape[1]
        if not isinstance(pca_dims, float) and int(pca_dims) > emb.shape[1]:
            logger.warning("pca_dims=%s exceeds the embedding width %d; rotating without reducing", pca_dims,
                           emb.shape[1])
            pca_dims = emb.shape[1]
        if not isinstance(pca_dims, float) and int(pca_dims) >= emb.shape[0]:
            logger.warning("pca_dims=%s is not below the vocabulary size %d; PCA skipped", pca_dims, emb.shape[0])
        else:
            emb = pca(emb, pca_dims)
    if sif_coefficient is not None:
        emb = emb * sif_weights(emb.shape[0], sif_coefficient)[:, None]
    return emb


def remove_tokens(tokenizer, tokens: list[str]):
    """A copy of a WordPiece ``tokenizers.Tokenizer`` without ``tokens``; other ids renumbered in order.

    Special-token ids in ``added_tokens``, the post-processor and the padding are remapped too, so
    ``[CLS]``/``[SEP]``/``[PAD]`` keep working.
    """
    from tokenizers import Tokenizer

    if not tokens:
        return Tokenizer.from_str(tokenizer.to_str())
    cfg = json.loads(tokenizer.to_str())
    model = cfg["model"]
    if not isinstance(model.get("vocab"), dict) or model.get("type") != "WordPiece":
        raise ValueError(f"token_remove_pattern matched {len(tokens)} tokens, but removing tokens is only "
                         f"supported for WordPiece tokenizers (this one is {model.get('type')}); "
                         "pass token_remove_pattern=None")
    drop = set(tokens)
    old = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    new_id = {}
    for tok, i in old:
        if tok not in drop:
            new_id[i] = len(new_id)
    model["vocab"] = {tok: new_id[i] for tok, i in old if i in new_id}
    if model.get("unk_token") in drop:
        raise ValueError(f"token_remove_pattern would remove the unknown token {model['unk_token']!r}")
    cfg["added_tokens"] = [dict(t, id=new_id[t["id"]]) for t in cfg.get("added_tokens") or [] if t["id"] in new_id]
    post = cfg.get("post_processor")
    for p in (post.get("processors") or [post]) if post else []:
        for spec in (p.get("special_tokens") or {}).values():
            spec["ids"] = [new_id[i] for i in spec["ids"]]
        for key in ("sep", "cls"):
            if isinstance(p.get(key), list):
                p[key] = [p[key][0], new_id[p[key][1]]]
    if cfg.get("padding") and cfg["padding"].get("pad_id") in new_id:
        cfg["padding"]["pad_id"] = new_id[cfg["padding"]["pad_id"]]
    return Tokenizer.from_str(json.dumps(cfg))


def token_embeddings(transformer, batch_size: int = 1024) -> np.ndarray:
    """``[vocab, hidden]``: each id's mean output state in ``[eos, id, bos]`` (step 1 of the module doc)."""
    tok = transformer.tokenizer
    vocab = len(tok.get_vocab())
    probe = tok("A")["input_ids"]  # the tokenizer's own opening and closing special tokens
    bos, eos = probe[0], probe[-1]

    @jax.jit
    def embed(params, ids_b):
        seq_bt = jnp.stack([jnp.full_like(ids_b, eos), ids_b, jnp.full_like(ids_b, bos)], axis=1)
        feats = transformer.apply(params, {"input_ids": seq_bt, "attention_mask": jnp.ones_like(seq_bt)})
        return jnp.mean(feats["token_embeddings"].astype(jnp.float32), axis=1)

    out = []
    for start in range(0, vocab, batch_size):
        ids = np.arange(start, start + batch_size, dtype=np.int32)
        ids[ids >= vocab] = 0  # the last batch is padded to the same shape (one compilation); rows dropped below
        out.append(np.asarray(embed(transformer.params, ids))[: max(0, min(batch_size, vocab - start))])
    return np.concatenate(out, axis=0)


def distill(model_name, vocabulary=None, pca_dims=256, apply_zipf=True, sif_coefficient=1e-4,
            token_remove_pattern=r"\[unused\d+\]", quantize_to="float32", use_subword=True, batch_size=1024, *,
            load_transformer):
    """Distill ``model_name`` (a local Hugging Face or sentence-transformers directory whose root holds
    the encoder) -> ``(tokenizers.Tokenizer, [vocab, dim] float32 table)``. Arguments as the reference's
    ``StaticEmbedding.from_distillation``; custom vocabularies and quantization are not supported.
    ``load_transformer(model_name)`` loads the encoder (a ``Transformer`` module), called once every
    argument has been checked (``StaticEmbedding.from_distillation`` passes it: this file imports no model)."""
    # Every argument is checked before the encoder is loaded and run.
    if vocabulary is not None or not use_subword:
        raise ValueError("from_distillation: a custom vocabulary / use_subword=False needs Model2Vec's word-level "
                         "tokenizer rebuilding, which stcore_jax does not implement; distill the subword vocabulary")
    if quantize_to not in ("float32", None):
        raise ValueError(f"from_distillation: quantize_to={quantize_to!r} is not supported; the table stays float32")
    if pca_dims is not None and pca_dims != "auto" and not (isinstance(pca_dims, (int, float)) and pca_dims > 0):
        raise ValueError(f"from_distillation: pca_dims must be a positive int, a float in (0, 1), 'auto' or None, "
                         f"got {pca_dims!r}")
    sif = resolve_sif(apply_zipf, sif_coefficient)
    pattern = None
    if token_remove_pattern:
        try:
            pattern = re.compile(token_remove_pattern)
        except re.error as e:
            raise ValueError(f"from_distillation: invalid token_remove_pattern {token_remove_pattern!r}: {e}") from None

    transformer = load_transformer(model_name)
    raw = token_embeddings(transformer, batch_size)
    backend = transformer.tokenizer.backend_tokenizer
    id_to_token = {i: t for t, i in transformer.tokenizer.get_vocab().items()}
    drop = [i for i in range(raw.shape[0]) if pattern is not None and pattern.match(id_to_token.get(i, ""))]
    if len(drop) == raw.shape[0]:
        raise ValueError(f"from_distillation: token_remove_pattern {token_remove_pattern!r} matches every token")
    tokenizer = remove_tokens(backend, [id_to_token[i] for i in drop])
    raw = np.delete(raw, drop, axis=0)
    table = post_process(raw, pca_dims, sif).astype(np.float32)
    logger.info("Distilled %s: %d tokens (%d removed), %d dims", model_name, table.shape[0], len(drop), table.shape[1])
    return tokenizer, table
