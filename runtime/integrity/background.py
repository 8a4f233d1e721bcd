"""The dense tensors (and, when nothing is paged, every expert) verified after load, off the
request path.

Dense weights are read at load and touched by every token, so there is no "first read" to ride
on: a low-priority thread re-reads them with `pread` (from the page cache the engine's mapping
shares, so no storage read in the usual case) and compares xxh3 digests with the manifest. At a
full budget the engine read every expert at load and nothing is paged, so the experts are
checked here too, paced (RATE_BYTES_S) so that decoding keeps its core. A mismatch or a read
error is recorded in the model's IntegrityState, which fails the generation that is running, if
any, at its next step, and every later one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from contract.checksums import (
    CHUNK,
    RangeReadError,
    dense_ranges_of,
    expert_ranges_of,
    hash_range,
    known,
)
from contract.manifest import Manifest
from runtime.errors import ModelCorruptError
from runtime.integrity.reads import REPAIR, no_readahead
from runtime.integrity.state import IntegrityState

log = logging.getLogger("edgemoe.integrity")

# At most this many bytes verified per second: the whole large fixture (436 MB, at a full
# budget) in ~7 s, about 0.1 s of one core in all (pread from the page cache and xxh3 run at
# ~5 GB/s), so that a generation started at load keeps its cores.
RATE_BYTES_S = 64 * 2**20
# Bytes hashed between two pauses. The pauses, not the hashing, are what a decoding engine
# feels: every wake-up of this thread takes a core from one of the engine's threads, and the
# others wait for it at llama.cpp's next barrier. Pausing after each expert slice woke it
# thousands of times (large fixture, 2 threads, stock llama.cpp decoding beside it in windows:
# 0.96-0.99x of its speed without the check); one pause per 32 MiB (~7 ms of hashing) wakes it
# twice a second (0.97-1.02x).
BURST_BYTES = 32 * 2**20


@dataclass(frozen=True)
class Range:
    path: Path
    what: str  # the tensor (and expert) the bytes belong to
    start: int
    end: int
    digest: int


def ranges_to_check(folder: Path, manifest: Manifest, files: Iterable[str],
                    experts: bool) -> list[Range]:
    """Every dense range of `files` the manifest checksums (and every expert slice, if asked)."""
    out: list[Range] = []
    for name in files:
        if not known(manifest.checksums.get(name)):
            continue
        found = list(dense_ranges_of(manifest, name))
        if experts:
            found += expert_ranges_of(manifest, name)
        out += [Range(Path(folder) / name, *r) for r in found]
    return out


class BackgroundCheck:
    """A daemon thread verifying `ranges` once, at the lowest CPU priority."""

    def __init__(self, ranges: Sequence[Range], state: IntegrityState,
                 rate_bytes_s: float = RATE_BYTES_S) -> None:
        self._ranges = list(ranges)
        self._state = state
        self._rate = rate_bytes_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="edgemoe-verify", daemon=True)

    def start(self) -> BackgroundCheck:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:  # Linux: a thread is a task with its own nice value; decoding comes first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (OSError, AttributeError):
            pass
        t0 = time.perf_counter()
        paused_at = 0  # bytes verified at the last pause
        buf = bytearray(CHUNK)
        fds: dict[Path, int] = {}
        try:
            for r in self._ranges:
                if self._stop.is_set() or self._state.fault is not None:
                    return
                fd = fds.get(r.path)
                if fd is None:
                    fd = fds[r.path] = os.open(r.path, os.O_RDONLY)
                    no_readahead(fd)
                error = self._check(fd, r, buf)
                if error is not None:
                    self._state.dense = "failed"
                    self._state.fail(error)
                    return
                self._state.dense_bytes_verified += r.end - r.start
                if self._state.dense_bytes_verified - paused_at < BURST_BYTES:
                    continue
                # Paced in bursts (BURST_BYTES): few wake-ups, a few percent of one core.
                paused_at = self._state.dense_bytes_verified
                ahead = paused_at / self._rate - (time.perf_counter() - t0)
                if ahead > 0 and self._stop.wait(ahead):
                    return
            self._state.dense = "ok"
        except OSError as e:  # the file could not even be opened
            self._state.dense = "failed"
            self._state.fail(ModelCorruptError(f"{e.filename}: cannot be read for its checksums "
                                               f"({e.strerror}); {REPAIR}"))
        finally:
            for fd in fds.values():
                os.close(fd)
            self._state.dense_verify_s = time.perf_counter() - t0

    @staticmethod
    def _check(fd: int, r: Range, buf: bytearray) -> ModelCorruptError | None:
        where = f"{r.path}: {r.what} (bytes [{r.start}, {r.end}))"
        try:
            got = hash_range(fd, r.start, r.end, buf)
        except RangeReadError as e:
            return ModelCorruptError(f"{where} could not be read: {e}; {REPAIR}")
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else str(e)
            return ModelCorruptError(f"{where} could not be read: {reason} (storage fault); "
                                     f"{REPAIR}")
        if got != r.digest:
            return ModelCorruptError(f"{where} does not match the manifest's checksum: the file "
                                     f"is damaged; {REPAIR}")
        return None

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the check to finish; False if it is still running after `timeout_s`."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
