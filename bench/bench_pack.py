"""edgemoe's packer vs llama.cpp's own convert_hf_to_gguf.py + llama-quantize, side by side.

Run:  .venv/bin/python bench/bench_pack.py [--fixture qwen3moe-medium] [--quant Q4_K_M]

Both paths start from the same checkpoint. llama.cpp's converter comes from the
llama-cpp-python source distribution of the version we depend on (fetched once with `pip
download` into ~/.cache/edgemoe/llama-cpp-src). Both quantize with the same
`llama_model_quantize`. Printed: wall time of each path, and top-1 agreement / mean KL against
the transformers float32 reference on held-out text for each quantized build.

Our fixtures' tokenizer is trained locally, so llama.cpp's converter cannot recognise it by hash;
the bench tells the converter it is Qwen2's pre-tokenizer (which it is) — that is the only change.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

VERSION = "0.3.36"
CACHE = Path.home() / ".cache" / "edgemoe" / "llama-cpp-src"

_SHIM = """
import sys
sys.path[:0] = [{gguf_py!r}, {root!r}]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
import convert_hf_to_gguf
sys.argv = ["convert_hf_to_gguf.py", {src!r}, "--outtype", "f32", "--outfile", {out!r}]
convert_hf_to_gguf.main()
"""


def llama_cpp_source() -> Path:
    root = CACHE / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
    if (root / "convert_hf_to_gguf.py").is_file():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    if not (CACHE / f"llama_cpp_python-{VERSION}.tar.gz").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"llama-cpp-python=={VERSION}",
                "-d",
                str(CACHE),
                "-q",
            ],
            check=True,
        )
    with tarfile.open(CACHE / f"llama_cpp_python-{VERSION}.tar.gz") as tar:
        members = [
            m
            for m in tar.getmembers()
            if "/vendor/llama.cpp/" in m.name
            and any(p in m.name for p in ("convert_hf_to_gguf.py", "/conversion/", "/gguf-py/"))
        ]
        tar.extractall(CACHE, members=members, filter="data")
    return root


def llama_cpp_pipeline(src: Path, out_dir: Path, quant: str) -> tuple[Path, float]:
    from packager.quantize import QuantizeOptions, quantize

    root = llama_cpp_source()
    f32 = out_dir / "llamacpp-f32.gguf"
    final = out_dir / f"llamacpp-{quant}.gguf"
    shim = _SHIM.format(gguf_py=str(root / "gguf-py"), root=str(root), src=str(src), out=str(f32))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", shim], check=True, capture_output=True)
    quantize(f32, final, QuantizeOptions(quant))
    return final, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", default="qwen3moe-medium")
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--eval-tokens", type=int, default=512)
    args = ap.parse_args()

    from edgemoe_fixtures import cached_fixture
    from edgemoe_fixtures.corpus import heldout_text
    from packager.api import PackOptions, pack
    from packager.fidelity import gguf_logits, measure, reference_logits, token_chunks

    src = cached_fixture(args.fixture)
    work = Path(tempfile.mkdtemp(prefix="edgemoe-bench-pack-"))
    t0 = time.perf_counter()
    pack(
        PackOptions(
            src=str(src),
            out_dir=work / "ours",
            quant=args.quant,
            reference=False,
            follow_plan=False,
        )
    )
    ours_s = time.perf_counter() - t0
    theirs, theirs_s = llama_cpp_pipeline(src, work, args.quant)

    chunks = token_chunks(src, heldout_text(), args.eval_tokens, 128)
    ref = reference_logits(src, chunks)
    d_ours = measure(ref, gguf_logits(work / "ours" / "model.gguf", chunks), chunks)
    d_theirs = measure(ref, gguf_logits(theirs, chunks), chunks)
    print(f"{args.fixture} -> {args.quant}, {d_ours.n_tokens} held-out tokens vs transformers F32")
    print(f"{'path':<34} {'wall s':>8} {'top-1':>7} {'mean KL':>10}")
    print(
        f"{'edgemoe pack (bundle + checksums)':<34} {ours_s:8.1f} {d_ours.top1_agreement:7.4f} "
        f"{d_ours.mean_kl:10.2e}"
    )
    print(
        f"{'llama.cpp convert + quantize':<34} {theirs_s:8.1f} {d_theirs.top1_agreement:7.4f} "
        f"{d_theirs.mean_kl:10.2e}"
    )
    print(
        f"time ratio (ours / llama.cpp): {ours_s / theirs_s:.2f}; "
        f"KL ratio: {d_ours.mean_kl / max(d_theirs.mean_kl, 1e-30):.3f}"
    )


if __name__ == "__main__":
    main()
