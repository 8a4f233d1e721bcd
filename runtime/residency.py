"""Real residency of expert bytes in the model file's mapping: madvise, fadvise, mlock, RSS probes.

llama.cpp maps the GGUF once, read-only and shared, so every expert byte is a file-backed page:
MADV_DONTNEED drops our mapping of it (a later touch faults it back from the page cache, or from
storage once POSIX_FADV_DONTNEED dropped it there too). Results never change, only speed and
memory. Linux first; elsewhere the calls that are missing become no-ops with one warning.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import mmap
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import EdgemoeError

log = logging.getLogger(__name__)

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else mmap.PAGESIZE
MADV_WILLNEED = getattr(mmap, "MADV_WILLNEED", None)
MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
RangesOf = Callable[[int, int], list[tuple[int, int]]]  # (layer, expert) -> [(start, end)]


class ResidencyError(EdgemoeError, OSError):
    """The model file's mapping cannot be found or acted on."""


# --- pure page arithmetic ------------------------------------------------------------------------
def inward(start: int, end: int, page: int = PAGE_SIZE) -> tuple[int, int] | None:
    """The whole pages inside [start, end): releasing them never touches a neighbour's bytes."""
    lo = -(-start // page) * page
    hi = end // page * page
    return (lo, hi) if lo < hi else None


def outward(start: int, end: int, page: int = PAGE_SIZE) -> tuple[int, int]:
    """The pages that hold any byte of [start, end)."""
    return start // page * page, -(-end // page) * page


# --- /proc/self/maps -----------------------------------------------------------------------------
@dataclass(frozen=True)
class MappedRegion:
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
            raise ResidencyError(f"/proc/self/maps unreadable ({e}); not Linux?") from None
    match = _matcher(path)
    regions = (parse_maps_line(line) for line in maps_text.splitlines())
    return [r for r in regions if r is not None and r.inode and match(r)]


def mapping_base(path: str | Path, maps_text: str | None = None) -> int:
    """The address of file offset 0 in the one mapping of `path`.

    llama.cpp maps the whole file once and may unmap the header pages afterwards, and mlock
    splits regions, so regions are grouped by start - offset; exactly one group must exist.
    """
    bases = sorted({r.base for r in file_regions(path, maps_text)})
    if not bases:
        raise ResidencyError(f"{path}: not mapped in this process (is the model loaded with mmap?)")
    if len(bases) > 1:
        raise ResidencyError(
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
        elif inside and head == "Rss:":
            total += int(line.split()[1]) * 1024
    return total


def drop_file_cache(path: str | Path) -> bool:
    """Ask the OS to drop `path` from its page cache (pages mapped anywhere stay).

    For cold starts and measurements: a freshly written file may sit in the page cache in large
    folios (seen on ext4, Linux 6.x) that a per-expert fadvise does not drop; after this, pages
    come back by faults and readahead. False where posix_fadvise does not exist.
    """
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


# --- libc --------------------------------------------------------------------------------------
_SIGNATURES = {  # name -> argument types after (address, length)
    "madvise": [ctypes.c_int],
    "mincore": [ctypes.c_void_p],
    "mlock": [],
    "munlock": [],
}


def _load_libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    for name, extra in _SIGNATURES.items():
        fn = getattr(libc, name, None)
        if fn is not None:
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, *extra]
    return libc


_LIBC = _load_libc()


def page_cache_residency(addr: int, length: int) -> list[bool]:
    """Per page of [addr, addr+length) in a file mapping: is it in the OS page cache (mincore)?"""
    if _LIBC is None or not hasattr(_LIBC, "mincore"):
        raise ResidencyError("mincore is not available on this platform")
    lo, hi = outward(addr, addr + length)
    n = (hi - lo) // PAGE_SIZE
    vec = (ctypes.c_ubyte * n)()
    if _LIBC.mincore(lo, hi - lo, ctypes.addressof(vec)) != 0:
        err = ctypes.get_errno()
        raise ResidencyError(f"mincore failed: {os.strerror(err)}")
    return [bool(v & 1) for v in vec]


def mapped_pages(addr: int, length: int) -> list[bool]:
    """Per page: is it mapped into this process right now (/proc/self/pagemap 'present' bit)?"""
    lo, hi = outward(addr, addr + length)
    n = (hi - lo) // PAGE_SIZE
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek(lo // PAGE_SIZE * 8)
            raw = f.read(8 * n)
    except OSError as e:
        raise ResidencyError(f"/proc/self/pagemap unreadable ({e})") from None
    words = [int.from_bytes(raw[i : i + 8], "little") for i in range(0, len(raw), 8)]
    return [bool(w >> 63 & 1) for w in words]


# --- the Residency implementation ---------------------------------------------------------------
@dataclass
class ResidencyStats:
    loads: int = 0
    releases: int = 0
    pins: int = 0
    bytes_released: int = 0  # whole pages handed back (summed over calls)
    bytes_kept_partial: int = 0  # edge bytes that share a page with a neighbour (summed)
    pin_fallbacks: int = 0  # pins that became WILLNEED because mlock was refused
    bytes_swept: int = 0  # neighbours' pages a fault mapped along with a loaded expert
    errors: int = 0


class MadviseResidency:
    """The expert cache's hands on a real mapping of the model file.

    release: MADV_DONTNEED over the whole pages inside each range (a page shared with a
    neighbouring expert or tensor stays, and is counted in stats.bytes_kept_partial); in cold
    mode also POSIX_FADV_DONTNEED, so the next miss reads storage. load: MADV_WILLNEED (readahead
    starts; the fault happens at the matmul). pin: mlock, or WILLNEED when RLIMIT_MEMLOCK says no.
    Failures are logged once per kind and counted, never raised (strict=True raises): a failed
    hint costs speed or memory, never correctness.
    """

    def __init__(
        self,
        path: str | Path,
        base_addr: int,
        ranges_of: RangesOf,
        *,
        cold: bool = False,
        strict: bool = False,
    ) -> None:
        self.path = Path(path)
        self.base = base_addr
        self.ranges_of = ranges_of
        self.cold = cold
        self.strict = strict
        self.stats = ResidencyStats()
        self._warned: set[str] = set()
        self._locked: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self._fd: int | None = None
        if base_addr % PAGE_SIZE:
            raise ResidencyError(f"{path}: mapping base {base_addr:#x} is not page aligned")
        if _LIBC is None or MADV_DONTNEED is None or not hasattr(_LIBC, "madvise"):
            self._warn("madvise", "madvise is unavailable here: experts will not be released")
        if cold:
            if hasattr(os, "posix_fadvise"):
                self._fd = os.open(self.path, os.O_RDONLY)
            else:
                self._warn("fadvise", "posix_fadvise is unavailable: cold mode keeps page cache")
        self._small_pages()

    def _small_pages(self) -> None:
        """Ask for page-sized mappings of the model file.

        With transparent huge pages on, one fault can map a whole 2 MiB folio of the file, i.e.
        several neighbouring experts the router never chose; they would sit in RSS outside the
        cache's books. MADV_NOHUGEPAGE stops PMD-sized mappings; large page-cache folios can
        still be mapped whole, which the pager sweeps up (runtime/expert_pager.py).
        """
        advice = getattr(mmap, "MADV_NOHUGEPAGE", None)
        regions = [r for r in file_regions(self.path) if r.base == self.base]
        ok = bool(regions) and all(
            self._madvise(r.start - self.base, r.end - self.base, advice, "nohugepage")
            for r in regions
        )
        if not ok:
            self._warn("nohugepage", "could not disable huge pages: faults may map neighbours")

    @classmethod
    def for_file(cls, path: str | Path, ranges_of: RangesOf, **kwargs: bool) -> MadviseResidency:
        """For the mapping of `path` that this process already has (llama.cpp's)."""
        return cls(path, mapping_base(path), ranges_of, **kwargs)

    # --- plumbing ----------------------------------------------------------------------------
    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("%s: %s", self.path, message)

    def _failed(self, what: str, err: int) -> None:
        self.stats.errors += 1
        message = f"{what} failed: {os.strerror(err)}"
        if self.strict:
            raise ResidencyError(f"{self.path}: {message}")
        self._warn(f"{what}:{err}", message)

    def _madvise(self, lo: int, hi: int, advice: int | None, what: str) -> bool:
        if _LIBC is None or advice is None or not hasattr(_LIBC, "madvise"):
            return False
        if _LIBC.madvise(self.base + lo, hi - lo, advice) != 0:
            self._failed(what, ctypes.get_errno())
            return False
        return True

    # --- the Residency protocol --------------------------------------------------------------
    def load(self, layer: int, expert: int) -> None:
        self.stats.loads += 1
        for start, end in self.ranges_of(layer, expert):
            self._madvise(*outward(start, end), MADV_WILLNEED, "madvise(WILLNEED)")

    def release(self, layer: int, expert: int) -> None:
        self.stats.releases += 1
        self._unlock((layer, expert))
        for start, end in self.ranges_of(layer, expert):
            pages = inward(start, end)
            whole = pages[1] - pages[0] if pages else 0
            self.stats.bytes_kept_partial += (end - start) - whole
            if pages is None:
                continue
            if self._madvise(*pages, MADV_DONTNEED, "madvise(DONTNEED)"):
                self.stats.bytes_released += whole
            if self._fd is not None:
                # After DONTNEED: the kernel keeps page-cache pages that are still mapped.
                try:
                    os.posix_fadvise(self._fd, pages[0], whole, os.POSIX_FADV_DONTNEED)
                except OSError as e:
                    self._failed("posix_fadvise(DONTNEED)", e.errno or errno.EIO)

    def release_spans(self, spans: list[tuple[int, int]]) -> None:
        """Give back file byte ranges that no cached expert owns (pages a fault mapped beyond
        the expert it was for: the kernel maps whole page-cache folios)."""
        for start, end in spans:
            pages = inward(start, end)
            if pages is None:
                continue
            if self._madvise(*pages, MADV_DONTNEED, "madvise(DONTNEED)"):
                self.stats.bytes_swept += pages[1] - pages[0]
            if self._fd is not None:
                try:
                    os.posix_fadvise(self._fd, pages[0], pages[1] - pages[0],
                                     os.POSIX_FADV_DONTNEED)
                except OSError as e:
                    self._failed("posix_fadvise(DONTNEED)", e.errno or errno.EIO)

    def pin(self, layer: int, expert: int) -> None:
        self.stats.pins += 1
        key = (layer, expert)
        if key in self._locked:
            return
        spans = [outward(s, e) for s, e in self.ranges_of(layer, expert)]
        locked: list[tuple[int, int]] = []
        for lo, hi in spans:
            if _LIBC is not None and hasattr(_LIBC, "mlock") and _LIBC.mlock(
                self.base + lo, hi - lo
            ) == 0:
                locked.append((lo, hi))
                continue
            err = ctypes.get_errno() if _LIBC is not None else errno.ENOSYS
            self.stats.pin_fallbacks += 1
            self._warn(f"mlock:{err}", f"mlock refused ({os.strerror(err)}); pinning by "
                       "WILLNEED instead (raise RLIMIT_MEMLOCK to lock hot experts)")
            self._madvise(lo, hi, MADV_WILLNEED, "madvise(WILLNEED)")
        self._locked[key] = locked

    # --- beyond the protocol -----------------------------------------------------------------
    def _unlock(self, key: tuple[int, int]) -> None:
        for lo, hi in self._locked.pop(key, []):
            if _LIBC is not None and _LIBC.munlock(self.base + lo, hi - lo) != 0:
                self._failed("munlock", ctypes.get_errno())

    def unpin(self, layer: int, expert: int) -> None:
        """Let a pinned expert's pages be reclaimed again (they stay resident until released)."""
        self._unlock((layer, expert))

    def kept_partial_bytes(self, layer: int, expert: int) -> int:
        """Bytes of this expert that release() cannot give back (pages shared at its edges)."""
        kept = 0
        for start, end in self.ranges_of(layer, expert):
            pages = inward(start, end)
            kept += (end - start) - (pages[1] - pages[0] if pages else 0)
        return kept

    def close(self) -> None:
        """Unlock what was pinned and close the file; the mapping itself is llama.cpp's."""
        for key in list(self._locked):
            self._unlock(key)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> MadviseResidency:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
