"""The pack stage for ONNX builds: export, describe as a bundle `Build`, measure.

`edgemoe pack --format onnx` (or `gguf,onnx`, or a profile whose `formats` lists onnx) writes
`model.onnx` + `model.onnx.data` (+ onnxruntime-genai's `genai_config.json`) into the bundle,
beside or instead of `model.gguf`. ONNX quant names are onnxruntime's: fp32, fp16, int8, int4
(block-wise); when both formats are built from one `--quant`, the ONNX build takes the nearest
precision of the GGUF type (F16 -> fp16, Q8_0 -> int8, 4-6 bit types -> int4).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from contract.manifest import FORMATS, Build
from packager.errors import PackError
from packager.source import Checkpoint

if TYPE_CHECKING:
    from packager.onnx_export import OnnxExport

ONNX_QUANTS = ("fp32", "fp16", "int8", "int4")


def parse_formats(text: str | None, profile_formats: tuple[str, ...]) -> tuple[str, ...]:
    """"gguf", "onnx", "gguf,onnx" (the first is the bundle's primary build); None: the
    profile's `formats`."""
    if text is None:
        return tuple(profile_formats) or ("gguf",)
    names = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise PackError(
            f"format '{text}' is not supported (supported: {', '.join(FORMATS)}, or both "
            "as 'gguf,onnx')"
        )
    return names


def onnx_quant_for(quant: str, onnx_only: bool) -> str:
    """The ONNX quant for `--quant`: its own names when only ONNX is built, else the nearest
    precision of the GGUF type."""
    q = quant.lower()
    if q in ONNX_QUANTS:
        return q
    if onnx_only and q.upper() not in ("F32", "F16", "BF16") and not q.upper().startswith("Q"):
        raise PackError(f"ONNX quant '{quant}' is not one of {', '.join(ONNX_QUANTS)}")
    up = quant.upper()
    if up == "F32":
        return "fp32"
    if up in ("F16", "BF16"):
        return "fp16"
    if up.startswith("Q8"):
        return "int8"
    return "int4"


def export(
    ckpt: Checkpoint, stage: Path, quant: str, imatrix: Mapping[str, np.ndarray] | None = None
) -> OnnxExport:
    """Write the ONNX build into the staging folder; returns the export's record. `imatrix`
    (pack --imatrix, the same one the GGUF build gets) weights the int4 quantizer's error."""
    from packager.onnx_export import export_onnx

    return export_onnx(ckpt.path, stage, quant=quant, importance=imatrix)


def build_record(exported: OnnxExport) -> Build:
    """The export as the manifest's Build: offsets address the external-data file."""
    return Build(
        format="onnx",
        model_file=exported.model_file.name,
        quant=exported.quant,
        dense_bytes=exported.dense_bytes,
        expert_layers=tuple(x.to_contract() for x in exported.expert_layers),
        data_file=exported.data_file.name,
        block_size=exported.block_size if exported.quant in ("int8", "int4") else None,
        opset=exported.opset,
    )


def divergence(
    ckpt: Checkpoint, model: Path, text: str, n_tokens: int, quant: str, scheme: dict[str, Any]
) -> dict[str, Any]:
    """The same report fields as the GGUF build's, measured through onnxruntime, plus the
    int schemes' block size and how scales and zero points were chosen."""
    from packager.fidelity import measure_onnx

    div = measure_onnx(ckpt.path, model, text, n_tokens=n_tokens)
    out: dict[str, Any] = {
        "quant": quant,
        "reference": "transformers float32",
        "eval_tokens": div.n_tokens,
        "divergence": div.to_dict(),
    }
    return {**out, **scheme}
