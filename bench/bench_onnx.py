"""ONNX backend vs llama.cpp backend on the same checkpoint, side by side in one run.

Packs one checkpoint as `gguf,onnx` (Q8_0 + int8, and F16 + fp16), then alternates the two
backends in paired rounds at 100 % and 50 % budgets and prints the median of the paired ratios
(ONNX / llama.cpp) of decode and prefill tok/s; also pack time and bundle size per ONNX quant.

    .venv/bin/python bench/bench_onnx.py [--fixture qwen3moe-trained] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

PROMPT = "import os\nimport sys\n\ndef main(argv):\n    " * 4


def _speed(bundle: Path, backend: str, budget: str, tokens: int) -> tuple[float, float]:
    import runtime

    with runtime.load(bundle, budget=budget, backend=backend) as model:
        model.generate(PROMPT, max_tokens=4)  # warm
        r = model.generate(PROMPT, max_tokens=tokens)
        return r.timings["decode_tok_s"], r.timings["prefill_tok_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", default="qwen3moe-trained")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=48)
    args = ap.parse_args()
    from edgemoe_fixtures import cached_fixture
    from packager.api import PackOptions, pack

    ckpt = cached_fixture(args.fixture)
    root = Path(tempfile.mkdtemp(prefix="bench-onnx-"))
    print(f"fixture {args.fixture}")
    print("pack time and size per ONNX quant (ONNX export stage only):")
    bundles = {}
    for quant in ("fp32", "fp16", "int8", "int4"):
        out = root / f"onnx-{quant}"
        t0 = time.perf_counter()
        r = pack(PackOptions(src=str(ckpt), out_dir=out, format="onnx", quant=quant,
                             reference=False))
        size = sum(f.stat().st_size for f in out.iterdir() if f.name.startswith("model.onnx"))
        wall = time.perf_counter() - t0
        print(f"  {quant:5s} export {r.seconds['onnx']:6.2f} s (pack {wall:5.1f} s), "
              f"model.onnx + data {size / 2**20:7.1f} MiB")
        bundles[quant] = out
    pairs = {"Q8_0 vs int8": ("Q8_0", "int8"), "F16 vs fp16": ("F16", "fp16")}
    for label, (gq, _oq) in pairs.items():
        both = root / f"both-{gq}"
        pack(PackOptions(src=str(ckpt), out_dir=both, format="gguf,onnx", quant=gq,
                         reference=False))
        for budget in ("100%", "50%"):
            dec, pre = [], []
            for _ in range(args.rounds):  # paired: llama.cpp then ONNX, back to back
                ld, lp = _speed(both, "llama.cpp", budget, args.tokens)
                od, op = _speed(both, "onnx", budget, args.tokens)
                dec.append(od / ld)
                pre.append(op / lp)
                print(f"  {label} {budget}: llama.cpp decode {ld:7.1f} prefill {lp:7.1f} tok/s |"
                      f" onnx decode {od:7.1f} prefill {op:7.1f} tok/s")
            print(f"{label} at {budget}: ONNX/llama.cpp decode {statistics.median(dec):.2f}x, "
                  f"prefill {statistics.median(pre):.2f}x (median of {args.rounds} paired rounds)")


if __name__ == "__main__":
    main()
