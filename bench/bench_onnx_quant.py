"""ONNX int4/int8 next to llama.cpp's Q4_K_M/Q8_0 of the same checkpoint: top-1 and KL.

Run:  .venv/bin/python bench/bench_onnx_quant.py [--fixture qwen3moe-trained ...] [--tokens 4096]

Every build of a fixture is measured against the transformers float32 reference on the same
held-out text (the fixture corpus' held-out part, teacher forcing, identical token ids). The
importance matrix comes from edgemoe's default calibration text, as `pack --imatrix` computes
it, and is given to both llama.cpp's quantizer and the ONNX int4 quantizer. Prints one markdown
row per fixture (top-1 / mean KL per build), then the int4 quantizer variants and the sizes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

FIXTURES = ("qwen3moe-trained", "qwen3moe-tiny", "qwen2moe-tiny", "mixtral-tiny", "olmoe-tiny",
            "deepseek2-tiny")  # fmt: skip
COLUMNS = ("Q4_K_M", "int4", "Q4_K_M+imatrix", "int4+imatrix", "int4 rtn", "Q8_0", "int8")


def measure_fixture(name: str, work: Path, n_tokens: int) -> dict[str, tuple[float, float, int]]:
    """Column -> (top-1, mean KL, bytes on disk) for one fixture."""
    from edgemoe_fixtures import cached_fixture
    from edgemoe_fixtures.corpus import heldout_text
    from packager.default_texts import default_calibration_text
    from packager.fidelity import gguf_logits, measure, onnx_logits, reference_logits, token_chunks
    from packager.gguf_build import write_gguf
    from packager.imatrix import compute_imatrix
    from packager.onnx_export import export_onnx
    from packager.quantize import QuantizeOptions, quantize
    from packager.source import open_checkpoint

    ckpt = cached_fixture(name)
    chunks = token_chunks(ckpt, heldout_text(), n_tokens, 128)
    ref = reference_logits(ckpt, chunks)
    imatrix = compute_imatrix(open_checkpoint(ckpt), [default_calibration_text()])
    base = write_gguf(open_checkpoint(ckpt), work / f"{name}.f32.gguf", "F32").path
    out: dict[str, tuple[float, float, int]] = {}
    for col in COLUMNS:
        quant, _, extra = col.partition("+")
        imat = imatrix if extra == "imatrix" else None
        if quant.startswith("Q"):
            path = quantize(base, work / f"{name}.{col}.gguf", QuantizeOptions(quant, 2, imat))
            logits, size = gguf_logits(path, chunks), path.stat().st_size
        else:
            quant, _, method = quant.partition(" ")
            x = export_onnx(ckpt, work / f"{name}.{col}", quant, method=method or "search",
                            importance=imat)  # fmt: skip
            logits, size = onnx_logits(x.model_file, chunks), _unpadded_bytes(x)
        d = measure(ref, logits, chunks)
        out[col] = (d.top1_agreement, d.mean_kl, size)
        print(f"  {name} {col}: top1 {d.top1_agreement:.4f} KL {d.mean_kl:.2e} "
              f"(p99 {d.p99_kl:.1e}, max {d.max_kl:.1e}) {size / 2**20:.2f} MiB",
              flush=True)  # fmt: skip
    return out


def _unpadded_bytes(x) -> int:  # noqa: ANN001 - an OnnxExport
    """What the ONNX build stores, without the zero rows that page-align each expert."""
    experts = sum(t.used_bytes * t.n_experts for layer in x.expert_layers for t in layer.tensors)
    return x.dense_bytes + experts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", action="append", help="fixture name (repeat); default: all six")
    ap.add_argument("--tokens", type=int, default=4096, help="held-out tokens per build")
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench-onnx-quant-") as tmp:
        for name in args.fixture or FIXTURES:
            rows[name] = measure_fixture(name, Path(tmp), args.tokens)
    print(f"\n{args.tokens} held-out tokens, top-1 / mean KL vs transformers float32\n")
    print("| fixture | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, r in rows.items():
        cells = [f"{r[c][0]:.3f} / {r[c][1]:.1e}" for c in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nMiB on disk (ONNX: without page padding)\n")
    print("| fixture | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c][2] / 2**20:.2f}" for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
