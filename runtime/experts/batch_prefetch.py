"""Prompt prefetch: while one MoE layer computes a prompt batch, read what the next one will want.

A prompt's routing reaches the pager one layer at a time, just before that layer's expert
matmuls, so without help a cold prompt reads layer 1's experts only after layer 0 has computed,
and its time to first token is the sum of every layer's compute and every layer's reads. At a
prompt batch's routing event for layer L the pager also has L's residual input for every token
(the engine's watched `ffn_inp`); pre-gating (runtime/experts/pregate.py) ranks the next MoE
layer's experts from it, and the non-resident ones most tokens will pick are asked for at once
(WILLNEED), so storage reads them while L computes. When the next layer's routing arrives, the
pager admits what it really routed to as always (those reads have started, or finished), and
cold guesses that went unused are dropped from the page cache again.

Bounds: no more guesses than the next layer could admit beside the pinned set, and none while
the current layer holds experts beyond the capacity (transients), so memory stays within the
budget plus one layer's experts during a prompt, as before. The model's last layer computes only
the rows whose logits are read (llama.cpp skips the rest), so its guess is the last token's.
Nothing here changes which experts a layer uses: tokens never change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from runtime.experts.pregate import Pregate

Act = Callable[[int, int], None]  # (layer, expert)
Check = Callable[[int, int], bool]


class BatchPrefetch:
    """Guesses the next MoE layer's experts for a prompt batch and starts reading them."""

    def __init__(self, pregate: Pregate, moe_layers: Sequence[int], top_k: int, load: Act,
                 forget: Act | None = None) -> None:
        self.pregate = pregate
        order = sorted(moe_layers)
        self._next = {a: b for a, b in zip(order, order[1:], strict=False)}
        self._last = order[-1] if order else -1
        self.top_k = top_k
        self._load = load
        self._forget = forget  # cold: drop unused reads from the page cache again
        self._pending: dict[int, set[int]] = {}
        self.guessed = self.used = self.unused = 0

    def guess(self, layer: int, hidden: np.ndarray, resident: Check, slots: int) -> int:
        """`layer` just routed a batch whose residual inputs are `hidden` [n_tokens, n_embd]:
        start reading up to `slots` non-resident experts of the next MoE layer, those the most
        tokens are guessed to pick first. Returns how many reads started."""
        target = self._next.get(layer)
        if target is None or slots <= 0 or target not in self.pregate.routers:
            return 0
        rows = hidden[-1:] if target == self._last else hidden
        picks = self.pregate.rank(target, rows, self.top_k)
        want = [int(e) for e, _ in Counter(picks.ravel().tolist()).most_common()
                if not resident(target, int(e))][:slots]
        for e in want:
            self._load(target, e)
        if want:
            self._pending.setdefault(target, set()).update(want)
            self.guessed += len(want)
        return len(want)

    def routed(self, layer: int, experts: Sequence[int]) -> None:
        """`layer` routed to `experts` (any batch): score what was guessed for it."""
        pending = self._pending.pop(layer, None)
        if not pending:
            return
        used = pending.intersection(experts)
        self.used += len(used)
        self._drop(layer, pending - used)

    def settle(self, counted: Check) -> None:
        """A step ended: guesses for layers that never came to the pager (a one-token event
        the engine kept) are unused unless the books hold them."""
        for layer, pending in self._pending.items():
            self._drop(layer, {e for e in pending if not counted(layer, e)})
        self._pending.clear()

    def _drop(self, layer: int, unused: set[int]) -> None:
        self.unused += len(unused)
        if self._forget is not None:
            for e in unused:
                self._forget(layer, e)

    def stats(self) -> dict[str, int]:
        return {"prompt_prefetch_experts": self.guessed,
                "prompt_prefetch_used_experts": self.used,
                "prompt_prefetch_unused_experts": self.unused}
