"""Acting on the expert bytes in the model file's mapping: madvise, fadvise, mlock, mincore.

llama.cpp maps the GGUF once, read-only and shared, so every expert byte is a file-backed page:
MADV_DONTNEED drops our mapping of it (a later touch faults it back from the page cache, or from
storage once POSIX_FADV_DONTNEED dropped it there too). Results never change, only speed and
memory. Linux first; elsewhere the calls that are missing become no-ops with one warning.
What /proc reports (maps, smaps, RSS, pagemap) lives in runtime/procfs.py.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runtime.backends.libc import LIBC
from runtime.backends.mapping import FileMapping
from runtime.errors import EdgemoeError
from runtime.procfs import PAGE_SIZE, file_regions

log = logging.getLogger(__name__)

MADV_WILLNEED = getattr(mmap, "MADV_WILLNEED", None)
MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", None)
# Linux >= 5.14: fault pages in now and report a failed read as an error (EFAULT, EHWPOISON),
# where touching them would raise SIGBUS. Python's mmap module names it from 3.13 on.
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if os.uname().sysname == "Linux"
                             else None)
RangesOf = Callable[[int, int], list[tuple[int, int]]]  # (layer, expert) -> [(start, end)]


class ResidencyError(EdgemoeError, OSError):
    """The model file's mapping cannot be acted on (strict mode, or mincore missing)."""


# --- pure page arithmetic ------------------------------------------------------------------------
def inward(start: int, end: int, page: int = PAGE_SIZE) -> tuple[int, int] | None:
    """The whole pages inside [start, end): releasing them never touches a neighbour's bytes."""
    lo = -(-start // page) * page
    hi = end // page * page
    return (lo, hi) if lo < hi else None


def outward(start: int, end: int, page: int = PAGE_SIZE) -> tuple[int, int]:
    """The pages that hold any byte of [start, end)."""
    return start // page * page, -(-end // page) * page


# --- page cache ---------------------------------------------------------------------------------
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


_LIBC = LIBC  # typed once for the runtime (runtime/backends/libc.py)


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


# --- the Residency implementation ---------------------------------------------------------------
@dataclass
class ResidencyStats:
    """What the hands did to memory, summed over calls: for tests and diagnosis, not books."""

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
        base_addr: int | FileMapping,
        ranges_of: RangesOf,
        *,
        cold: bool = False,
        strict: bool = False,
    ) -> None:
        self.path = Path(path)
        if isinstance(base_addr, FileMapping):
            self.mapping = base_addr
        else:
            if base_addr % PAGE_SIZE:
                raise ResidencyError(f"{path}: mapping base {base_addr:#x} is not page aligned")
            self.mapping = FileMapping.whole(base_addr, self.path.stat().st_size)
        self.ranges_of = ranges_of
        self.cold = cold
        self.strict = strict
        self.stats = ResidencyStats()
        self._warned: set[str] = set()
        self._locked: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self._fd: int | None = None
        self._no_populate = False
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
        still be mapped whole, which the pager sweeps up (runtime/experts/pager.py).
        """
        advice = getattr(mmap, "MADV_NOHUGEPAGE", None)
        ours = {addr - lo for lo, _, addr in self.mapping.regions}
        regions = [r for r in file_regions(self.path) if r.base in ours]
        ok = bool(regions) and all(
            self._madvise(r.offset, r.offset + (r.end - r.start), advice, "nohugepage")
            for r in regions
        )
        if not ok:
            self._warn("nohugepage", "could not disable huge pages: faults may map neighbours")

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

    def _span(self, lo: int, hi: int, what: str) -> list[tuple[int, int]] | None:
        span = self.mapping.pieces(lo, hi)
        if span is None:
            self.stats.errors += 1
            message = f"{what}: file bytes [{lo}, {hi}) are outside the engine's mapping"
            if self.strict:
                raise ResidencyError(f"{self.path}: {message}")
            self._warn(f"range:{what}", message + " (skipped)")
        return span

    def _madvise(self, lo: int, hi: int, advice: int | None, what: str) -> bool:
        if _LIBC is None or advice is None or not hasattr(_LIBC, "madvise"):
            return False
        pieces = self._span(lo, hi, what)
        if pieces is None:
            return False
        for addr, length in pieces:
            if _LIBC.madvise(addr, length, advice) != 0:
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

    def forget(self, layer: int, expert: int) -> None:
        """Cold mode: drop a released expert from the page cache again (a prefetch read it and
        it went unused; the budget released it, so RAM must not keep it). No-op when warm."""
        if self._fd is None:
            return
        for start, end in self.ranges_of(layer, expert):
            pages = inward(start, end)
            if pages is None:
                continue
            try:
                os.posix_fadvise(self._fd, pages[0], pages[1] - pages[0], os.POSIX_FADV_DONTNEED)
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
            pieces = self._span(lo, hi, "mlock") or []
            if pieces and _LIBC is not None and hasattr(_LIBC, "mlock") and all(
                _LIBC.mlock(addr, length) == 0 for addr, length in pieces
            ):
                locked.extend(pieces)
                continue
            if not pieces:
                continue
            err = ctypes.get_errno() if _LIBC is not None else errno.ENOSYS
            self.stats.pin_fallbacks += 1
            self._warn(f"mlock:{err}", f"mlock refused ({os.strerror(err)}); pinning by "
                       "WILLNEED instead (raise RLIMIT_MEMLOCK to lock hot experts)")
            self._madvise(lo, hi, MADV_WILLNEED, "madvise(WILLNEED)")
        self._locked[key] = locked

    # --- beyond the protocol -----------------------------------------------------------------
    def unpin(self, layer: int, expert: int) -> None:
        """No longer pinned (a smaller budget): unlocked, still mapped; the cache may evict it."""
        self._unlock((layer, expert))

    def populate(self, start: int, end: int) -> int:
        """Bring the pages of file bytes [start, end) into the mapping now, so that a storage
        fault (an I/O error, a file truncated under us) is an errno here rather than SIGBUS when
        the engine touches them. Returns 0, or the errno (EFAULT: the pages could not be read).
        Where the kernel lacks MADV_POPULATE_READ (< 5.14) it warns once and returns 0: the
        engine's own faults bring the pages in, as before."""
        if MADV_POPULATE_READ is None or _LIBC is None or self._no_populate:
            return 0
        pieces = self._span(*outward(start, end), "populate") or []
        for addr, length in pieces:
            while _LIBC.madvise(addr, length, MADV_POPULATE_READ) != 0:
                err = ctypes.get_errno()
                if err in (errno.EINTR, errno.EAGAIN):
                    continue
                if err == errno.EINVAL:
                    self._no_populate = True
                    self._warn("populate", "MADV_POPULATE_READ is unsupported (Linux < 5.14): a "
                               "storage fault while paging in will raise SIGBUS")
                    return 0
                return err
        return 0

    def view(self, start: int, end: int) -> list[memoryview] | None:
        """The engine's mapped memory holding file bytes [start, end), read-only, without a
        copy (for hashing pages just populated); None when any byte is not mapped, or when
        pages cannot be populated here (the caller reads with pread instead)."""
        if self._no_populate or MADV_POPULATE_READ is None:
            return None  # nothing was populated: reading the mapping could raise SIGBUS
        pieces = self.mapping.pieces(start, end)
        if pieces is None:
            return None
        return [memoryview((ctypes.c_char * length).from_address(addr)).cast("B")
                for addr, length in pieces]

    def _unlock(self, key: tuple[int, int]) -> None:
        for addr, length in self._locked.pop(key, []):
            if _LIBC is not None and _LIBC.munlock(addr, length) != 0:
                self._failed("munlock", ctypes.get_errno())

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
