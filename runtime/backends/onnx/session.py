"""How the ONNX backend asks onnxruntime for sessions, and keeps its mappings of weights honest.

Settings (`options`): one intra-op pool of the engine's threads that waits as the wait policy
says (runtime/threads.py: by default a short spin, then sleep), prepacking on (it packs dense
weights only: a fused build's expert stacks are overridable initializers, never packed, and a
gathered build's stacks feed Gather nodes, which pack nothing), and for staged runs one arena
shared by every stage.
Mappings: onnxruntime maps each external initializer private and writable; `read_only` makes a
weight mapping read-only (mlock on a writable private mapping pins anonymous copies instead of
the file's pages), `release` drops pages of given file ranges from every mapping of a file,
`trim_heap` returns what loading freed.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from contract.onnx_proto import read_model
from runtime.backends.base import EngineConfig
from runtime.backends.libc import LIBC
from runtime.procfs import file_regions
from runtime.threads import onnxruntime_wait

PAGE = 4096
T = TypeVar("T")
_MADV_DONTNEED = 4
_PROT_READ = 1


def read_graph(model_path: Path):  # type: ignore[no-untyped-def]
    """model.onnx without its weights, or None (the session's own error names the problem)."""
    try:
        return read_model(model_path)
    except Exception:
        return None


def has_fused_experts(model) -> bool:  # type: ignore[no-untyped-def]
    """Whether the graph declares overridable initializers: the fused QMoE stacks of a quantized
    build (packager/onnx_export/qmoe.py), which onnxruntime never packs."""
    if model is None:
        return False
    inits = {t.name for t in model.graph.initializer}
    return any(i.name in inits for i in model.graph.input)


def experts_as_constants(model, so, folder: Path) -> bytes:  # type: ignore[no-untyped-def]
    """The graph (weights still external, read from `folder`) with its fused expert stacks
    made plain constants, so onnxruntime packs them at load: a private copy of every expert,
    which only a full budget may hold (it holds them all anyway)."""
    inits = {t.name for t in model.graph.initializer}
    plain = [i for i in model.graph.input if i.name not in inits]
    copy = type(model)()
    copy.CopyFrom(model)
    del copy.graph.input[:]
    copy.graph.input.extend(plain)
    so.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                str(folder))  # fmt: skip
    return copy.SerializeToString()


_SHARED_ARENA: list[bool] = []  # registered once per process


def shared_arena(ort) -> bool:  # type: ignore[no-untyped-def]
    """Register one CPU arena in onnxruntime's environment for sessions that opt in."""
    if not _SHARED_ARENA:
        try:
            info = ort.OrtMemoryInfo(
                "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
            )
            # max memory 0 (no cap), extend strategy 1 (kSameAsRequested), defaults otherwise
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 1, -1, -1))
            _SHARED_ARENA.append(True)
        except Exception:  # already registered by someone else, or not supported: per session
            _SHARED_ARENA.append(False)
    return _SHARED_ARENA[0]


def options(ort, cfg: EngineConfig, shared: bool = False,  # type: ignore[no-untyped-def]
            custom_ops: str | None = None):
    """One session's settings; `shared` uses the process's one shared arena, `custom_ops` is an
    operator library to register (taps.py's).

    Prepacking stays on for every build: onnxruntime packs only constant weights of kernels that
    pack (MatMulNBits, MatMul), which are the dense ones; expert stacks reach their kernels
    through Gather/GatherBlockQuantized (float and int4 builds) or as overridable initializers
    (fused int8), so none is copied (checked by saving what onnxruntime packed: dense tensors
    only, on fp32, fp16 and int4 builds). Turned off, the int4 build's dense MatMulNBits
    dequantized their weights on every call: decode 1.55x slower, paired, same tokens."""
    so = ort.SessionOptions()
    if custom_ops is not None:
        so.register_custom_ops_library(custom_ops)
    so.intra_op_num_threads = cfg.n_threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    shared = shared and shared_arena(ort)
    so.add_session_config_entry("session.use_env_allocators", "1" if shared else "0")
    # How idle workers wait between kernels (runtime/threads.py): sleeping at once pays a
    # futex wake-up per parallel kernel, hundreds per token; spinning without bound burns the
    # core a busy neighbour needs. The default spins briefly, then sleeps.
    for key, value in onnxruntime_wait(cfg.wait_policy)[1]:
        so.add_session_config_entry(key, value)
    return so


def release(path: Path, spans: list[tuple[int, int]]) -> None:
    """MADV_DONTNEED the whole pages of `spans` (file bytes of `path`) wherever this process
    maps them: clean file pages, read again from the page cache if touched."""
    libc = _libc()
    for r in file_regions(path):
        lo, hi = r.offset, r.offset + (r.end - r.start)
        for a, b in spans:
            start, end = -(-max(a, lo) // PAGE) * PAGE, min(b, hi) // PAGE * PAGE
            if start < end:
                libc.madvise(ctypes.c_void_p(r.start + start - lo), ctypes.c_size_t(end - start),
                             _MADV_DONTNEED)  # fmt: skip


def releasing(path: Path, spans: list[tuple[int, int]], make: Callable[[], T],
              every_s: float = 0.002) -> T:
    """`make()` (a session load that reads `spans` of `path` through its mappings) while a
    thread releases those pages behind it every `every_s`, so the load never holds more than
    what it read in that time; released once more at the end."""
    done = threading.Event()

    def behind() -> None:
        while not done.wait(every_s):
            release(path, spans)

    worker = threading.Thread(target=behind, name="edgemoe-release", daemon=True)
    worker.start()
    try:
        return make()
    finally:
        done.set()
        worker.join()
        release(path, spans)


def trim_heap() -> None:
    """Give the C heap's free memory back to the system (glibc's malloc_trim; elsewhere
    nothing). Loading staged sessions frees tens of MiB that malloc keeps: measured on
    qwen3moe-large int4 at 25 %, the heap after load was 52-109 MiB, 28 MiB after a trim."""
    try:
        _libc().malloc_trim(0)
    except (AttributeError, OSError):  # not glibc
        pass


def read_only(addr: int, length: int) -> None:
    """mprotect(PROT_READ) a mapping of weights; a refusal leaves it as it was."""
    libc = _libc()
    libc.mprotect(ctypes.c_void_p(addr), ctypes.c_size_t(length), _PROT_READ)


def _libc() -> Any:
    if LIBC is None:
        raise OSError("no C library to call")
    return LIBC
