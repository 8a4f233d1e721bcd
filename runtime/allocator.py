"""The C allocator's thresholds, fixed for a process that runs within a memory budget.

glibc's malloc serves a block of 128 KiB or more with a mapping of its own, handed back to the
system when the block is freed. But each such block freed raises that threshold to the block's
size (up to 32 MiB), and the trim threshold with it: from then on blocks of that size come from
the heap, whose freed space stays resident until the top of the heap is free. A paged load
frees many such blocks (read checks, routers, a prompt batch's state handed to the pager), so
the C heap of a 25 % qwen3moe-large int4 process on ONNX held 24 MiB after one load and 32
after the next. With both thresholds fixed at 1 MiB (`mallopt`; blocks under 1 MiB, every
decode step's, are served as before) its peak RSS (bench/bench_onnx.py --parts rss) fell from
180 to 174 MiB with a 19-token prompt and from 203 to 199 MiB with a 680-token one; at 100 %
it is unchanged (344 / 372), as is llama.cpp's. README, "Then: the C heap".

It is the process's setting, so it is made once, at the first load, and only where nobody
chose: `EDGEMOE_MALLOC=dynamic`, or glibc's own variables (`MALLOC_MMAP_THRESHOLD_`,
`MALLOC_TRIM_THRESHOLD_`, their `GLIBC_TUNABLES` names), leave glibc's behaviour as it is.
Another C library (musl, bionic) is left as it is too.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

ENV = "EDGEMOE_MALLOC"
THRESHOLD = 1 << 20  # bytes: blocks this large or larger get mappings of their own
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_USER_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")

_in_effect: str | None = None


def fix_malloc_thresholds(threshold: int = THRESHOLD) -> str:
    """Fix glibc's mmap and trim thresholds at `threshold` bytes, once per process, unless the
    user chose (module docstring). Returns what is in effect, in words."""
    global _in_effect
    if _in_effect is None:
        _in_effect = _fix(threshold)
        log.debug("C allocator thresholds: %s", _in_effect)
    return _in_effect


def _fix(threshold: int) -> str:
    if os.environ.get(ENV, "").strip().lower() == "dynamic":
        return f"glibc's own ({ENV}=dynamic)"
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(v in os.environ for v in _USER_VARIABLES) or any(t in tunables for t in _USER_TUNABLES):
        return "as the environment sets them"
    libc = _glibc()
    if libc is None:
        return "not glibc: left as they are"
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_THRESHOLD, threshold) != 1 or mallopt(_M_TRIM_THRESHOLD, threshold) != 1:
        return "glibc refused them: left as they are"
    return f"fixed at {threshold >> 10} KiB"


def _glibc() -> ctypes.CDLL | None:
    """The process's own C library when it is glibc (it alone has gnu_get_libc_version)."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None
