"""`export_onnx`: checkpoint folder -> model.onnx + model.onnx.data + genai_config.json.

Everything is written into a hidden staging folder inside `out_dir` and renamed into place only
when complete (data first, model.onnx last), so a failed or killed export never leaves a model
that looks valid. The result records, for every stacked expert tensor, where expert e's bytes
live in the data file — the same contract `contract.manifest.ExpertTensor` gives for GGUF.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from contract.files import atomic_write_text
from contract.manifest import ExpertTensor, LayerExperts
from packager.errors import CheckpointError, PackError
from packager.onnx_export.external_data import DataWriter, StackedInfo
from packager.onnx_export.genai_config import genai_config
from packager.onnx_export.model import OPSET, build_model
from packager.onnx_export.moe import EXPERT_MODES
from packager.onnx_export.precision import precision_for
from packager.onnx_export.qmoe import FusedProjection
from packager.onnx_export.quant import scheme
from packager.onnx_export.weights import DEQUANT_MODES, ExpertStack
from packager.source import open_checkpoint

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
GENAI_CONFIG = "genai_config.json"


@dataclass(frozen=True)
class OnnxExpertTensor:
    """One stacked expert tensor in the data file: expert e lives at [offset + e*stride, +stride).

    `offset` is page-aligned (4096). Gathered layouts (float builds) pad each expert to whole
    pages: `stride` is a page multiple and its first `used_bytes` are the expert's matrix in the
    checkpoint's [out, in] layout, the rest zero rows. The fused layout (QMoE, int8/int4) is
    unpadded: `stride == used_bytes` and neighbours may share a page (qmoe.py). Quantized:
    unsigned codes (int4 two per byte), float32 scales per block of the in axis, uint8 zero
    points (int4 two per byte), see quant.py.
    """

    name: str
    dtype: str  # stored element type: float32, float16, uint8 (codes or zero points)
    offset: int
    stride: int
    used_bytes: int
    n_experts: int
    role: str  # "gate_up", "down", and when quantized "<role>.scales", "<role>.zero_points"

    def to_contract(self) -> ExpertTensor:
        return ExpertTensor(self.name, self.dtype, self.offset, self.stride)


@dataclass(frozen=True)
class OnnxLayerExperts:
    layer: int
    tensors: tuple[OnnxExpertTensor, ...]

    @property
    def expert_bytes(self) -> int:
        return sum(t.stride for t in self.tensors)

    def ranges(self, expert: int) -> list[tuple[int, int]]:
        return [(t.offset + expert * t.stride, t.offset + (expert + 1) * t.stride)
                for t in self.tensors]  # fmt: skip

    def to_contract(self) -> LayerExperts:
        return LayerExperts(self.layer, tuple(t.to_contract() for t in self.tensors))


@dataclass(frozen=True)
class OnnxExport:
    model_file: Path
    data_file: Path
    genai_config_file: Path
    architecture: str
    expert_layers: tuple[OnnxLayerExperts, ...]
    dense_bytes: int
    quant: str
    block_size: int
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    n_experts: int
    top_k: int
    kv_layout: tuple[int, int, int]  # (heads, key dim, value dim) of past_key_values.*
    expert_mode: str
    dequant: str
    scheme: dict[str, Any]  # block size and how scales/zero points were chosen ({} for float)

    @property
    def expert_bytes_total(self) -> int:
        return sum(layer.expert_bytes * self.n_experts for layer in self.expert_layers)


def export_onnx(
    checkpoint_dir: Path,
    out_dir: Path,
    quant: str = "fp32",
    block_size: int | None = None,
    *,
    dense_block_size: int | None = None,
    expert_mode: str | None = None,
    dequant: str = "gbq",
    method: str = "search",
    importance: Mapping[str, np.ndarray] | None = None,
) -> OnnxExport:
    """Export a local HF MoE checkpoint to ONNX that stock onnxruntime runs on CPU.

    `quant`: fp32 | fp16 | int8 | int4 (block-wise asymmetric, `block_size` values per scale
    and zero point in routed experts, `dense_block_size` in dense matrices, None: the measured
    defaults in quant.py; `method` chooses int4's codes, see quant.py; int4 keeps Q4_K_M's wider
    tensors at 8 bits, see precision.py). `importance`: llama.cpp's importance matrix (GGUF
    tensor name -> per-column values, `packager.imatrix`) to weight int4's error by.
    `expert_mode` and `dequant` choose between measured graph layouts of the expert
    computation (see moe.py, qmoe.py and weights.py); the defaults are the faster ones on CPU:
    `fused` (QMoE) for int8 and int4, `unique` for float builds (onnxruntime's float MoE
    kernel packs every expert into a private copy).
    """
    q = scheme(quant, block_size, method, dense_block_size)
    expert_mode = expert_mode or ("fused" if q.is_int else "unique")
    if expert_mode not in EXPERT_MODES:
        raise PackError(f"expert_mode '{expert_mode}' is not one of {EXPERT_MODES}")
    if expert_mode == "fused" and not q.is_int:
        raise PackError(f"expert_mode 'fused' needs int8 or int4 experts, not {quant}")
    if dequant not in DEQUANT_MODES:
        raise PackError(f"dequant '{dequant}' is not one of {DEQUANT_MODES}")
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    if not checkpoint_dir.is_dir():
        raise CheckpointError(f"{checkpoint_dir}: not a checkpoint folder")
    ckpt = open_checkpoint(checkpoint_dir)
    from packager.families import family_for  # the families' ONNX hooks import this package

    fam = family_for(ckpt.config).onnx(ckpt)
    if q.is_int:
        c = fam.config
        q = q.fitted((c.hidden_size, c.moe_intermediate_size or c.intermediate_size))
    plan = precision_for(q.bits, ckpt.config, fam.n_layers, fam.n_experts, importance)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=out_dir))
    writer = DataWriter(stage / DATA_FILE, DATA_FILE)
    try:
        built = build_model(ckpt, fam, writer, q, expert_mode, dequant, plan)
        writer.close()
        onnx.save_model(built.model, str(stage / MODEL_FILE))
        gen_path = checkpoint_dir / "generation_config.json"
        gen = json.loads(gen_path.read_text(encoding="utf-8")) if gen_path.is_file() else None
        atomic_write_text(
            stage / GENAI_CONFIG, json.dumps(genai_config(fam, MODEL_FILE, gen), indent=2) + "\n"
        )
        for name in (DATA_FILE, GENAI_CONFIG, MODEL_FILE):  # the model last: it marks completion
            os.replace(stage / name, out_dir / name)
    except OSError as e:
        raise PackError(f"{out_dir}: writing the ONNX export failed: {e}") from e
    finally:
        writer.abort()
        shutil.rmtree(stage, ignore_errors=True)
    layers = tuple(
        OnnxLayerExperts(layer, tuple(_tables(st.gate_up, "gate_up") + _tables(st.down, "down")))
        for layer, st in sorted(built.stacks.items())
    )
    return OnnxExport(
        model_file=out_dir / MODEL_FILE,
        data_file=out_dir / DATA_FILE,
        genai_config_file=out_dir / GENAI_CONFIG,
        architecture=fam.architecture,
        expert_layers=layers,
        dense_bytes=built.dense_bytes,
        quant=q.name,
        block_size=q.block_size,
        opset=OPSET,
        input_names=built.input_names,
        output_names=built.output_names,
        n_experts=fam.n_experts,
        top_k=fam.top_k,
        kv_layout=fam.kv_layout(),
        expert_mode=expert_mode,
        dequant=dequant,
        scheme=q.describe(calibrated=plan.calibrated),
    )


def _tables(stack: ExpertStack | FusedProjection, role: str) -> list[OnnxExpertTensor]:
    return [_entry(info, role + suffix) for info, suffix in stack.tensors()]


def _entry(info: StackedInfo, role: str) -> OnnxExpertTensor:
    return OnnxExpertTensor(
        info.name, info.dtype, info.offset, info.stride, info.used_bytes, info.n_experts, role
    )
