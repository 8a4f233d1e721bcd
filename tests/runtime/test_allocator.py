"""The C allocator's fixed thresholds (runtime/allocator.py), seen in glibc's own accounting: a
process that frees one large block and then allocates blocks a little smaller keeps them in
its heap under glibc's moving threshold, and in mappings of their own (handed back when freed)
once the thresholds are fixed. Each case runs in a process of its own: the setting is the
process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Frees one 2 MiB block (glibc then serves blocks under 2 MiB from the heap), holds eight of
# 1.5 MiB, and reports glibc's mallinfo2: `arena` (heap bytes) and `hblkhd` (mapped blocks).
_CHILD = r"""
import ctypes, json, sys
from runtime.allocator import fix_malloc_thresholds
said = fix_malloc_thresholds() if sys.argv[1] == "fix" else None

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                               "usmblks", "fsmblks", "uordblks", "fordblks",
                                               "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
big = bytearray(2 << 20)
del big
before = libc.mallinfo2()
held = [bytearray(3 << 19) for _ in range(8)]
after = libc.mallinfo2()
print(json.dumps({"said": said, "heap": after.arena - before.arena,
                  "mapped": after.hblkhd - before.hblkhd}))
"""

_MIB = 1 << 20


def _run(mode: str, **env: str) -> dict:
    ours = ("GLIBC_TUNABLES", "EDGEMOE_MALLOC")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ours}
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], env={**clean, **env},
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return json.loads(out.stdout)


@pytest.mark.unit
def test_glibc_left_alone_keeps_blocks_under_a_freed_one_in_its_heap():
    r = _run("leave")
    assert r["heap"] >= 10 * _MIB and r["mapped"] < _MIB  # (part of the freed block reused)


@pytest.mark.unit
def test_fixed_thresholds_give_large_blocks_mappings_of_their_own():
    r = _run("fix")
    assert r["said"] == "fixed at 1024 KiB"
    assert r["mapped"] >= 12 * _MIB and r["heap"] < _MIB


@pytest.mark.unit
@pytest.mark.parametrize("env, said, where", [
    ({"EDGEMOE_MALLOC": "dynamic"}, "glibc's own (EDGEMOE_MALLOC=dynamic)", "heap"),
    ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4194304"}, "as the environment sets them",
     "heap"),  # the user's 4 MiB
    ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "as the environment sets them", "mapped"),  # 64 KiB
])  # fmt: skip
def test_a_choice_in_the_environment_is_left_as_it_is(env, said, where):
    r = _run("fix", **env)
    assert r["said"] == said
    assert r[where] >= 10 * _MIB
