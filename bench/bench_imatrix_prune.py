"""What an importance matrix buys at low bit widths, and usage-guided vs random expert pruning.

Run:  .venv/bin/python bench/bench_imatrix_prune.py [--fixture qwen3moe-trained] [--seeds 3]

Every figure is KL divergence and top-1 agreement against the unpruned transformers float32
model on held-out text the model never saw (teacher forcing, identical token ids). The imatrix
and the usage profile come from the calibration text, which is disjoint from the held-out text.
Pruned models are evaluated in transformers float32, so quantization plays no part there.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

QUANTS = ("Q4_K_M", "Q3_K_S", "IQ4_XS", "Q2_K", "IQ3_S")
FRACTIONS = (0.25, 0.5)


def bench_imatrix(ckpt: Path, work: Path, calib: str, heldout: str, n_tokens: int) -> None:
    from packager.fidelity import gguf_logits, measure, reference_logits, token_chunks
    from packager.gguf_build import write_gguf
    from packager.imatrix import collect_imatrix
    from packager.quantize import QuantizeOptions, quantize
    from packager.source import open_checkpoint

    t0 = time.perf_counter()
    imatrix = collect_imatrix(ckpt, [calib], chunk_tokens=512, max_tokens=8192).importance()
    print(f"imatrix: {len(imatrix)} tensors in {time.perf_counter() - t0:.1f}s")
    base = write_gguf(open_checkpoint(ckpt), work / "f32.gguf", "F32").path
    chunks = token_chunks(ckpt, heldout, n_tokens, 256)
    ref = reference_logits(ckpt, chunks)
    print(f"\n{'quant':8} {'KL plain':>10} {'KL imatrix':>11} {'ratio':>6} "
          f"{'top1 plain':>11} {'top1 imatrix':>13}")
    for quant in QUANTS:
        plain = quantize(base, work / f"{quant}.gguf", QuantizeOptions(quant))
        imat = quantize(base, work / f"{quant}-imat.gguf", QuantizeOptions(quant, imatrix=imatrix))
        a = measure(ref, gguf_logits(plain, chunks), chunks)
        b = measure(ref, gguf_logits(imat, chunks), chunks)
        print(f"{quant:8} {a.mean_kl:10.5f} {b.mean_kl:11.5f} {b.mean_kl / a.mean_kl:6.2f} "
              f"{a.top1_agreement:11.3f} {b.top1_agreement:13.3f}")


def bench_prune(ckpt: Path, work: Path, calib: str, heldout: str, n_tokens: int,
                seeds: int) -> None:
    from packager.calibrate import calibrate
    from packager.prune import PruneEvaluator, prune_checkpoint

    usage = calibrate(ckpt, [calib], engine="llama.cpp", chunk_tokens=512, max_tokens=8192)
    evaluator = PruneEvaluator(ckpt, heldout, n_tokens, 256)
    print(f"\nusage profile: {usage.n_tokens} tokens; pruned models in transformers float32")
    print(f"{'pruned':7} {'strategy':10} {'KL':>8} {'top1':>6} {'ppl':>7} {'lost sel.':>9}")
    for fraction in FRACTIONS:
        rows = []
        for strategy, seed in [("usage", 0)] + [("random", s) for s in range(seeds)]:
            out = work / f"{strategy}-{fraction}-{seed}"
            result = prune_checkpoint(ckpt, usage, fraction, out, strategy, seed, force=True)
            rep = evaluator.report(out)
            rows.append((strategy, rep, result.mean_removed_selections))
            label = strategy if strategy == "usage" else f"random:{seed}"
            print(f"{fraction:7.0%} {label:10} {rep['mean_kl']:8.5f} {rep['top1_agreement']:6.3f} "
                  f"{rep['ppl_pruned']:7.2f} {result.mean_removed_selections:9.1%}")
        guided = rows[0][1]["mean_kl"]
        random_kl = statistics.mean(r[1]["mean_kl"] for r in rows[1:])
        print(f"{fraction:7.0%} {'ratio':10} {guided / random_kl:8.2f}  (guided / mean random; "
              f"unpruned ppl {rows[0][1]['ppl_orig']:.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", default="qwen3moe-trained")
    ap.add_argument("--tokens", type=int, default=2048, help="held-out tokens evaluated")
    ap.add_argument("--seeds", type=int, default=3, help="random-pruning seeds averaged")
    ap.add_argument("--skip-imatrix", action="store_true")
    ap.add_argument("--skip-prune", action="store_true")
    args = ap.parse_args()

    from edgemoe_fixtures import cached_fixture
    from edgemoe_fixtures.corpus import calibration_text, heldout_text

    ckpt = cached_fixture(args.fixture)
    calib, heldout = calibration_text(), heldout_text()
    with tempfile.TemporaryDirectory(prefix="edgemoe-bench-") as tmp:
        if not args.skip_imatrix:
            bench_imatrix(ckpt, Path(tmp), calib, heldout, args.tokens)
        if not args.skip_prune:
            bench_prune(ckpt, Path(tmp), calib, heldout, args.tokens, args.seeds)


if __name__ == "__main__":
    main()
