"""Write a full-precision GGUF (F32/F16/BF16) from a checkpoint, streaming one tensor at a time.

The writer follows gguf's explicit state machine: all tensor infos first (shapes are planned
without reading data), then header, KV and tensor-info blocks, then each tensor's bytes. Peak
memory is one stacked tensor, not the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from packager.families import family_for
from packager.families.gguf_adapter import GGUFAdapter, PlannedTensor
from packager.source import Checkpoint
from packager.tokenizer_vocab import write_vocab

Progress = Callable[[str, int, int], None]

BASE_TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "F32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "F16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "BF16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
}


@dataclass(frozen=True)
class GGUFBuild:
    path: Path
    arch: str
    n_tensors: int
    bytes: int


def _target_type(adapter: GGUFAdapter, t: PlannedTensor, base: gguf.GGMLQuantizationType):
    if t.storage is not None:
        return t.storage
    # 1-D tensors (norms, biases) and routers stay F32: llama.cpp expects them so.
    if len(t.shape) <= 1 or adapter.keep_f32(t.name):
        return gguf.GGMLQuantizationType.F32
    return base


# Types stored as plain numpy arrays (everything else is quantized by gguf.quants).
_PLAIN = {
    gguf.GGMLQuantizationType.F32: np.float32,
    gguf.GGMLQuantizationType.F16: np.float16,
    gguf.GGMLQuantizationType.I32: np.int32,
}


def _encode(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == gguf.GGMLQuantizationType.I32:
        return np.ascontiguousarray(data, dtype=np.int32)
    data = np.ascontiguousarray(data, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F32:
        return data
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)


def _nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    n = int(np.prod(shape))
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    return n // block * size


def write_gguf(
    ckpt: Checkpoint, out_path: Path, base: str = "F32", progress: Progress | None = None
) -> GGUFBuild:
    """Convert `ckpt` to a GGUF of precision `base` at `out_path`."""
    qbase, ftype = BASE_TYPES[base]
    family = family_for(ckpt.config)
    family.require_gguf()
    adapter = family.gguf
    shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    plan = adapter.plan(shapes, ckpt.read)
    arch_name = adapter.arch_name()
    w = gguf.GGUFWriter(out_path, arch_name)
    w.add_name(ckpt.path.name)
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    adapter.write_hparams(w)
    write_vocab(w, ckpt.path, family.config.vocab_size)
    types = [_target_type(adapter, t, qbase) for t in plan]
    for t, qt in zip(plan, types, strict=True):
        np_dtype = _PLAIN.get(qt, np.uint16)
        w.add_tensor_info(t.name, t.shape, np.dtype(np_dtype), _nbytes(t.shape, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for i, (t, qt) in enumerate(zip(plan, types, strict=True)):
        data = t.build()
        if data.dtype == np.uint8 and qt not in _PLAIN:  # GGML blocks the checkpoint holds
            encoded = np.ascontiguousarray(data)
            if encoded.nbytes != _nbytes(t.shape, qt):
                raise ValueError(f"{t.name}: {encoded.nbytes} bytes, {qt.name} {t.shape} needs "
                                 f"{_nbytes(t.shape, qt)}")
        elif tuple(data.shape) != tuple(t.shape):
            raise ValueError(f"{t.name}: planned shape {t.shape}, built {data.shape}")
        else:
            encoded = _encode(data, qt)
        w.write_tensor_data(encoded)
        if progress:
            progress(t.name, i + 1, len(plan))
    w.close()
    return GGUFBuild(out_path, arch_name, len(plan), out_path.stat().st_size)
