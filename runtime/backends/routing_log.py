"""A routing log kept in Python, for an engine whose routing reaches Python anyway.

llama.cpp's C tap keeps a one-token routing event whose experts are all resident out of the
pager: it notes the event in its log (runtime/backends/llama_cpp/tap.py) and the pager replays
the notes, in order, before it handles any event itself. The ONNX backend's staged runs hand
every layer's routing to Python between two sessions (runtime/backends/onnx/stages.py), so
there the saving is not a graph stop but the pager's own work per event: one bitmap lookup
replaces an admission (measured on qwen3moe-large int8 at 50 %: the pager took 0.42 ms of a
5.9 ms token). Same record format and the same contract as the C log: `resident` mirrors the
pager's books, `python_needed` sends every event to the pager, a full log sends the next one.

It offers no quiet layers (`known` is kept for the pager's bookkeeping and never consulted:
every event is noted or delivered) and no prefetch of its own. Where the engine hands over each
prompt batch's residual stream with the routing (the ONNX taps) and read its routers from its own
graph (`routers`), the pager's prompt prefetch runs on them (runtime/experts/batch_prefetch.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from runtime.backends.base import MARK


class PythonRoutingLog:
    """The `RoutingLog` protocol (runtime/backends/base.py) for engines without a native tap."""

    sources: dict[str, tuple[str, int]] = {}  # no hidden state tapped one token at a time
    max_guess = 0

    def __init__(self, n_layers: int, n_experts: int, top_k: int, capacity: int = 4096,
                 routers: Callable[[], dict[int, np.ndarray] | str] | None = None) -> None:
        self._read_routers = routers
        self._routers: dict[int, np.ndarray] | str | None = None
        self._hidden: tuple[int, np.ndarray] | None = None
        self.width = 2 + top_k
        # The pager writes the numpy view; a one-token step reads the bytes beneath it (a
        # bytearray index is a fraction of a numpy scalar's: this runs at every MoE layer).
        self._bits = bytearray(n_layers * n_experts)
        self.resident = np.frombuffer(self._bits, dtype=np.uint8).reshape(n_layers, n_experts)
        self._n_layers, self._n_experts = n_layers, n_experts
        self.known = np.zeros(n_layers, dtype=np.uint8)
        self.sample = 0
        self.python_needed = False
        self._capacity = capacity
        self._records: list[list[int]] = []
        self._open = True
        self.logged = self.delivered = 0

    def note_hit(self, layer: int, ids: np.ndarray) -> bool:
        """Note a routing event here instead of delivering it: True when it is one token's
        (`ids` [1, k]) whose experts are all resident and the pager wants no event itself."""
        if ids.shape[0] != 1:
            self.delivered += 1
            return False
        return self.note_row(layer, ids.ravel().tolist())

    def note_row(self, layer: int, row: list[int]) -> bool:
        """`note_hit` for one token's expert ids as a list (the ONNX tap's fast path)."""
        n = self._n_experts
        if (not self._open or self.python_needed or len(row) + 2 > self.width
                or len(self._records) >= self._capacity or not 0 <= layer < self._n_layers
                or not row or min(row) < 0 or max(row) >= n):  # fmt: skip
            self.delivered += 1
            return False
        bits, base = self._bits, layer * n
        for e in row:
            if not bits[base + e]:
                self.delivered += 1
                return False
        self._records.append([layer, len(row), *row])
        self.logged += 1
        return True

    def __len__(self) -> int:
        return len(self._records)

    def drain(self) -> np.ndarray:
        """The records, oldest first ([n, width] int32); the log is empty afterwards."""
        out = np.zeros((len(self._records), self.width), dtype=np.int32)
        for i, rec in enumerate(self._records):
            out[i, : len(rec)] = rec
        self._records.clear()
        return out

    def mark(self) -> bool:
        """Note that a new batch starts here; False when the log is full."""
        if len(self._records) >= self._capacity:
            return False
        self._records.append([MARK, 0])
        return True

    @property
    def routers(self) -> dict[int, np.ndarray] | str:
        """The engine's folded routers (layer -> f32 [n_experts, n_embd]: the router matrix times
        its norm's scale), read on first use; or why it has none."""
        if self._routers is None:
            self._routers = (self._read_routers() if self._read_routers is not None
                             else "the engine hands over no hidden state")  # fmt: skip
        return self._routers

    def keep_hidden(self, layer: int, hidden: np.ndarray | None) -> None:
        """The residual stream `layer`'s router read in the batch being run, while its routing
        event is handled (None: not handed over, or the event is over)."""
        self._hidden = None if hidden is None else (layer, hidden)

    def hidden(self, layer: int) -> np.ndarray | None:
        if self._hidden is None or self._hidden[0] != layer:
            return None
        return self._hidden[1].reshape(-1, self._hidden[1].shape[-1])

    def use_known(self, on: bool) -> None:
        """Nothing to skip: a staged run stops between layers whatever the books know."""

    @property
    def quiet_counts(self) -> tuple[int, int]:
        return 0, 0

    def configure_prefetch(self, *args: object, source: str, page: int, **kw: object) -> None:
        raise ValueError(f"hidden state '{source}' is not tapped (this engine taps none)")

    def set_prefetch(self, depth: int, width: int) -> None:
        raise RuntimeError("this engine's routing log does not prefetch")

    @property
    def prefetch_issued(self) -> tuple[int, int]:
        return 0, 0

    def close(self) -> None:
        """Note nothing more: every later event goes to the pager."""
        self._open = False

    @property
    def counts(self) -> tuple[int, int]:
        """(events noted here, events delivered to the pager) so far."""
        return self.logged, self.delivered
