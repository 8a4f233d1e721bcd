"""Routing events -> per-token rows: the one place that turns an engine's taps into a trace.

An engine reports routing per MoE layer and per batch (`RoutingEvent`, rows in token order). A
trace wants one row per token position: `rows[position][layer] = experts`. The probe is told
when a batch starts, so the rows of each layer's event land on the right positions, whatever
the batch size; the runtime's pager, `edgemoe trace` and tests all read routing through it.
"""

from __future__ import annotations

from runtime.backends.base import RoutingEvent


class RoutingProbe:
    def __init__(self) -> None:
        self.rows: list[dict[int, tuple[int, ...]]] = []
        self._base = 0

    def begin_batch(self) -> None:
        """The next events describe tokens after every position recorded so far."""
        self._base = len(self.rows)

    def on_event(self, event: RoutingEvent) -> None:
        need = self._base + event.n_tokens
        while len(self.rows) < need:
            self.rows.append({})
        for i, row in enumerate(event.ids.tolist()):
            self.rows[self._base + i][event.layer] = tuple(row)

    def clear(self) -> None:
        self.rows.clear()
        self._base = 0
