"""libc's memory calls (mmap, madvise, mincore, mlock, mprotect), typed once for the whole runtime.

The engines' loaders (huge_pages.py, llama_cpp/lazy_load.py, onnx/session.py) and the expert
cache's hands (runtime/experts/residency.py) act on mappings of model files through these calls;
each used to load and type its own copy of the C library. `LIBC` is None where there is no C
library to load (the callers then skip what they would have asked the kernel for).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap

import numpy as np

_SIGNATURES = {  # name -> (result, arguments)
    "madvise": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]),
    "mincore": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]),
    "mlock": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t]),
    "munlock": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t]),
    "mprotect": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]),
    "mmap": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                               ctypes.c_int, ctypes.c_long]),
    "munmap": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t]),
}
MAP_FAILED = ctypes.c_void_p(-1).value


def _load() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    except OSError:
        return None
    for name, (result, args) in _SIGNATURES.items():
        fn = getattr(libc, name, None)
        if fn is not None:
            fn.restype = result
            fn.argtypes = args
    return libc


LIBC = _load()


def page_cache_bits(addr: int, length: int) -> np.ndarray | None:
    """Per page of the page-aligned mapping [addr, addr+length): is it in the page cache
    (mincore)? None where mincore is missing or refuses the range."""
    if LIBC is None or not hasattr(LIBC, "mincore") or length <= 0:
        return None
    pages = -(-length // mmap.PAGESIZE)
    vec = (ctypes.c_ubyte * pages)()
    if LIBC.mincore(addr, length, ctypes.addressof(vec)) != 0:
        return None
    return (np.frombuffer(vec, dtype=np.uint8) & 1).astype(bool)
