"""The one external-data file: tensors written at page-aligned offsets, streamed one at a time.

We write the bytes ourselves instead of letting ``onnx.save_model`` lay them out because the
runtime pages experts by byte range: every tensor starts on a 4096-byte boundary and every row
of a stacked expert tensor is padded to a whole number of pages, so releasing one expert with
``madvise`` never touches a neighbour. The TensorProtos are still made by ``onnx.helper`` and
pointed at the file with ``onnx.external_data_helper.set_external_data``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import BinaryIO

import numpy as np
from onnx import TensorProto, external_data_helper

from packager.errors import PackError

PAGE = 4096

_ONNX_TYPES: dict[np.dtype, int] = {
    np.dtype(np.float32): TensorProto.FLOAT,
    np.dtype(np.float16): TensorProto.FLOAT16,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(np.int64): TensorProto.INT64,
}


def onnx_type(dtype: np.dtype) -> int:
    return _ONNX_TYPES[np.dtype(dtype)]


def _align(n: int, to: int = PAGE) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class StackedInfo:
    """Where one stacked expert tensor landed: expert e is [offset + e*stride, +stride), its
    first `used_bytes` the expert's rows and the rest zero rows."""

    name: str
    dtype: str  # numpy name of the stored element type
    offset: int
    stride: int
    n_experts: int
    shape: tuple[int, ...]  # one expert as written, before padding rows
    used_bytes: int  # bytes per expert before page padding


class _State(Enum):
    OPEN = "open"
    CLOSED = "closed"


class DataWriter:
    """Appends tensors to `path`; `location` is the name the model will reference."""

    def __init__(self, path: Path, location: str) -> None:
        self.path = path
        self.location = location
        self._f: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._state = _State.OPEN
        self.bytes_written = 0

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise PackError(f"{self.path.name}: tensor written after the data file was closed")

    def _seek_aligned(self) -> int:
        offset = _align(self._f.tell())
        self._f.seek(offset)
        return offset

    def _proto(self, name: str, dtype: np.dtype, dims: list[int], offset: int, length: int):
        # No bytes in the proto: set_external_data wants a raw_data field, which we then drop.
        t = TensorProto(name=name, data_type=onnx_type(dtype), dims=dims, raw_data=b"")
        external_data_helper.set_external_data(t, self.location, offset, length)
        t.ClearField("raw_data")
        return t

    def add(self, name: str, array: np.ndarray) -> TensorProto:
        """Write one whole tensor at the next page boundary."""
        self._check_open()
        a = np.ascontiguousarray(array)
        offset = self._seek_aligned()
        self._f.write(a.tobytes())
        self.bytes_written += a.nbytes
        return self._proto(name, a.dtype, list(a.shape), offset, a.nbytes)

    def add_stacked(
        self,
        name: str,
        mats: Iterable[np.ndarray],
        n_rows: int,
        rows: int | None = None,
        group: int = 1,
    ) -> tuple[TensorProto, StackedInfo]:
        """Write one expert matrix [R, C] per expert, padded to whole pages.

        Padding is whole zero rows (R is rounded up so R*C bytes is a multiple of 4096, or to
        `rows` when a companion tensor must agree). The tensor is declared 2-D,
        [n * R_padded / group, group * C]: a gather picks an expert's real rows, `group` at a
        time, and never touches its padding. `mats` is consumed lazily: only one expert is in
        memory at a time.
        """
        self._check_open()
        offset = self._seek_aligned()
        stride = used = 0
        first: np.ndarray | None = None
        count = 0
        for mat in mats:
            m = np.ascontiguousarray(mat)
            if first is None:
                first, used = m, m.nbytes
                row = m.nbytes // m.shape[0]
                stride = rows * row if rows else _align(used, math.lcm(PAGE, row))
                if stride % PAGE or stride < used:
                    raise PackError(f"{name}: {rows} rows of {row} bytes are not whole pages")
            elif m.dtype != first.dtype or m.shape != first.shape:
                raise PackError(f"{name}: expert {count} differs in shape or type from expert 0")
            self._f.seek(offset + count * stride)
            self._f.write(m.tobytes())
            count += 1
        if count != n_rows or first is None:
            raise PackError(f"{name}: wrote {count} experts, expected {n_rows}")
        end = offset + count * stride
        self._f.truncate(end)
        self._f.seek(end)
        self.bytes_written += used * count
        padded = stride * first.shape[0] // used
        if padded % group or first.shape[0] % group or first.ndim != 2:
            raise PackError(f"{name}: {group} rows per gather do not tile {padded} stored rows")
        dims = [count * padded // group, group * first.shape[1]]
        proto = self._proto(name, first.dtype, dims, offset, count * stride)
        info = StackedInfo(name, first.dtype.name, offset, stride, count, tuple(first.shape), used)
        return proto, info

    def add_contiguous(
        self, name: str, mats: Iterable[np.ndarray], n: int
    ) -> tuple[TensorProto, StackedInfo]:
        """Write one matrix per expert back to back, unpadded: a [n, R, C] tensor that starts on
        a page (the layout fused MoE kernels index as expert * R * C). An expert's bytes may
        share a page with its neighbour's; the runtime pages such ranges as it pages GGUF's.
        `mats` is consumed lazily."""
        self._check_open()
        offset = self._seek_aligned()
        first: np.ndarray | None = None
        count = 0
        for mat in mats:
            m = np.ascontiguousarray(mat)
            if first is None:
                first = m
            elif m.dtype != first.dtype or m.shape != first.shape:
                raise PackError(f"{name}: expert {count} differs in shape or type from expert 0")
            self._f.write(m.tobytes())
            count += 1
        if count != n or first is None:
            raise PackError(f"{name}: wrote {count} experts, expected {n}")
        self.bytes_written += first.nbytes * count
        dims = [count, *first.shape]
        proto = self._proto(name, first.dtype, dims, offset, first.nbytes * count)
        info = StackedInfo(name, first.dtype.name, offset, first.nbytes, count,
                           tuple(first.shape), first.nbytes)  # fmt: skip
        return proto, info

    def close(self) -> int:
        """Flush to disk; returns the file size."""
        if self._state is _State.OPEN:
            size = self._f.seek(0, 2)
            # The last tensor may end mid-page; pad so every stride lies inside the file.
            self._f.truncate(_align(size))
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._state = _State.CLOSED
        return self.path.stat().st_size

    def abort(self) -> None:
        if self._state is _State.OPEN:
            self._f.close()
            self._state = _State.CLOSED
