"""How checkpoint tensors become graph values under a quant scheme: dense, vectors, experts.

Dense matrices are constants, so int8/int4 use onnxruntime's ``MatMulNBits`` with zero points
(fast on CPU); fp16 stores half precision and casts at use. Expert stacks cannot be constants
(they are gathered per token), so each expert is stored in the checkpoint's own [out, in]
layout, padded with zero rows to whole pages, and decoded *after* the gather: fp16 is cast;
int8/int4 go through ``GatherBlockQuantized`` (gather + dequantize in one onnxruntime kernel,
the default) or standard Gather + nibble unpack + blocked ``DequantizeLinear`` (ONNX Gather
refuses int4 tensors, so nibbles travel as uint8). Both read the same bytes: codes, float32
scales and packed zero points, each its own stacked tensor whose experts are page-aligned.

A gather never touches the padding: each stack is declared 2-D as [n * padded_rows / G,
G * row], G rows of one expert per gathered row, with G the largest group of rows that tiles
both the real and the padded rows (usually the whole expert: one index per expert, which the
kernel handles fastest), and the chosen experts are the first out / G groups of each.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from packager.errors import PackError
from packager.onnx_export.external_data import PAGE, DataWriter, StackedInfo
from packager.onnx_export.graph import MS_DOMAIN, Graph, Scope
from packager.onnx_export.precision import Precision
from packager.onnx_export.quant import QuantScheme, quantize
from packager.source import Checkpoint

# Expert decoding measured against each other: onnxruntime's fused GatherBlockQuantized, or
# standard Gather + (nibble unpack) + blocked DequantizeLinear.
DEQUANT_MODES = ("gbq", "dq")
# MatMulNBits' accuracy_level per width: 4 lets the kernel quantize activations to int8 in
# blocks and use integer dot products, as llama.cpp's Q8_0/Q4_K kernels do. 8-bit weights have
# no other fast CPU kernel (level 0 dequantizes the matrix to float32 on every call: 35x slower
# on a [1024, 512] matrix). 4-bit weights at level 4 decode 1.11-1.14x against level 0 on
# qwen3moe-large (paired; a [512, 512] matrix at one token 10 vs 27 us), prefill level, at a
# little KL (the trained fixture's int4 8.4e-4 -> 9.1e-4, Q4_K_M's 1.9e-3): the package README.
ACCURACY_LEVEL = {8: 4, 4: 4}


@dataclass(frozen=True)
class ExpertStack:
    """One stacked expert matrix as stored, plus its scales and zero points when quantized."""

    values: StackedInfo
    scales: StackedInfo | None
    zero_points: StackedInfo | None
    shape: tuple[int, int]  # per expert, [out, in] as in the checkpoint
    rows: int  # stored rows per expert: `shape[0]` plus the page padding
    group: int  # checkpoint rows per row of the declared 2-D tensor
    bits: int | None  # None: float storage

    def tensors(self) -> list[tuple[StackedInfo, str]]:
        """(tensor, role suffix) in manifest order: values, then scales, then zero points."""
        out = [(self.values, "")]
        if self.scales is not None and self.zero_points is not None:
            out += [(self.scales, ".scales"), (self.zero_points, ".zero_points")]
        return out


class Weights:
    """Reads, converts and writes weights; returns graph value names."""

    def __init__(
        self,
        ckpt: Checkpoint,
        graph: Graph,
        writer: DataWriter,
        quant: QuantScheme,
        dequant: str = "gbq",
        precision: Precision | None = None,
    ) -> None:
        self.ckpt = ckpt
        self.g = graph
        self.w = writer
        self.q = quant
        self.dequant = dequant
        self.precision = precision or Precision(quant.bits)
        self.dense_bytes = 0
        self._cache: dict[str, str] = {}

    def has(self, name: str) -> bool:
        return name in self.ckpt.tensors

    def _add(self, name: str, array: np.ndarray) -> str:
        self.dense_bytes += array.nbytes
        return self.g.add_initializer(self.w.add(name, array))

    def _quantize(self, name: str, w: np.ndarray, bits: int, imp: np.ndarray | None,
                  block: int):
        try:
            return quantize(w, bits, block, imp, self.q.method_for(bits))
        except PackError as e:
            raise PackError(f"{name}: {e}") from None

    # ----- dense ----------------------------------------------------------------------
    def vector(self, name: str) -> str:
        """A norm weight or bias, always float32 (tiny, and precision-critical)."""
        if name not in self._cache:
            self._cache[name] = self._add(name, self.ckpt.read(name).astype(np.float32))
        return self._cache[name]

    def table(self, name: str, array: np.ndarray) -> str:
        """A small float32 constant a family derives from checkpoint tensors (reordered expert
        biases): kept whatever the scheme, like `vector`."""
        if name not in self._cache:
            self._cache[name] = self._add(name, np.ascontiguousarray(array, dtype=np.float32))
        return self._cache[name]

    def embedding(self, s: Scope, ids: str, name: str) -> str:
        """Gather token rows; fp32 stays fp32, every other scheme stores fp16 rows."""
        table = self.ckpt.read(name)
        if self.q.name == "fp32":
            return s.op("Gather", [self._add(name, table), ids], "Gather", axis=0)
        half = self._add(f"{name}.fp16", table.astype(np.float16))
        rows = s.op("Gather", [half, ids], "Gather", axis=0)
        return s.op("Cast", [rows], "Cast", to=TensorProto.FLOAT)

    def linear(
        self,
        s: Scope,
        x: str,
        name: str,
        bias: str | None = None,
        keep_fp32: bool = False,
        bits: int | None = None,
    ) -> str:
        """y = x @ W.T (+ b) for a checkpoint matrix W [out, in].

        `keep_fp32` is for routers and gates whose argmax must not move; `bits` overrides the
        width the precision plan gives the matrix.
        """
        w = self.ckpt.read(name)
        planned, imp = self.precision.dense(name)
        nbits = None if keep_fp32 else (bits or planned)
        if nbits is not None:
            bq = self._quantize(name, w, nbits, imp, self.q.dense_block)
            packed = self._add(f"{name}.q{nbits}", bq.packed)
            scales = self._add(f"{name}.scales", bq.scales)
            zeros = self._add(f"{name}.zero_points", bq.zero_points)
            y = s.op(
                "MatMulNBits", [x, packed, scales, zeros], "MatMulNBits", domain=MS_DOMAIN,
                K=bq.k, N=bq.n, bits=nbits, block_size=self.q.dense_block,
                accuracy_level=ACCURACY_LEVEL[nbits],
            )  # fmt: skip
        elif self.q.name == "fp16" and not keep_fp32:
            half = self._add(f"{name}.T.fp16", np.ascontiguousarray(w.T.astype(np.float16)))
            wt = s.op("Cast", [half], "CastWeight", to=TensorProto.FLOAT)
            y = s.op("MatMul", [x, wt], "MatMul")
        else:
            wt = self._add(f"{name}.T", np.ascontiguousarray(w.T))
            y = s.op("MatMul", [x, wt], "MatMul")
        if bias is not None:
            y = s.op("Add", [y, self.vector(bias)], "AddBias")
        return y

    # ----- experts --------------------------------------------------------------------
    def expert_stack(
        self, name: str, n_experts: int, read: Callable[[int], np.ndarray]
    ) -> ExpertStack:
        """Write experts [n, out, in] one at a time; `read(e)` gives expert e as [out, in]."""
        first = read(0)
        out_dim, in_dim = int(first.shape[0]), int(first.shape[1])

        def mats() -> Iterator[np.ndarray]:
            yield first
            for e in range(1, n_experts):
                yield read(e)

        if not self.q.is_int:
            dtype = np.float32 if self.q.name == "fp32" else np.float16
            rows = _common_rows(out_dim, (in_dim * np.dtype(dtype).itemsize,))
            group = math.gcd(out_dim, rows)
            proto, info = self.w.add_stacked(
                name, (m.astype(dtype) for m in mats()), n_experts, rows, group
            )
            self.g.add_initializer(proto)
            return ExpertStack(info, None, None, (out_dim, in_dim), rows, group, None)
        bits, imp = self.precision.experts(name, n_experts, in_dim)
        assert bits is not None
        bs = self.q.block_size
        if in_dim % bs:
            raise PackError(f"{name}: input size {in_dim} is not a multiple of block_size {bs}")
        n_blocks = in_dim // bs
        # Codes, scales and zero points keep one (padded) row count, as the kernels require.
        rows = _common_rows(out_dim, (in_dim * bits // 8, n_blocks * 4, -(-n_blocks * bits // 8)))
        # Packed zero points of consecutive rows join into one row only when none ends mid-byte.
        group = math.gcd(out_dim, rows) if bits == 8 or n_blocks % 2 == 0 else 1
        params: list[tuple[np.ndarray, np.ndarray]] = []  # (scales, zero points) per expert

        def codes() -> Iterator[np.ndarray]:
            for e, m in enumerate(mats()):
                bq = self._quantize(f"{name}[{e}]", m, bits, None if imp is None else imp[e], bs)
                params.append((bq.scales, bq.zero_points))
                yield bq.packed.reshape(out_dim, -1)

        stored = [self.w.add_stacked(f"{name}.q{bits}", codes(), n_experts, rows, group)]
        for i, suffix in enumerate((".scales", ".zero_points")):
            arrays = (p[i] for p in params)
            stored.append(self.w.add_stacked(f"{name}{suffix}", arrays, n_experts, rows, group))
        for proto, _ in stored:
            self.g.add_initializer(proto)
        info = [i for _, i in stored]
        return ExpertStack(info[0], info[1], info[2], (out_dim, in_dim), rows, group, bits)

    def gather_experts(self, s: Scope, stack: ExpertStack, ids: str) -> str:
        """The chosen experts' matrices as float [len(ids), out, in]: their real rows only."""
        out_dim, in_dim = stack.shape
        per_expert, real = stack.rows // stack.group, out_dim // stack.group
        index = s.op("Mul", [s.unsqueeze(ids, [1], "IdsCol"), s.const(per_expert)], "GroupBase")
        if real > 1:
            index = s.op("Add", [index, s.const(np.arange(real, dtype=np.int64)[None, :])],
                         "GroupIds")  # fmt: skip
        shape = [-1, out_dim, in_dim]
        if stack.bits is None:
            mat = s.reshape(s.op("Gather", [stack.values.name, index], "Gather", axis=0), shape)
            if self.q.name == "fp16":
                mat = s.op("Cast", [mat], "Cast", to=TensorProto.FLOAT)
            return mat
        assert stack.scales is not None and stack.zero_points is not None
        bits, bs = stack.bits, self.q.block_size
        if self.dequant == "gbq":
            mat = s.op(
                "GatherBlockQuantized",
                [stack.values.name, index, stack.scales.name, stack.zero_points.name],
                "GatherBlockQuantized", domain=MS_DOMAIN, bits=bits, block_size=bs,
                gather_axis=0, quantize_axis=1,
            )  # fmt: skip
            return s.reshape(mat, shape)
        per_row = {"values": in_dim * bits // 8, "scales": in_dim // bs,
                   "zero_points": -(-(in_dim // bs) * bits // 8)}  # fmt: skip
        part = {}
        for key, info in (("values", stack.values), ("scales", stack.scales),
                          ("zero_points", stack.zero_points)):  # fmt: skip
            rows = s.op("Gather", [info.name, index], f"{key}/Gather", axis=0)
            part[key] = s.reshape(rows, [-1, out_dim, per_row[key]], f"{key}/Rows")
        vals, sc, zp = part["values"], part["scales"], part["zero_points"]
        if bits == 4:
            vals = _unpack_nibbles(s.child("values"), vals, in_dim)
            zp = _unpack_nibbles(s.child("zero_points"), zp, in_dim // bs)
        return s.op("DequantizeLinear", [vals, sc, zp], "DequantizeLinear", axis=2, block_size=bs)


def _unpack_nibbles(s: Scope, packed: str, count: int) -> str:
    """uint8 [n, rows, m] -> [n, rows, count] of 4-bit values, low nibble first."""
    lo = s.op("BitwiseAnd", [packed, s.const(15, np.uint8)], "unpack/Low")
    hi = s.op("BitShift", [packed, s.const(4, np.uint8)], "unpack/High", direction="RIGHT")
    pairs = s.op(
        "Concat", [s.unsqueeze(lo, [-1], "unpack/LowCol"), s.unsqueeze(hi, [-1], "unpack/HighCol")],
        "unpack/Interleave", axis=-1,
    )  # fmt: skip
    both = s.reshape(pairs, [0, 0, -1], "unpack/Reshape")
    return s.slice(both, 0, count, 2, "unpack/Count") if count % 2 else both


def _common_rows(rows: int, row_bytes: tuple[int, ...]) -> int:
    """Smallest row count >= rows at which every companion tensor fills whole pages."""
    step = 1
    for b in row_bytes:
        step = math.lcm(step, PAGE // math.gcd(b, PAGE))
    return -(-rows // step) * step
