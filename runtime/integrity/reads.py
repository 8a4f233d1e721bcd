"""Bringing an expert in: its pages mapped without SIGBUS, its bytes verified on first read.

The pager calls `bring_in(layer, expert)` for every expert it admits, after the cache decided and
before the layer's matmuls run. Every time, the expert's pages are mapped in with
MADV_POPULATE_READ (`MadviseResidency.populate`), which turns what would be a SIGBUS in the
engine (an I/O error, a file cut short) into an errno. The first time, its slices are then
hashed with xxh3 against the manifest (`contract/checksums.py`) straight from the pages just
mapped (`view`: the engine's mapping, so no copy and no second read), or, where nothing can be
populated (no mapping view, a kernel before 5.14), read with `pread` into a buffer. A damaged
slice or a failed read is ModelCorruptError naming the file, the tensor, the expert and the
bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import xxhash

from contract.checksums import RangeReadError, hash_range
from contract.manifest import LayerExperts
from runtime.errors import ModelCorruptError
from runtime.integrity.state import IntegrityState

# File bytes [start, end) -> 0 or the errno of the failed page-in.
Populate = Callable[[int, int], int]
# File bytes [start, end) -> the engine's mapped memory holding them, in order (None: unmapped).
View = Callable[[int, int], "list[memoryview] | None"]

REPAIR = "replace the bundle or repair it with `edgemoe pull`"


def no_readahead(fd: int) -> None:
    """Read exactly the ranges asked for: the kernel's readahead after a pread would pull in
    neighbouring experts the budget does not hold (measured: 2.7x the bytes read at a cold
    start at 25 %)."""
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)


class ExpertReader:
    """First-read verification and fault-safe page-in of one build's experts."""

    def __init__(
        self,
        path: Path,
        layers: Mapping[int, LayerExperts],
        digests: Mapping[str, tuple[str, ...]] | None,
        n_experts: int,
        state: IntegrityState,
        populate: Populate | None,
        view: View | None = None,
    ) -> None:
        self.path = Path(path)
        self.state = state
        self._populate = populate
        self._view = view if populate is not None else None
        self._fd = os.open(self.path, os.O_RDONLY)
        no_readahead(self._fd)
        # layer -> [(tensor name, offset of expert 0, stride, digests as uint64 or None)]
        self._tensors = {
            layer: [
                (t.name, t.offset, t.stride,
                 np.array([int(h, 16) for h in digests[t.name]], dtype=np.uint64)
                 if digests is not None and t.name in digests else None)
                for t in x.tensors
            ]
            for layer, x in layers.items()
        }
        self._verified = {layer: np.zeros(n_experts, dtype=bool) for layer in layers}
        self._checks = digests is not None
        stride = max((t.stride for x in layers.values() for t in x.tensors), default=0)
        self._buf = bytearray(min(stride, 1 << 22))

    @property
    def failed(self) -> bool:
        return self.state.fault is not None

    def bring_in(self, layer: int, expert: int) -> None:
        """Map the expert's pages in, then verify it if it has not been yet; raises
        ModelCorruptError (the caller records it in the state)."""
        populated = self._populate_all(layer, expert)  # the reads the engine's faults did before
        if self._checks and not self._verified[layer][expert]:
            cpu = time.thread_time()
            try:
                self.verify(layer, expert, in_place=populated)
            finally:  # the CPU the checks add to the decoding thread (hashing, pread fallback)
                self.state.verify_cpu_s += time.thread_time() - cpu

    def _populate_all(self, layer: int, expert: int) -> bool:
        if self._populate is None:
            return False
        for name, offset, stride, _ in self._tensors[layer]:
            start = offset + expert * stride
            err = self._populate(start, start + stride)
            if err:
                raise self._storage_error(name, layer, expert, start, start + stride,
                                          os.strerror(err) + " while paging in")
        return True

    def verify(self, layer: int, expert: int, in_place: bool = False) -> None:
        """xxh3 of each of the expert's slices against the manifest: from the mapped pages when
        `in_place` (just populated), else read with pread."""
        t0 = time.perf_counter()
        done = 0
        for name, offset, stride, digests in self._tensors[layer]:
            if digests is None:
                continue
            start, end = offset + expert * stride, offset + (expert + 1) * stride
            got = self._hash_mapped(start, end) if in_place else None
            if got is None:
                try:
                    got = hash_range(self._fd, start, end, self._buf)
                except RangeReadError as e:
                    raise self._storage_error(name, layer, expert, start, end, str(e)) from None
                except OSError as e:
                    reason = os.strerror(e.errno) if e.errno else str(e)
                    raise self._storage_error(name, layer, expert, start, end,
                                              reason) from None
            if got != int(digests[expert]):
                raise ModelCorruptError(
                    f"{self.path}: {name} expert {expert} (layer {layer}, bytes [{start}, {end})) "
                    f"does not match the manifest's checksum: the file is damaged; {REPAIR}"
                )
            done += end - start
        self._verified[layer][expert] = True
        self.state.experts_verified += 1
        self.state.expert_bytes_verified += done
        self.state.expert_verify_s += time.perf_counter() - t0

    def _hash_mapped(self, start: int, end: int) -> int | None:
        pieces = self._view(start, end) if self._view is not None else None
        if pieces is None:
            return None
        h = xxhash.xxh3_64()
        for piece in pieces:
            h.update(piece)
        return h.intdigest()

    def _storage_error(self, name: str, layer: int, expert: int, start: int, end: int,
                       reason: str) -> ModelCorruptError:
        return ModelCorruptError(
            f"{self.path}: {name} expert {expert} (layer {layer}, bytes [{start}, {end})) could "
            f"not be read: {reason} (storage fault or a file cut short); {REPAIR}"
        )

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
