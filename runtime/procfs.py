"""What /proc says about this process: its mappings of a file, their resident bytes, its RSS.

Read-only probes, kept apart from runtime/experts/residency.py (which acts on memory) because they
serve two masters: residency needs `mapping_base` to find llama.cpp's mapping of the model file, and
`Model.stats()`, tests and benches need the measurements (smaps Rss, VmRSS/VmHWM, pagemap) to
check the cache's books from outside. Linux first; elsewhere the measurements fall back to psutil
or `resource`, or return None, and the mapping lookups raise ProcfsError.
"""

from __future__ import annotations

import mmap
import os
import sys
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import EdgemoeError

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else mmap.PAGESIZE


class ProcfsError(EdgemoeError, OSError):
    """/proc cannot be read, or does not show exactly one mapping of the model file."""


# --- /proc/self/maps -----------------------------------------------------------------------------
@dataclass(frozen=True)
class MappedRegion:
    """One line of /proc/self/maps."""

    start: int
    end: int
    perms: str
    offset: int  # file offset mapped at `start`
    dev: tuple[int, int]
    inode: int
    path: str

    @property
    def base(self) -> int:
        """Address where file offset 0 is (or was, before llama.cpp unmapped the header)."""
        return self.start - self.offset


def parse_maps_line(line: str) -> MappedRegion | None:
    """A maps (or smaps header) line -> its region; None for lines that are not one."""
    parts = line.split(maxsplit=5)
    if len(parts) < 5:
        return None
    lo, _, hi = parts[0].partition("-")
    major, _, minor = parts[3].partition(":")
    return MappedRegion(int(lo, 16), int(hi, 16), parts[1], int(parts[2], 16),
                        (int(major, 16), int(minor, 16)), int(parts[4]),
                        parts[5].strip() if len(parts) > 5 else "")


def _matcher(path: str | Path) -> Callable[[MappedRegion], bool]:
    st = os.stat(path)
    real = os.path.realpath(path)
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    # Path as well as inode: on overlay filesystems maps shows the lower layer's device.
    return lambda r: (r.inode == st.st_ino and r.dev == dev) or r.path == real


def file_regions(path: str | Path, maps_text: str | None = None) -> list[MappedRegion]:
    """This process's mappings of `path` (one file may show as several regions)."""
    if maps_text is None:
        try:
            maps_text = Path("/proc/self/maps").read_text()
        except OSError as e:
            raise ProcfsError(f"/proc/self/maps unreadable ({e}); not Linux?") from None
    match = _matcher(path)
    regions = (parse_maps_line(line) for line in maps_text.splitlines())
    return [r for r in regions if r is not None and r.inode and match(r)]


class MappedSpans:
    """The address spans of this process's file mappings at one moment, per file, to tell
    later which regions of a file were mapped since (`covers`: does a region overlap a span of
    the same file that was there).

    Per file: a mapping of another file, gone since, may have left its addresses to this
    file's new regions."""

    def __init__(self, maps_text: str | None = None) -> None:
        if maps_text is None:
            try:
                maps_text = Path("/proc/self/maps").read_text()
            except OSError:
                maps_text = ""  # not Linux: nothing is known, nothing excluded
        by_file: dict[tuple[tuple[int, int], int], list[tuple[int, int]]] = {}
        self.paths: set[str] = set()  # the files mapped
        for line in maps_text.splitlines():
            r = parse_maps_line(line)
            if r is not None and r.inode:
                by_file.setdefault((r.dev, r.inode), []).append((r.start, r.end))
                self.paths.add(r.path)
        self._spans: dict[tuple[tuple[int, int], int], tuple[list[int], list[int]]] = {}
        for key, spans in by_file.items():
            spans.sort()
            self._spans[key] = ([a for a, _ in spans], [b for _, b in spans])

    def any_under(self, *folders: Path) -> bool:
        """Is any file inside one of `folders` mapped?"""
        roots = tuple(os.path.join(os.path.realpath(f), "") for f in folders)
        return any(p.startswith(roots) for p in self.paths)

    def covers(self, region: MappedRegion) -> bool:
        starts, ends = self._spans.get((region.dev, region.inode), ((), ()))
        # Mappings never overlap one another: the one starting last before region.end is the
        # only one that can reach into it.
        i = bisect_left(starts, region.end) - 1
        return i >= 0 and ends[i] > region.start


def mapping_base(path: str | Path, maps_text: str | None = None) -> int:
    """The address of file offset 0 in the one mapping of `path`.

    llama.cpp maps the whole file once and may unmap the header pages afterwards, and mlock
    splits regions, so regions are grouped by start - offset; exactly one group must exist.
    """
    bases = sorted({r.base for r in file_regions(path, maps_text)})
    if not bases:
        raise ProcfsError(f"{path}: not mapped in this process (is the model loaded with mmap?)")
    if len(bases) > 1:
        raise ProcfsError(
            f"{path}: mapped {len(bases)} times (bases {[hex(b) for b in bases]}); cannot tell "
            "which mapping llama.cpp uses"
        )
    return bases[0]


# --- measurements --------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def process_rss() -> int:
    """Resident set of this process in bytes."""
    rss = _status_kib("VmRSS")
    if rss is None:
        import psutil

        rss = int(psutil.Process().memory_info().rss)
    return rss


def peak_rss() -> int:
    """High-water mark of the resident set since start or the last peak_rss_reset()."""
    peak = _status_kib("VmHWM")
    if peak is None:
        import resource

        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = maxrss if sys.platform == "darwin" else maxrss * 1024
    return peak


def peak_rss_reset() -> bool:
    """Reset the high-water mark to the current RSS (Linux); False where it cannot be reset."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def mapping_rss(path: str | Path) -> int | None:
    """Bytes of `path`'s mappings resident in this process (smaps Rss); None where unknown."""
    return _mapping_field(path, "Rss:")


def mapping_huge_bytes(path: str | Path) -> int | None:
    """Bytes of `path`'s mappings mapped by 2 MiB page-table entries (smaps FilePmdMapped): at a
    full budget, how much of the model the engine reads through huge pages
    (runtime/backends/huge_pages.py). None where unknown."""
    return _mapping_field(path, "FilePmdMapped:")


def _mapping_field(path: str | Path, field: str) -> int | None:
    """An smaps field (kB) summed over `path`'s mappings, in bytes."""
    try:
        text = Path("/proc/self/smaps").read_text()
    except OSError:
        return None
    match = _matcher(path)
    total, inside = 0, False
    for line in text.splitlines():
        head = line.split(maxsplit=1)[0] if line else ""
        if "-" in head and not head.endswith(":"):
            region = parse_maps_line(line)
            inside = region is not None and region.inode != 0 and match(region)
        elif inside and head == field:
            total += int(line.split()[1]) * 1024
    return total


def mapped_pages(addr: int, length: int) -> list[bool]:
    """Per page of [addr, addr+length): is it mapped into this process right now (/proc/self/
    pagemap 'present' bit)? Pages are whole: the first and last may hold bytes outside."""
    first, end = addr // PAGE_SIZE, -(-(addr + length) // PAGE_SIZE)
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(first * 8)
            raw = f.read(8 * (end - first))
    except OSError as e:
        raise ProcfsError(f"/proc/self/pagemap unreadable ({e})") from None
    words = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
    return [bool(w >> 63 & 1) for w in words]
