"""Bringing an expert in: its bytes verified on first read, its pages mapped without SIGBUS.

The pager calls `bring_in(layer, expert)` for every expert it admits, after the cache decided and
before the layer's matmuls run. The first time, the expert's slices are read with `pread`
(through the page cache the engine's mapping shares, so the read is not wasted: the mapping's
pages are then minor faults) and hashed with xxh3 against the manifest (`contract/checksums.py`).
Every time, its pages are mapped in with MADV_POPULATE_READ (`MadviseResidency.populate`). Both
turn what would be a SIGBUS in the engine (an I/O error, a file cut short) into an errno, and a
damaged slice into ModelCorruptError naming the file, the tensor, the expert and the bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from contract.checksums import RangeReadError, hash_range
from contract.manifest import LayerExperts
from runtime.errors import ModelCorruptError
from runtime.integrity.state import IntegrityState

# File bytes [start, end) -> 0 or the errno of the failed page-in.
Populate = Callable[[int, int], int]

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
    ) -> None:
        self.path = Path(path)
        self.state = state
        self._populate = populate
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
        """Verify `expert` if it has not been yet, then map its pages in; raises
        ModelCorruptError (the caller records it in the state)."""
        cpu = time.thread_time()
        try:
            if self._checks and not self._verified[layer][expert]:
                self.verify(layer, expert)
            if self._populate is None:
                return
            for name, offset, stride, _ in self._tensors[layer]:
                start = offset + expert * stride
                err = self._populate(start, start + stride)
                if err:
                    raise self._storage_error(name, layer, expert, start, start + stride,
                                              os.strerror(err) + " while paging in")
        finally:  # CPU spent here, storage waits excluded: what the checks cost the decoder
            self.state.bring_in_cpu_s += time.thread_time() - cpu

    def verify(self, layer: int, expert: int) -> None:
        """pread + xxh3 of each of the expert's slices against the manifest."""
        t0 = time.perf_counter()
        done = 0
        for name, offset, stride, digests in self._tensors[layer]:
            if digests is None:
                continue
            start, end = offset + expert * stride, offset + (expert + 1) * stride
            try:
                got = hash_range(self._fd, start, end, self._buf)
            except RangeReadError as e:
                raise self._storage_error(name, layer, expert, start, end, str(e)) from None
            except OSError as e:
                reason = os.strerror(e.errno) if e.errno else str(e)
                raise self._storage_error(name, layer, expert, start, end, reason) from None
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
