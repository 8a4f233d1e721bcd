"""Where an engine mapped the file that holds the experts: the seam's residency hook.

A Backend reports it (`Backend.file_mapping()`); the expert cache's hands (runtime/experts/
residency.py) and the prefetcher turn file offsets into addresses through it, and nothing else.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from pathlib import Path

from contract.manifest import LayerExperts
from runtime.procfs import PAGE_SIZE


@dataclass(frozen=True)
class ExpertFile:
    """The file an engine reads experts from when it is not the bundle's own (onnxruntime's
    packed copy, runtime/backends/onnx/packed.py): its path, each MoE layer's expert byte
    ranges in it, and the xxh3-64 digest of every expert's slice, for the first-read check."""

    path: Path
    layers: tuple[LayerExperts, ...]
    digests: dict[str, tuple[str, ...]] | None


@dataclass(frozen=True)
class FileMapping:
    """Where an engine mapped a file: (file offset lo, file offset hi, address of lo) regions.

    llama.cpp maps the whole GGUF once (one region); onnxruntime maps each external-data
    initializer on its own (one region per tensor). Every address handed to madvise/mlock is
    computed here and must fall inside a region: the last check before the kernel is asked to
    act on memory, so a bad number from anywhere can never reach it.
    """

    regions: tuple[tuple[int, int, int], ...]
    # Sorted once, with the starts apart for bisecting: onnxruntime's mapping is hundreds of
    # regions, looked up for every expert a prompt admits. _reach: the furthest end among the
    # regions up to each one (regions may overlap).
    _sorted: tuple[tuple[int, int, int], ...] = field(init=False, repr=False, compare=False)
    _starts: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _reach: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.regions))
        reach, top = [], 0
        for r in ordered:
            top = max(top, r[1])
            reach.append(top)
        object.__setattr__(self, "_sorted", ordered)  # frozen: set once, here
        object.__setattr__(self, "_starts", tuple(r[0] for r in ordered))
        object.__setattr__(self, "_reach", tuple(reach))

    @classmethod
    def whole(cls, base: int, size: int) -> FileMapping:
        """One mapping of the whole file (its last page rounded up, as mmap maps it)."""
        return cls(((0, -(-size // PAGE_SIZE) * PAGE_SIZE, base),))

    def pieces(self, lo: int, hi: int) -> list[tuple[int, int]] | None:
        """(address, length) pieces covering file bytes [lo, hi) (a range may run over two
        adjacent mappings), or None if any byte of it is not mapped."""
        out: list[tuple[int, int]] = []
        at = lo
        first = max(0, bisect_right(self._starts, lo) - 1)
        while first > 0 and self._reach[first - 1] > lo:
            first -= 1
        for r_lo, r_hi, addr in self._sorted[first:]:
            if r_hi <= at or r_lo >= hi:
                if r_lo >= hi:
                    break
                continue
            if r_lo > at:
                return None
            end = min(hi, r_hi)
            out.append((addr + (at - r_lo), end - at))
            at = end
            if at >= hi:
                break
        return out if at >= hi and lo < hi else None
