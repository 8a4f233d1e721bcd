"""ONNX int8/int4 block sizes: fidelity and speed of each (experts, dense) pair, side by side.

    .venv/bin/python bench/bench_onnx_blocks.py [--quant int8|int4] [--pairs 32/32,128/16,...]
        [--speed-fixture qwen3moe-large] [--kl-fixture qwen3moe-trained] [--rounds 8]
        [--threads N] [--bundles DIR]

Each pair is "experts/dense": the block of the routed experts (the `QMoE` stacks, most of the
bytes) and of the dense `MatMulNBits` matrices. At accuracy_level 4 both kernels quantize each
activation block to int8 as they multiply, so a dense matrix's block is also its inputs' block.

Fidelity: top-1 and mean KL against the transformers float32 reference on the fixture corpus'
held-out text (teacher forcing, --tokens tokens), each pair exported from the same checkpoint.

Speed: every pair's bundle (`pack --format onnx`, 100 % budget) loaded in one process; per
round, a prompt by turns, then decode by turns of 8 tokens each with 50 ms between, the order
rotated each round, so a neighbour's load falls on all alike. Ratios are against the first
pair: the median over rounds of the paired ratios. The first line says the thread count.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import add_thread_options, cpu_window, others_busy, thread_setup


def parse_pairs(text: str) -> list[tuple[int, int]]:
    """"128/16,32/32" -> [(128, 16), (32, 32)]."""
    out = []
    for part in text.split(","):
        experts, _, dense = part.partition("/")
        out.append((int(experts), int(dense or experts)))
    return out


def fidelity(fixture: str, quant: str, pairs: list[tuple[int, int]], tokens: int) -> None:
    from edgemoe_fixtures import cached_fixture
    from edgemoe_fixtures.corpus import heldout_text
    from packager.fidelity import measure, onnx_logits, reference_logits, token_chunks
    from packager.onnx_export import export_onnx

    ckpt = cached_fixture(fixture)
    chunks = token_chunks(ckpt, heldout_text(), tokens, 128)
    ref = reference_logits(ckpt, chunks)
    print(f"\n== fidelity: {fixture} {quant}, {tokens} held-out tokens vs transformers fp32")
    with tempfile.TemporaryDirectory(prefix="bench-onnx-blocks-") as tmp:
        for experts, dense in pairs:
            x = export_onnx(ckpt, Path(tmp) / f"{experts}-{dense}", quant, block_size=experts,
                            dense_block_size=dense)  # fmt: skip
            d = measure(ref, onnx_logits(x.model_file, chunks), chunks)
            print(f"  experts {x.block_size:>3} / dense {x.scheme['dense_block_size']:>3}: "
                  f"top-1 {d.top1_agreement:.4f}  KL {d.mean_kl:.2e}", flush=True)


def pack_pair(fixture: str, quant: str, experts: int, dense: int, root: Path) -> Path:
    """The fixture as an ONNX-only bundle at these blocks (packed once into `root`)."""
    import packager.onnx_export as onnx_export
    from edgemoe_fixtures import cached_fixture
    from packager.api import PackOptions, pack

    out = root / f"{fixture}-{quant}-e{experts}d{dense}"
    if not (out / "manifest.json").is_file():
        export = onnx_export.export_onnx
        onnx_export.export_onnx = lambda *a, **k: export(  # the pack stage's call, these blocks
            *a, **{**k, "block_size": experts, "dense_block_size": dense})
        try:
            pack(PackOptions(src=str(cached_fixture(fixture)), out_dir=out, format="onnx",
                             quant=quant, reference=False))  # fmt: skip
        finally:
            onnx_export.export_onnx = export
    return out


def speed(bundles: dict[str, Path], threads: int, rounds: int, tokens: int) -> None:
    import numpy as np

    import runtime
    from edgemoe_fixtures.corpus import heldout_text

    text = heldout_text()[:1600]
    models = {k: runtime.load(p, budget="100%", backend="onnx", threads=threads)
              for k, p in bundles.items()}  # fmt: skip
    names = list(models)
    decode: dict[str, list[float]] = {k: [] for k in names}
    prefill: dict[str, list[float]] = {k: [] for k in names}
    window = cpu_window()
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        last = {}
        for k in order:
            m = models[k]
            m.engine.reset()
            ids = m.tokenize(text)
            t0 = time.perf_counter()
            last[k] = int(np.argmax(m.step(ids, timed=False)))
            prefill[k].append(len(ids) / (time.perf_counter() - t0))
            time.sleep(0.05)
        per_round: dict[str, list[float]] = {k: [] for k in names}
        for _ in range(tokens // 8):
            for k in order:
                m, t0 = models[k], time.perf_counter()
                for _ in range(8):
                    last[k] = int(np.argmax(m.step([last[k]], timed=False)))
                per_round[k].append(8 / (time.perf_counter() - t0))
                time.sleep(0.05)
        for k in names:
            decode[k].append(statistics.median(per_round[k]))
    for m in models.values():
        m.close()
    base = names[0]
    print(f"  ({len(ids)}-token prompt, {tokens} tokens decoded, {rounds} rounds; others kept "
          f"{others_busy(window):.2f} of a core busy)")
    for k in names:
        rd = statistics.median(a / b for a, b in zip(decode[k], decode[base], strict=True))
        rp = statistics.median(a / b for a, b in zip(prefill[k], prefill[base], strict=True))
        print(f"  {k:>22}: decode {statistics.median(decode[k]):6.1f} tok/s ({rd:.2f}x)  "
              f"prefill {statistics.median(prefill[k]):7.1f} tok/s ({rp:.2f}x)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quant", default="int4", choices=("int8", "int4"))
    ap.add_argument("--pairs", default="32/32,128/16,64/16,32/16",
                    help="experts/dense block sizes, the first the baseline")
    ap.add_argument("--speed-fixture", default="qwen3moe-large")
    ap.add_argument("--kl-fixture", default="qwen3moe-trained")
    ap.add_argument("--tokens", type=int, default=4096, help="held-out tokens for fidelity")
    ap.add_argument("--decode", type=int, default=64, help="tokens decoded per round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--parts", default="fidelity,speed")
    ap.add_argument("--bundles", default=None, help="keep the packed bundles here")
    add_thread_options(ap)
    args = ap.parse_args()
    pairs = parse_pairs(args.pairs)
    print(f"bench_onnx_blocks: {args.quant}, {thread_setup(args)}; pairs experts/dense "
          + ", ".join(f"{e}/{d}" for e, d in pairs))
    parts = set(args.parts.split(","))
    if "fidelity" in parts:
        fidelity(args.kl_fixture, args.quant, pairs, args.tokens)
    if "speed" in parts:
        with tempfile.TemporaryDirectory(prefix="bench-onnx-blocks-") as tmp:
            root = Path(args.bundles or tmp)
            bundles = {f"experts {e} / dense {d}": pack_pair(args.speed_fixture, args.quant, e,
                                                             d, root)
                       for e, d in pairs}  # fmt: skip
            print(f"\n== speed: {args.speed_fixture} {args.quant}, 100 %, {args.threads} threads")
            speed(bundles, args.threads, args.rounds, args.decode)


if __name__ == "__main__":
    main()
