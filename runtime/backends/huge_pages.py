"""A full budget's model file read into the page cache in 2 MiB folios, before the engine maps it.

At a full budget the engine reads the whole file at load and every token streams the weights
through the CPU, so address translation is part of decode: with 4 KiB pages each 2 MiB of
weights costs 512 TLB entries, with a 2 MiB page one. Linux (6.x, ext4 and other filesystems with
large folios) maps a file page by page table *or* by one 2 MiB entry, depending on the size of
the page-cache folio that holds it, and that size is decided when the bytes are first read: a
fault under MADV_RANDOM reads 4 KiB, mmap's read-around a few dozen KiB, a mapping advised
MADV_HUGEPAGE whole 2 MiB folios. Measured on the large fixture (Q8_0, 436 MB, 2 threads, one
process stepping both engines in turn): decode from a file cached in small folios 0.87-0.93x of
stock llama.cpp holding the model in anonymous memory; cached in 2 MiB folios 0.94-1.15x.

So a full-budget load first maps the file itself, advises MADV_HUGEPAGE and faults it all in with
MADV_POPULATE_READ (a storage fault is an error there, never a signal), then lets go; the
engine's own mapping then finds 2 MiB folios and maps them whole. A load that finds less than a
quarter of the file cached drops those few pages first (opening the bundle read them, in small
folios); a warm file is left as it is (another process may be using it), so one read earlier in
small folios stays small until the OS lets it go. `huge_mapped_bytes` in `Model.stats()` says
what the engine got. Paged budgets never do this: there a 2 MiB fault would map experts the
router never chose (runtime/experts/residency.py asks for small pages instead).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import time
from pathlib import Path

from runtime.backends.libc import LIBC, MAP_FAILED, page_cache_bits

log = logging.getLogger(__name__)

MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", 14 if os.uname().sysname == "Linux" else None)
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if os.uname().sysname == "Linux"
                             else None)


# Below this share of the file in the page cache a load counts as cold: what is cached is what
# opening the bundle read (its header, the sampled blocks checked at open), in small folios
# that would keep each 2 MiB range they sit in out of a huge folio. Those are dropped first
# (re-reading them costs a few MB); a warm file is left as it is.
COLD_SHARE = 0.25


def cached_share(addr: int, size: int) -> float | None:
    """The share of the pages of a file mapping [addr, addr+size) in the page cache (mincore)."""
    bits = page_cache_bits(addr, size)
    return None if bits is None else float(bits.mean())


def read_in_huge_folios(path: str | Path) -> float | None:
    """Fault all of `path` into the page cache through a MADV_HUGEPAGE mapping (see the module
    docstring). Returns the seconds it took, or None where it was not done (not Linux, no
    MADV_POPULATE_READ, an unreadable file, a storage fault): the engine's load then reads the
    file as before and meets any fault itself."""
    if LIBC is None or not hasattr(LIBC, "mmap") or MADV_HUGEPAGE is None \
            or MADV_POPULATE_READ is None:
        return None
    t0 = time.perf_counter()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None
        addr = LIBC.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == MAP_FAILED:
            return None
        try:
            share = cached_share(addr, size)
            if share is not None and share < COLD_SHARE and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            for advice in (MADV_HUGEPAGE, MADV_POPULATE_READ):
                if LIBC.madvise(addr, size, advice) != 0:
                    err = ctypes.get_errno()
                    (log.debug if err == errno.EINVAL else log.warning)(
                        "%s: madvise(%d) failed (%s); the engine reads it as before", path,
                        advice, os.strerror(err))
                    return None
        finally:
            LIBC.munmap(addr, size)
    finally:
        os.close(fd)
    return time.perf_counter() - t0
