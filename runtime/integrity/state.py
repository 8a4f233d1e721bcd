"""What a loaded model knows about its weights: how much has been verified, and the first fault.

One record per Model, written by the pager's first-read checks (`reads.py`) and the background
check of the dense tensors (`background.py`), read by the generation loop (which refuses to go
on once a fault is known), by `stats()` and by the server, which subscribes to hear of a fault
at once (to fail the requests on that model, answer /health with it, and reload the bundle only
once its files are replaced).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from runtime.errors import ModelCorruptError

log = logging.getLogger("edgemoe.integrity")

Listener = Callable[[ModelCorruptError], None]


class IntegrityState:
    """The verification books of one model and its first fault (thread-safe)."""

    def __init__(self, checksums: bool, note: str = "") -> None:
        self.checksums = checksums  # False: the bundle carries none (packed before they existed)
        self.note = note  # how the weights are checked, in words (stats, startup log)
        self.fault: ModelCorruptError | None = None
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self.experts_verified = 0
        self.expert_bytes_verified = 0
        self.expert_verify_s = 0.0  # wall time of first-read checks, storage waits included
        self.verify_cpu_s = 0.0  # CPU time of first-read checks on the decoding thread
        self.dense = "pending" if checksums else "none"  # pending | ok | failed | off | none
        self.dense_bytes_verified = 0
        self.dense_verify_s = 0.0

    def fail(self, error: ModelCorruptError) -> None:
        """Record a fault (the first one wins), log it and tell every listener."""
        with self._lock:
            if self.fault is not None:
                return
            self.fault = error
            listeners = list(self._listeners)
        if log.hasHandlers():  # a server's log; a bare script gets it as the exception alone
            log.error("%s", error)
        for listener in listeners:
            try:
                listener(error)
            except Exception:
                log.exception("an integrity listener failed")

    def check(self) -> None:
        """Raise the known fault (a fresh instance, so concurrent raises share no traceback)."""
        fault = self.fault
        if fault is not None:
            raise ModelCorruptError(*fault.args)

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(fault)` on the first fault (at once if one is already known)."""
        with self._lock:
            fault = self.fault
            if fault is None:
                self._listeners.append(listener)
        if fault is not None:
            listener(fault)

    def stats(self) -> dict[str, Any]:
        return {
            "integrity": "corrupt" if self.fault is not None else "ok",
            "integrity_faults": int(self.fault is not None),
            "integrity_fault": str(self.fault) if self.fault is not None else None,
            "checksums": self.note,
            "experts_verified": self.experts_verified,
            "expert_bytes_verified": self.expert_bytes_verified,
            "expert_verify_s": self.expert_verify_s,
            "verify_cpu_s": self.verify_cpu_s,
            "dense_check": self.dense,
            "dense_bytes_verified": self.dense_bytes_verified,
            "dense_verify_s": self.dense_verify_s,
        }
