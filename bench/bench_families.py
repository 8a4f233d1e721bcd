"""One README row per model family: fidelity of each build against transformers float32.

Run:  .venv/bin/python bench/bench_families.py [--fixture deepseek3-tiny ...] [--markdown]

Per fixture, on the same held-out tokens (1,024 in chunks of 128):
- F16 GGUF in stock llama.cpp: top-1 agreement, mean KL, and whether 24 greedy tokens equal
  transformers' `generate`;
- Q8_0 and Q4_K_M: mean KL of edgemoe's pack, and of llama.cpp's own convert_hf_to_gguf.py +
  the same quantizer (bench_pack.py's pipeline) where that converter accepts the checkpoint;
- whether runtime.load gives the same greedy tokens at 100/50/25 % expert budgets (cold);
- ONNX fp32 through onnxruntime: top-1 and mean KL, or the one-line refusal.
A family whose GGUF is refused (Phi-MoE) gets its ONNX int8/int4 KL in the quant columns and
its budgets run on onnxruntime.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PROMPT = "def read_config(path):\n    "
N_GREEDY = 24


def _divergence(ref: list[np.ndarray], cand: list[np.ndarray], chunks: Any) -> tuple[float, float]:
    from packager.fidelity import measure

    d = measure(ref, cand, chunks)
    return d.top1_agreement, d.mean_kl


def _greedy_equal(ckpt: Path, gguf: Path) -> bool:
    import llama_cpp
    import torch
    from transformers import AutoTokenizer

    from packager.calibrate import load_reference_model  # MXFP4 checkpoints dequantized

    ids = AutoTokenizer.from_pretrained(ckpt)(PROMPT)["input_ids"]
    model = load_reference_model(ckpt)
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=N_GREEDY, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(ids):].tolist()  # fmt: skip
    llm = llama_cpp.Llama(str(gguf), n_ctx=256, verbose=False, n_threads=2)
    try:
        llm.eval(ids)
        out = []
        for _ in range(N_GREEDY):
            last = np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),))
            out.append(int(np.argmax(last)))
            llm.eval(out[-1:])
    finally:
        llm.close()
    return out == ref


def _budgets_identical(bundle: Path, backend: str | None = None) -> bool:
    import runtime

    runs = []
    for budget, cold in (("100%", False), ("50%", True), ("25%", True)):
        with runtime.load(bundle, budget=budget, cold=cold, threads=2, backend=backend) as m:
            runs.append(m.generate(PROMPT, max_tokens=32, temperature=0.0).tokens)
    return all(r == runs[0] for r in runs)


def _onnx(ckpt: Path, work: Path, text: str) -> str:
    from packager.errors import PackError
    from packager.fidelity import measure_onnx
    from packager.onnx_export import export_onnx

    try:
        x = export_onnx(ckpt, work / "onnx", "fp32")
    except PackError as e:
        return f"refused: {e}"
    d = measure_onnx(ckpt, x.model_file, text, n_tokens=1024)
    return f"{d.top1_agreement:.3f} / {d.mean_kl:.1e}"


def measure_family(fixture: str, work: Path) -> dict[str, str]:
    from bench.bench_pack import llama_cpp_pipeline
    from contract.errors import BundleError
    from edgemoe_fixtures import cached_fixture
    from edgemoe_fixtures.corpus import heldout_text
    from packager.api import PackOptions, pack
    from packager.errors import PackError
    from packager.fidelity import gguf_logits, reference_logits, token_chunks

    ckpt = cached_fixture(fixture)
    chunks = token_chunks(ckpt, heldout_text(), n_tokens=1024, chunk=128)
    ref = reference_logits(ckpt, chunks)
    row: dict[str, str] = {"fixture": fixture}
    if _gguf_refusal(ckpt):
        return _onnx_only_row(row, ckpt, work, ref, chunks)
    bundles = {}
    for quant in ("F16", "Q8_0", "Q4_K_M"):
        bundles[quant] = work / quant
        pack(PackOptions(src=str(ckpt), out_dir=bundles[quant], format="gguf", quant=quant,
                         reference=False, follow_plan=False))  # fmt: skip
    top1, kl = _divergence(ref, gguf_logits(bundles["F16"] / "model.gguf", chunks), chunks)
    greedy = _greedy_equal(ckpt, bundles["F16"] / "model.gguf")
    row["F16 top-1 / KL / greedy"] = f"{top1:.3f} / {kl:.1e} / {'equal' if greedy else 'DIFFER'}"
    for quant in ("Q8_0", "Q4_K_M"):
        _, ours = _divergence(ref, gguf_logits(bundles[quant] / "model.gguf", chunks), chunks)
        try:
            theirs_path, _ = llama_cpp_pipeline(ckpt, work, quant)
            _, theirs = _divergence(ref, gguf_logits(theirs_path, chunks), chunks)
            row[f"{quant} KL (llama.cpp)"] = f"{ours:.1e} ({theirs:.1e})"
        except subprocess.CalledProcessError as e:  # the converter's refusal is a result here
            why = (e.stderr or b"").decode(errors="replace").strip().splitlines() or ["?"]
            row[f"{quant} KL (llama.cpp)"] = f"{ours:.1e} (converter fails: {why[-1][:60]})"
        except BundleError:  # so is a GGUF from it that llama.cpp cannot load
            row[f"{quant} KL (llama.cpp)"] = f"{ours:.1e} (converter's GGUF does not load)"
        except PackError:  # its GGUF converted, then llama.cpp's quantizer refused it
            row[f"{quant} KL (llama.cpp)"] = f"{ours:.1e} (quantizer refuses its GGUF)"
    row["100/50/25 % tokens"] = "identical" if _budgets_identical(bundles["Q8_0"]) else "DIFFER"
    row["ONNX fp32 top-1 / KL"] = _onnx(ckpt, work, heldout_text())
    return row


def _gguf_refusal(ckpt: Path) -> str:
    import json

    from packager.families import family_for

    return family_for(json.loads((ckpt / "config.json").read_text())).gguf_missing


def _onnx_only_row(row: dict[str, str], ckpt: Path, work: Path, ref: Any, chunks: Any
                   ) -> dict[str, str]:
    """A family whose GGUF is refused: the ONNX builds in the quant columns, budgets on ONNX."""
    from edgemoe_fixtures.corpus import heldout_text
    from packager.api import PackOptions, pack
    from packager.fidelity import onnx_logits

    row["F16 top-1 / KL / greedy"] = "GGUF refused (ONNX only)"
    bundles = {}
    for quant in ("int8", "int4"):
        bundles[quant] = work / quant
        pack(PackOptions(src=str(ckpt), out_dir=bundles[quant], format="onnx", quant=quant,
                         reference=False, follow_plan=False))  # fmt: skip
        _, kl = _divergence(ref, onnx_logits(bundles[quant] / "model.onnx", chunks), chunks)
        row[f"{'Q8_0' if quant == 'int8' else 'Q4_K_M'} KL (llama.cpp)"] = f"ONNX {quant} {kl:.1e}"
    same = _budgets_identical(bundles["int8"], backend="onnx")
    row["100/50/25 % tokens"] = "identical (ONNX)" if same else "DIFFER"
    row["ONNX fp32 top-1 / KL"] = _onnx(ckpt, work, heldout_text())
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", nargs="+", default=["deepseek3-tiny"])
    ap.add_argument("--markdown", action="store_true", help="print README table rows")
    args = ap.parse_args()
    rows = []
    for fixture in args.fixture:
        with tempfile.TemporaryDirectory(prefix=f"edgemoe-family-{fixture}-") as tmp:
            rows.append(measure_family(fixture, Path(tmp)))
        if not args.markdown:
            print("\n".join(f"{k:>26}: {v}" for k, v in rows[-1].items()), flush=True)
    if args.markdown:
        print("| " + " | ".join(rows[0]) + " |")
        print("|" + " --- |" * len(rows[0]))
        for r in rows:
            print("| " + " | ".join(r.values()) + " |")


if __name__ == "__main__":
    main()
