"""How checkpoint tensors become graph values under a quant scheme: dense, vectors, experts.

Dense matrices are constants, so int8/int4 use onnxruntime's ``MatMulNBits`` (prepacked and
fast on CPU); fp16 stores half precision and casts at use. Expert stacks cannot be constants
(they are gathered per token), so each expert is stored in the checkpoint's own [out, in]
layout, padded with zero rows to whole pages, and decoded *after* the gather: fp16 is cast;
int8/int4 go through ``GatherBlockQuantized`` (gather + dequantize in one onnxruntime kernel,
the default) or standard Gather + nibble unpack + blocked ``DequantizeLinear`` (ONNX Gather
refuses int4 tensors, so nibbles travel as uint8). Both read the same bytes.
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
from packager.onnx_export.quant import QuantScheme, matmul_nbits
from packager.source import Checkpoint

# Expert decoding measured against each other: onnxruntime's fused GatherBlockQuantized, or
# standard Gather + (nibble unpack) + blocked DequantizeLinear.
DEQUANT_MODES = ("gbq", "dq")


@dataclass(frozen=True)
class ExpertStack:
    """One stacked expert matrix as stored: logical [in, out] per expert, plus its scales."""

    values: StackedInfo
    scales: StackedInfo | None
    shape: tuple[int, int]  # per expert, [out, in] as in the checkpoint


class Weights:
    """Reads, converts and writes weights; returns graph value names."""

    def __init__(
        self,
        ckpt: Checkpoint,
        graph: Graph,
        writer: DataWriter,
        quant: QuantScheme,
        dequant: str = "gbq",
    ) -> None:
        self.ckpt = ckpt
        self.g = graph
        self.w = writer
        self.q = quant
        self.dequant = dequant
        self.dense_bytes = 0
        self._cache: dict[str, str] = {}

    def has(self, name: str) -> bool:
        return name in self.ckpt.tensors

    def _add(self, name: str, array: np.ndarray) -> str:
        self.dense_bytes += array.nbytes
        return self.g.add_initializer(self.w.add(name, array))

    # ----- dense ----------------------------------------------------------------------
    def vector(self, name: str) -> str:
        """A norm weight or bias, always float32 (tiny, and precision-critical)."""
        if name not in self._cache:
            self._cache[name] = self._add(name, self.ckpt.read(name).astype(np.float32))
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
        scheme (the LM head stays 8-bit under int4, as llama.cpp keeps its output tensor wider).
        """
        w = self.ckpt.read(name)
        nbits = None if keep_fp32 else (bits or self.q.bits)
        if nbits is not None:
            nb = matmul_nbits(w, nbits, self.q.block_size)
            packed = self._add(f"{name}.q{nbits}", nb.packed)
            scales = self._add(f"{name}.scales", nb.scales)
            y = s.op(
                "MatMulNBits", [x, packed, scales], "MatMulNBits", domain=MS_DOMAIN,
                K=nb.k, N=nb.n, bits=nbits, block_size=self.q.block_size,
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
            proto, info = self.w.add_stacked(name, (m.astype(dtype) for m in mats()), n_experts)
            self.g.add_initializer(proto)
            return ExpertStack(info, None, (out_dim, in_dim))
        bits, bs = self.q.bits or 8, self.q.block_size
        if in_dim % bs:
            raise PackError(f"{name}: input size {in_dim} is not a multiple of block_size {bs}")
        # Values and scales must keep the same (padded) row count for GatherBlockQuantized.
        rows = _common_rows(out_dim, (in_dim * bits // 8, in_dim // bs * 4))
        scales: list[np.ndarray] = []

        def values() -> Iterator[np.ndarray]:
            for m in mats():
                nb = matmul_nbits(m, bits, bs)
                scales.append(nb.scales.reshape(out_dim, -1))
                yield nb.packed.reshape(out_dim, -1)

        proto, info = self.w.add_stacked(f"{name}.q{bits}", values(), n_experts, rows)
        self.g.add_initializer(proto)
        sproto, sinfo = self.w.add_stacked(f"{name}.scales", iter(scales), n_experts, rows)
        self.g.add_initializer(sproto)
        return ExpertStack(info, sinfo, (out_dim, in_dim))

    def gather_experts(self, s: Scope, stack: ExpertStack, ids: str) -> str:
        """The chosen experts' matrices as float [len(ids), out, in]."""
        out_dim, in_dim = stack.shape
        if not self.q.is_int:
            mat = self._unpad(s, s.op("Gather", [stack.values.name, ids], "Gather", axis=0),
                              stack, "Unpad")  # fmt: skip
            if self.q.name == "fp16":
                mat = s.op("Cast", [mat], "Cast", to=TensorProto.FLOAT)
            return mat
        assert stack.scales is not None
        bits, bs = self.q.bits or 8, self.q.block_size
        if self.dequant == "gbq":
            mat = s.op(
                "GatherBlockQuantized", [stack.values.name, ids, stack.scales.name],
                "GatherBlockQuantized", domain=MS_DOMAIN, bits=bits, block_size=bs,
                gather_axis=0, quantize_axis=2,
            )  # fmt: skip
            return self._unpad(s, mat, stack, "Unpad")
        vals = s.op("Gather", [stack.values.name, ids], "values/Gather", axis=0)
        vals = self._unpad(s, vals, stack, "values/Unpad")
        sc = s.op("Gather", [stack.scales.name, ids], "scales/Gather", axis=0)
        sc = self._unpad(s, sc, stack, "scales/Unpad")
        if bits == 4:
            lo = s.op("BitwiseAnd", [vals, s.const(15, np.uint8)], "unpack/Low")
            hi = s.op("BitShift", [vals, s.const(4, np.uint8)], "unpack/High", direction="RIGHT")
            pairs = s.op(
                "Concat", [s.unsqueeze(lo, [-1], "unpack/LowCol"),
                           s.unsqueeze(hi, [-1], "unpack/HighCol")],
                "unpack/Interleave", axis=-1,
            )  # fmt: skip
            vals = s.reshape(pairs, [0, 0, in_dim], "unpack/Reshape")
        zp = s.op("Expand", [s.const(1 << (bits - 1), np.uint8), s.op("Shape", [sc], "zp/Shape")],
                  "zp/Expand")  # fmt: skip
        return s.op("DequantizeLinear", [vals, sc, zp], "DequantizeLinear", axis=2, block_size=bs)

    def _unpad(self, s: Scope, x: str, stack: ExpertStack, name: str) -> str:
        """Drop the zero rows that pad each expert to whole pages."""
        out_dim = stack.shape[0]
        stored_rows = stack.values.stride * out_dim // stack.values.used_bytes
        return x if stored_rows == out_dim else s.slice(x, 0, out_dim, 1, name)


def _common_rows(rows: int, row_bytes: tuple[int, ...]) -> int:
    """Smallest row count >= rows at which every companion tensor fills whole pages."""
    step = 1
    for b in row_bytes:
        step = math.lcm(step, PAGE // math.gcd(b, PAGE))
    return -(-rows // step) * step
