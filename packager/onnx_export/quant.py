"""Block-wise symmetric weight quantization for the ONNX export (pure numpy, no onnx).

One layout serves both consumers: a checkpoint matrix [out=N, in=K] is quantized in blocks
along K (the reduction axis) and stored row-major as unsigned ``q + 2**(bits-1)`` (int4: two
values per byte, element ``2i`` in the low nibble) with one float32 scale per (row, block). That
is exactly the layout of onnxruntime's ``MatMulNBits`` (dense, constant weights) and of
``GatherBlockQuantized`` (experts gathered per token), both with their default zero point, and
the blocked ``DequantizeLinear`` path reads the same bytes with an explicit zero point.

Scales are plain absmax per block (no calibration): ``q = round(w / s)`` with
``s = absmax / qmax`` (qmax 127 or 7), so values lie in [-qmax, qmax].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from packager.errors import PackError

QUANTS: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")
_QMAX = {8: 127, 4: 7}


@dataclass(frozen=True)
class QuantScheme:
    """A validated quant preset: how experts and dense matrices are stored."""

    name: str
    bits: int | None  # None: float storage
    block_size: int

    @property
    def is_int(self) -> bool:
        return self.bits is not None


def scheme(name: str, block_size: int) -> QuantScheme:
    """Validate a quant name and block size at the edge; errors list what is accepted."""
    if name not in QUANTS:
        raise PackError(f"quant '{name}' is not supported for ONNX; choose one of {QUANTS}")
    if block_size < 16 or block_size & (block_size - 1):
        raise PackError(f"block_size must be a power of two >= 16 (MatMulNBits), got {block_size}")
    bits = {"int8": 8, "int4": 4}.get(name)
    return QuantScheme(name, bits, block_size)


@dataclass(frozen=True)
class NBitsWeight:
    """A [N, K] matrix in MatMulNBits / GatherBlockQuantized layout."""

    packed: np.ndarray  # uint8 [N, n_blocks, block * bits / 8]
    scales: np.ndarray  # float32 [N * n_blocks]
    k: int
    n: int


def matmul_nbits(w: np.ndarray, bits: int, block: int) -> NBitsWeight:
    """Quantize a checkpoint matrix [out=N, in=K] in blocks along K (zero-padded to blocks)."""
    w = np.asarray(w, dtype=np.float32)
    n, k = w.shape
    pad = (-k) % block
    if pad:
        w = np.concatenate([w, np.zeros((n, pad), np.float32)], axis=1)
    blocks = w.reshape(n, -1, block)
    absmax = np.abs(blocks).max(axis=-1, keepdims=True)
    scale = (absmax / _QMAX[bits]).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(scale > 0, np.rint(blocks / np.where(scale > 0, scale, 1)), 0)
    offset = 1 << (bits - 1)
    u = (np.clip(q, -offset, offset - 1) + offset).astype(np.uint8)
    if bits == 4:
        u = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)
    return NBitsWeight(np.ascontiguousarray(u), scale.reshape(-1), k, n)
