"""Block-wise asymmetric weight quantization for the ONNX export: one layout, two quantizers.

A checkpoint matrix [out=N, in=K] is quantized in blocks of `block` values along K (the
reduction axis): ``w ~ (q - z) * s`` with unsigned codes ``q`` in [0, 2**bits - 1], one float32
scale ``s`` and one integer zero point ``z`` per (row, block). Codes are stored row-major (int4:
two per byte, element ``2i`` in the low nibble); zero points are packed the same way along the
row's blocks (int4: ``ceil(n_blocks / 2)`` bytes per row, int8: one byte per block). That is
onnxruntime's own layout for ``MatMulNBits`` (dense matrices) and for ``GatherBlockQuantized``
over uint8 data (experts, gathered per token), so both kernels read the same bytes.

Two ways to choose (s, z), measured against each other in the package README:

* ``rtn``: onnxruntime's quantizer (``quantize_matmul_{4,8}bits``, the C++ routine behind
  ``MatMulNBitsQuantizer``'s default config): the block's [min, max] (widened to hold 0) split
  into 2**bits - 1 steps, round to nearest.
* ``search``: the same grid, then a search over narrower ranges (clipping the block's extremes)
  that keeps, per block, the (s, z) with the least *weighted* squared error, as llama.cpp's
  K-quants do. Weights are the importance of each input column (the mean squared activation it
  meets on calibration text, llama.cpp's importance matrix) times a term that favours large
  weights; without an importance matrix, columns count equally. onnxruntime's quantizers take
  no per-column importance, hence this one.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from packager.errors import PackError

QUANTS: tuple[str, ...] = ("fp32", "fp16", "int8", "int4")
METHODS: tuple[str, ...] = ("search", "rtn")
_BITS = {"int8": 8, "int4": 4}
# Block sizes by role, chosen by measurement (packager/onnx_export/README.md, "Block sizes").
# The kernels at accuracy_level 4 quantize each activation block to int8 as they go, so a
# dense matrix's block is also its activations' block: 16 keeps the attention's inputs close
# to float (the trained fixture's int8 KL 1.9e-4 at 32 -> 6.2e-5 at 16, Q8_0's 8.0e-5), at a
# small cost on matrices that are ~10 % of a token's bytes. Routed experts are most of the
# bytes: 128-value blocks run QMoE 1.14-1.19x faster than 32 (decode and prompt, 1 thread) and
# stay within Q4_K_M's / Q8_0's top-1 and KL.
EXPERT_BLOCK = 128
DENSE_BLOCK = 16
# Candidate ranges for `search`: the block's span divided by (levels - 1 + step * i).
_STEPS = np.arange(-0.5, 2.5001, 0.25)
_SHIFTS = (-1, 0, 1)
_SLICE_VALUES = 1 << 16  # weights per thread-pool task


@dataclass(frozen=True)
class QuantScheme:
    """A validated quant preset: how experts and dense matrices are stored.

    `method` chooses the 4-bit codes; 8-bit matrices (int8, and int4's 8-bit exceptions) are
    always onnxruntime's round to nearest, which measured as good as any search at 8 bits.
    """

    name: str
    bits: int | None  # None: float storage
    block_size: int  # routed experts' (most of the model's bytes)
    method: str = "search"
    dense_block_size: int | None = None  # dense matrices' (None: block_size)

    @property
    def dense_block(self) -> int:
        return self.dense_block_size or self.block_size

    @property
    def is_int(self) -> bool:
        return self.bits is not None

    def method_for(self, bits: int) -> str:
        return self.method if bits == 4 else "rtn"

    def fitted(self, widths: tuple[int | None, ...]) -> QuantScheme:
        """The scheme with the largest blocks (the asked ones or smaller, at least 16) that divide
        every input width given (None: absent). A model whose expert rows are narrower than the
        asked block (tiny test models: 16-wide experts) is quantized in 16-value blocks instead
        of refused, as llama.cpp's quantize gives such tensors another type; real MoEs' widths
        are multiples of 128, so their builds keep the asked blocks."""

        def fit(block: int) -> int:
            while block > 16 and any(w and w % block for w in widths):
                block //= 2
            return block

        block, dense = fit(self.block_size), fit(self.dense_block)
        if (block, dense) == (self.block_size, self.dense_block):
            return self
        return replace(self, block_size=block, dense_block_size=None if dense == block else dense)

    def describe(self, calibrated: bool) -> dict[str, Any]:
        """What report.json says about the scheme (nothing for float storage)."""
        if self.bits is None:
            return {}
        out: dict[str, Any] = {
            "block_size": self.block_size,
            "dense_block_size": self.dense_block,
            "scheme": "asymmetric: float32 scale and integer zero point per block",
            "codes": "round to nearest (onnxruntime quantize_matmul_8bits)",
        }
        if self.bits == 4:
            out["codes"] = (
                "round to nearest (onnxruntime quantize_matmul_4bits)" if self.method == "rtn"
                else "least squared error over clipped ranges, "
                + ("weighted by the importance matrix" if calibrated else "unweighted")
            )  # fmt: skip
            out["wider"] = (
                "8 bits where llama.cpp's Q4_K_M gives a tensor more than 4 (the output head, "
                "attn_v and ffn_down in its use_more_bits layers, attn_k/attn_v/attn_output "
                "in 8-expert models) and for dense FFN layers; routed experts run on "
                "onnxruntime's QMoE, one width per layer: gate_up's 4 bits for ffn_down too"
            )
        return out


def scheme(
    name: str,
    block_size: int | None = None,
    method: str = "search",
    dense_block_size: int | None = None,
) -> QuantScheme:
    """Validate a quant name, block sizes and method at the edge; errors list what is accepted.
    None: the measured defaults (experts EXPERT_BLOCK, dense DENSE_BLOCK)."""
    if name not in QUANTS:
        raise PackError(f"quant '{name}' is not supported for ONNX; choose one of {QUANTS}")
    for label, size in (("block_size", block_size), ("dense_block_size", dense_block_size)):
        if size is not None and (size < 16 or size & (size - 1)):
            raise PackError(f"{label} must be a power of two >= 16 (MatMulNBits), got {size}")
    if method not in METHODS:
        raise PackError(f"quant method '{method}' is not one of {METHODS}")
    block_size = block_size or EXPERT_BLOCK
    dense_block_size = dense_block_size or DENSE_BLOCK
    dense = None if dense_block_size == block_size else dense_block_size
    return QuantScheme(name, _BITS.get(name), block_size, method, dense)


@dataclass(frozen=True)
class BlockQuantized:
    """A [N, K] matrix in MatMulNBits / GatherBlockQuantized layout."""

    packed: np.ndarray  # uint8 [N, n_blocks, block * bits / 8]
    scales: np.ndarray  # float32 [N, n_blocks]
    zero_points: np.ndarray  # uint8 [N, ceil(n_blocks * bits / 8)]
    bits: int
    block: int
    k: int

    @property
    def n(self) -> int:
        return int(self.packed.shape[0])


def quantize(
    w: np.ndarray,
    bits: int,
    block: int,
    importance: np.ndarray | None = None,
    method: str = "search",
) -> BlockQuantized:
    """Quantize a checkpoint matrix [out=N, in=K] in blocks along K.

    `importance` is one non-negative value per input column (length K); K must be a whole
    number of blocks. Raises PackError on shapes or values the layout cannot hold.
    """
    w = np.asarray(w, dtype=np.float32)
    _check(w, bits, block, importance, method)
    n, k = w.shape
    if method == "rtn":
        return _rtn(w, bits, block)
    blocks = w.reshape(n, k // block, block)
    if importance is None:
        weights = np.ones_like(blocks)
    else:
        imp = np.asarray(importance, dtype=np.float32).reshape(1, k // block, block)
        # llama.cpp's K-quant weighting: importance times sqrt(sigma^2 + w^2), so that within
        # a column the large weights (which dominate the product) are fitted closest.
        sigma2 = (blocks**2).mean(axis=-1, keepdims=True)
        weights = imp * np.sqrt(sigma2 + blocks**2)
        # A column the calibration never excited still counts a little, not zero.
        weights = weights + 1e-6 * weights.mean(axis=-1, keepdims=True) + 1e-30
    q, scale, zero = _search_rows(blocks, weights, (1 << bits) - 1)
    packed = _pack(q.reshape(n, k), bits).reshape(n, k // block, block * bits // 8)
    return BlockQuantized(packed, scale, _pack(zero, bits), bits, block, k)


def dequantize(bq: BlockQuantized) -> np.ndarray:
    """The float32 [N, K] matrix the kernels compute with: (q - z) * s."""
    q = _unpack(bq.packed.reshape(bq.n, -1), bq.bits, bq.k).reshape(bq.n, -1, bq.block)
    z = _unpack(bq.zero_points, bq.bits, bq.k // bq.block)
    return ((q - z[..., None]) * bq.scales[..., None]).reshape(bq.n, bq.k).astype(np.float32)


def _check(w: np.ndarray, bits: int, block: int, importance: Any, method: str) -> None:
    if bits not in (4, 8):
        raise PackError(f"quantization to {bits} bits is not supported (4 or 8)")
    if method not in METHODS:
        raise PackError(f"quant method '{method}' is not one of {METHODS}")
    if w.ndim != 2 or 0 in w.shape:
        raise PackError(f"expected a non-empty [out, in] matrix, got shape {w.shape}")
    if w.shape[1] % block:
        raise PackError(f"input size {w.shape[1]} is not a multiple of block_size {block}")
    if not np.isfinite(w).all():
        raise PackError("the matrix holds NaN or infinite values; it cannot be quantized")
    if importance is not None:
        imp = np.asarray(importance)
        if imp.shape != (w.shape[1],):
            raise PackError(f"importance has shape {imp.shape}, expected ({w.shape[1]},)")
        if not np.isfinite(imp).all() or (imp < 0).any():
            raise PackError("importance must be finite and non-negative")


def _rtn(w: np.ndarray, bits: int, block: int) -> BlockQuantized:
    """onnxruntime's own asymmetric round-to-nearest (it takes the matrix as [K, N]): the
    binding its MatMulNBitsQuantizer calls, imported directly because that module also needs
    onnx_ir, a dependency the rest of it would bring for nothing here."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    n, k = w.shape
    nb = k // block
    packed = np.zeros((n, nb, block * bits // 8), np.uint8)
    zero = np.zeros((n, (nb * bits + 7) // 8), np.uint8)
    scales = np.zeros((n, nb), np.float32)
    fn = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    fn(packed, np.ascontiguousarray(w.T), scales, zero, block, n, k, False)
    return BlockQuantized(packed, scales, zero, bits, block, k)


def _search_rows(
    x: np.ndarray, wt: np.ndarray, qmax: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_search` over slices of rows on a thread pool: numpy releases the GIL inside its loops,
    and a slice's temporaries stay small. The slices are independent, so results are the same
    bytes whatever the number of threads."""
    step = max(1, _SLICE_VALUES // max(1, x[0].size))
    slices = [slice(i, i + step) for i in range(0, x.shape[0], step)]
    if len(slices) == 1:
        return _search(x, wt, qmax)
    with ThreadPoolExecutor(min(len(slices), os.cpu_count() or 1)) as pool:
        parts = list(pool.map(lambda sl: _search(x[sl], wt[sl], qmax), slices))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def _search(
    x: np.ndarray, wt: np.ndarray, qmax: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per block of x [..., B]: integer codes, float32 scale and integer zero point that
    minimise sum(wt * ((q - z) * s - x)^2), over candidate ranges [lo, hi] ⊇ {0}.

    For fixed codes the best scale is num / den (num = sum(wt c x), den = sum(wt c^2),
    c = q - z) and the error is sum(wt x^2) - num^2 / den, so each candidate costs one
    rounding pass and the codes are rounded once more at the end, for the winner.
    """
    lo = np.minimum(x.min(axis=-1, keepdims=True), 0)
    hi = np.maximum(x.max(axis=-1, keepdims=True), 0)
    span = hi - lo
    flat = span <= 0  # an all-zero block: scale 1, codes at the zero point 0
    span = np.where(flat, np.float32(1), span)
    best_gain = np.full(lo.shape, -np.inf)
    best_s = span / qmax
    best_z = np.zeros(lo.shape, np.float32)
    c = np.empty_like(x)
    for step in _STEPS:
        s = span / np.float32(qmax + step)
        for shift in _SHIFTS:
            z = np.clip(np.rint(-lo / s) + shift, 0, qmax)
            np.clip(np.rint(x / s + z, out=c), 0, qmax, out=c)
            c -= z
            wc = wt * c
            # float64 sums: at 8 bits candidates differ by less than float32 resolves.
            num = (wc * x).sum(axis=-1, keepdims=True, dtype=np.float64)
            den = (wc * c).sum(axis=-1, keepdims=True, dtype=np.float64)
            ok = (den > 0) & (num > 0)
            gain = np.where(ok, num * num / np.where(ok, den, 1), -np.inf)
            better = gain > best_gain
            best_gain = np.where(better, gain, best_gain)
            best_s = np.where(better, num / np.where(ok, den, 1), best_s)
            best_z = np.where(better, z, best_z)
    best_s = np.where(flat, 1, best_s).astype(np.float32)
    best_z = np.where(flat, 0, best_z).astype(np.float32)
    q = np.clip(np.rint(x / best_s + best_z), 0, qmax)
    return q.astype(np.uint8), best_s[..., 0].astype(np.float32), best_z[..., 0].astype(np.uint8)


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes [N, M] -> bytes [N, ceil(M * bits / 8)], element 2i in the low nibble."""
    u = np.ascontiguousarray(codes, dtype=np.uint8)
    if bits == 8:
        return u
    if u.shape[-1] % 2:
        u = np.concatenate([u, np.zeros((*u.shape[:-1], 1), np.uint8)], axis=-1)
    return np.ascontiguousarray(u[..., 0::2] | (u[..., 1::2] << 4))


def _unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    if bits == 8:
        return packed[..., :count].astype(np.float32)
    both = np.stack([packed & 15, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return both[..., :count].astype(np.float32)
