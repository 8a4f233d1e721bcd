"""Quantize a GGUF with llama.cpp's own quantizer (`llama_model_quantize`), never by hand.

Optional inputs map one-to-one onto llama.cpp's C structs: an importance matrix (per-tensor
float arrays, per expert for stacked experts), per-tensor type overrides and pruned layers.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from packager.errors import PackError


@dataclass(frozen=True)
class QuantizeOptions:
    ftype: str  # llama.cpp file type name, e.g. "Q4_K_M"
    threads: int = 0
    imatrix: Mapping[str, np.ndarray] | None = None  # GGUF tensor name -> importance (float32)
    tensor_types: Mapping[str, str] = field(default_factory=dict)  # regex -> ggml type name


def llama_ftype(name: str) -> int:
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name.upper()}", None)
    if name.upper() == "F32":
        value = llama_cpp.LLAMA_FTYPE_ALL_F32
    if value is None:
        raise PackError(f"unknown quant type '{name}' for llama.cpp's quantizer")
    return int(value)


def ggml_type(name: str) -> int:
    import gguf

    try:
        return int(gguf.GGMLQuantizationType[name.upper()])
    except KeyError:
        raise PackError(f"unknown ggml tensor type '{name}' in a tensor-type override") from None


def _imatrix_array(imatrix: Mapping[str, np.ndarray], keep: list):
    import llama_cpp

    n = len(imatrix)
    arr = (llama_cpp.llama_model_imatrix_data * (n + 1))()
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        data = np.ascontiguousarray(values, dtype=np.float32).ravel()
        if not np.all(np.isfinite(data)):
            raise PackError(f"importance matrix for '{name}' has non-finite values")
        keep.extend([data, name.encode()])
        arr[i].name = keep[-1]
        arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = data.size
    arr[n].name = None  # llama.cpp stops at the first NULL name
    return arr


def _overrides_array(tensor_types: Mapping[str, str], keep: list):
    import llama_cpp

    n = len(tensor_types)
    arr = (llama_cpp.llama_model_tensor_override * (n + 1))()
    for i, (pattern, tname) in enumerate(tensor_types.items()):
        keep.append(pattern.encode())
        arr[i].pattern = keep[-1]
        arr[i].type = ggml_type(tname)
    arr[n].pattern = None
    return arr


def quantize(src: Path, dst: Path, opts: QuantizeOptions) -> Path:
    """Run llama.cpp's quantizer from `src` (F32/F16 GGUF) to `dst`."""
    import llama_cpp
    from llama_cpp._logger import set_verbose

    set_verbose(False)  # llama.cpp logs every tensor otherwise
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_ftype(opts.ftype)
    params.nthread = opts.threads or (os.cpu_count() or 1)
    keep: list = []  # keeps ctypes-referenced buffers alive during the call
    if opts.imatrix:
        params.imatrix = _imatrix_array(opts.imatrix, keep)
    if opts.tensor_types:
        params.tt_overrides = _overrides_array(opts.tensor_types, keep)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise PackError(f"llama.cpp failed to quantize {src.name} to {opts.ftype} (code {rc})")
    return dst
