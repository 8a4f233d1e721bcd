"""Cold start that reads only what it keeps: load a GGUF without llama.cpp reading all of it.

Stock llama.cpp maps the model with MAP_POPULATE and `posix_madvise(WILLNEED)` over the whole
file (`llama_mmap` in src/llama-mmap.cpp, asked for by `init_mappings(prefetch=true)`), and
marks the file POSIX_FADV_SEQUENTIAL. At a partial budget that reads every expert from storage
at each launch, evicting other apps' cache, only for the pager to give most of it back.

While llama.cpp constructs the model, and only then, this module points libllama's own import
slots (its GOT entries for `mmap`, `posix_madvise`, `posix_fadvise`) at small functions that
drop MAP_POPULATE, skip WILLNEED and ask for random access instead of sequential readahead, then
puts the real functions back. Nothing is patched in libc or in any other library, the file is
mapped exactly as before, and every page still faults in on demand, so results cannot change;
only what is read, and when, changes.

Chosen over patching llama.cpp at install (it works with the stock wheel and any user's build)
and over LD_PRELOAD (needs a new process). It is ELF-specific (Linux, 64-bit); anywhere it
cannot find or rewrite the slots it does nothing and says why (`LazyLoad.active`), and the
model loads the stock way: correct, just a full read.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap as _mmap
import os
import struct
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.backends.base import LazyLoad
from runtime.backends.libc import LIBC, page_cache_bits

MAP_POPULATE = getattr(_mmap, "MAP_POPULATE", 0x8000)
POSIX_MADV_WILLNEED = 3
POSIX_FADV_RANDOM, POSIX_FADV_SEQUENTIAL = 1, 2

_R_JUMP_SLOT = {62: 7, 183: 1026}  # x86_64, aarch64
_R_GLOB_DAT = {62: 6, 183: 1025}
_HOOKED = ("mmap", "mmap64", "posix_madvise", "posix_fadvise", "posix_fadvise64")


def _got_slots(lib_path: Path) -> dict[str, list[int]]:
    """Symbol name -> offsets (from the load base) of its GOT slots, from the ELF relocations."""
    data = lib_path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise OSError("not a 64-bit little-endian ELF file")
    machine = struct.unpack_from("<H", data, 18)[0]
    if machine not in _R_JUMP_SLOT:
        raise OSError(f"ELF machine {machine} not supported")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)
    ]
    slots: dict[str, list[int]] = {}
    for sh in sections:
        sh_type, sh_offset, sh_size, sh_link, sh_entsize = sh[1], sh[4], sh[5], sh[6], sh[9]
        if sh_type != 4 or not sh_entsize:  # SHT_RELA
            continue
        symtab = sections[sh_link]
        strtab = sections[symtab[6]]
        for i in range(sh_size // sh_entsize):
            r_offset, r_info, _ = struct.unpack_from("<QQq", data, sh_offset + i * sh_entsize)
            r_type, r_sym = r_info & 0xFFFFFFFF, r_info >> 32
            if r_type not in (_R_JUMP_SLOT[machine], _R_GLOB_DAT[machine]) or not r_sym:
                continue
            st_name, = struct.unpack_from("<I", data, symtab[4] + r_sym * symtab[9])
            start = strtab[4] + st_name
            name = data[start : data.index(b"\x00", start)].decode("ascii", "replace")
            if name in _HOOKED:
                slots.setdefault(name, []).append(r_offset)
    return slots


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


_MMAP = ctypes.CFUNCTYPE(
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
    ctypes.c_long,
)
_ADVISE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_FADVISE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_int)


class _Hooks:
    """The replacement functions; kept alive while installed (ctypes callbacks must not die)."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        real_mmap = _MMAP(("mmap", libc))
        real_madvise = _ADVISE(("posix_madvise", libc))
        real_fadvise = _FADVISE(("posix_fadvise", libc))
        self.populate_dropped = 0
        self.willneed_skipped = 0

        def mmap_hook(addr, length, prot, flags, fd, offset):  # type: ignore[no-untyped-def]
            if flags & MAP_POPULATE:
                self.populate_dropped += 1
            return real_mmap(addr, length, prot, flags & ~MAP_POPULATE, fd, offset)

        def madvise_hook(addr, length, advice):  # type: ignore[no-untyped-def]
            if advice == POSIX_MADV_WILLNEED:
                self.willneed_skipped += 1
                return 0
            return real_madvise(addr, length, advice)

        def fadvise_hook(fd, offset, length, advice):  # type: ignore[no-untyped-def]
            if advice == POSIX_FADV_SEQUENTIAL:  # experts are read at random, never in order
                advice = POSIX_FADV_RANDOM
            return real_fadvise(fd, offset, length, advice)

        self.functions = {
            "mmap": _MMAP(mmap_hook),
            "mmap64": _MMAP(mmap_hook),
            "posix_madvise": _ADVISE(madvise_hook),
            "posix_fadvise": _FADVISE(fadvise_hook),
            "posix_fadvise64": _FADVISE(fadvise_hook),
        }


def _library_base(lib: ctypes.CDLL, symbol: str) -> int:
    libdl = ctypes.CDLL(ctypes.util.find_library("dl") or None)
    info = _DlInfo()
    if not libdl.dladdr(ctypes.cast(getattr(lib, symbol), ctypes.c_void_p), ctypes.byref(info)):
        raise OSError("dladdr failed")
    return int(info.dli_fbase)


def _write_slots(addresses: list[tuple[int, int]]) -> None:
    """Write pointer values at GOT addresses, making their pages writable first (RELRO)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = os.sysconf("SC_PAGE_SIZE")
    for addr, value in addresses:
        start = addr & ~(page - 1)
        if libc.mprotect(start, page * 2, 0x1 | 0x2) != 0:  # PROT_READ | PROT_WRITE
            raise OSError(ctypes.get_errno(), "mprotect failed on the GOT")
        ctypes.c_void_p.from_address(addr).value = value


@contextmanager
def lazy_mapping(lib: ctypes.CDLL, lib_path: Path, anchor: str) -> Iterator[LazyLoad]:
    """Within the block, libllama maps files without populating or prefetching them."""
    if not sys.platform.startswith("linux") or struct.calcsize("P") != 8:
        yield LazyLoad(False, "only on 64-bit Linux")
        return
    try:
        offsets = _got_slots(lib_path)
        base = _library_base(lib, anchor)
        hooks = _Hooks(ctypes.CDLL(None))
        saved: list[tuple[int, int]] = []
        new: list[tuple[int, int]] = []
        for name, offs in offsets.items():
            target = ctypes.cast(hooks.functions[name], ctypes.c_void_p).value
            for off in offs:
                addr = base + off
                saved.append((addr, ctypes.c_void_p.from_address(addr).value or 0))
                new.append((addr, int(target or 0)))
        if not any(n in offsets for n in ("mmap", "mmap64")):
            raise OSError("libllama imports no mmap")
        _write_slots(new)
    except (OSError, ValueError, AttributeError, struct.error) as e:
        yield LazyLoad(False, f"import slots not rewritable here ({e})")
        return
    try:
        yield LazyLoad(True, slots=tuple(sorted(offsets)))
    finally:
        _write_slots(saved)
        del hooks


def advise_random_except(base: int, size: int, keep: list[tuple[int, int]]) -> bool:
    """After a lazy load: no readahead on the mapping (MADV_RANDOM, else a fault on one expert
    reads its neighbours, and at worst the whole file), then read `keep` (the dense weights,
    file offsets [lo, hi)): every range is asked for at once (WILLNEED, so storage serves them
    together) and then waited for (MADV_POPULATE_READ, Linux >= 5.14), so the first prompt finds
    them in memory instead of faulting them in one page at a time. False where madvise is
    unavailable (nothing changes then)."""
    libc = LIBC
    if libc is None or not hasattr(libc, "madvise"):
        return False
    page = os.sysconf("SC_PAGE_SIZE")
    length = (size + page - 1) // page * page
    # llama.cpp unmaps what it does not use (the header): ENOMEM then only says the range had
    # holes; the advice holds for every page that is mapped.
    if libc.madvise(base, length, getattr(_mmap, "MADV_RANDOM", 1)) != 0 \
            and ctypes.get_errno() != errno.ENOMEM:
        return False
    willneed = getattr(_mmap, "MADV_WILLNEED", 3)
    spans = [(lo // page * page, min(length, (hi + page - 1) // page * page)) for lo, hi in keep]
    spans = [(lo, hi) for lo, hi in spans if hi > lo]
    for lo, hi in spans:
        libc.madvise(base + lo, hi - lo, willneed)
    populate = getattr(_mmap, "MADV_POPULATE_READ", 22 if sys.platform == "linux" else None)
    for lo, hi in spans if populate is not None else ():
        if libc.madvise(base + lo, hi - lo, populate) != 0 and ctypes.get_errno() == errno.EINVAL:
            break  # Linux < 5.14: the engine's own faults bring them in
    return True


def pending_bytes(base: int, spans: list[tuple[int, int]]) -> int:
    """Bytes of file ranges [lo, hi) of a mapping at `base` whose pages are not in memory
    (mincore): what a step would still fault in from storage."""
    page = os.sysconf("SC_PAGE_SIZE")
    missing = 0
    for lo, hi in spans:
        lo, hi = lo // page * page, (hi + page - 1) // page * page
        bits = page_cache_bits(base + lo, hi - lo)
        if bits is not None:
            missing += int((~bits).sum()) * page
    return missing


def complement(spans: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """[0, size) minus the given [lo, hi) spans: what is not an expert is dense."""
    out, at = [], 0
    for lo, hi in sorted(spans):
        if lo > at:
            out.append((at, lo))
        at = max(at, hi)
    if at < size:
        out.append((at, size))
    return out
