"""The runtime's expert prefetch: settings, the tables the engine's tap needs, and the governor
that turns prefetching down when its bytes go unused.

The engine's C tap (runtime/backends/llama_cpp/tap_source.py) guesses the next MoE layers' experts
by pre-gating (runtime/experts/pregate.py) and starts reading the non-resident ones itself; it logs
what it read. The pager replays that log in order and hands each prefetch and each routing decision
to the `Prefetcher` here, which scores them and sets the width the tap guesses with. Offline
scores of all predictors (why pre-gating) live in runtime/experts/prefetch.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from contract.manifest import LayerExperts
from runtime.backends.base import RoutingLog
from runtime.backends.llama_cpp.tap_source import MAX_TENSORS
from runtime.backends.mapping import FileMapping
from runtime.experts.pregate import Pregate
from runtime.procfs import PAGE_SIZE

SOURCES = ("ffn_inp", "l_out")  # llama.cpp graph names of the hidden states pre-gating reads
Forget = Callable[[int, int], None]  # (layer, expert): drop an unused read from the page cache


@dataclass(frozen=True)
class PrefetchSettings:
    """How the pager prefetches (`runtime.load(prefetch=...)`; True = these defaults).

    depth: MoE layers ahead (1 or 2; 2 guesses both). width: experts guessed per target layer
    (None: top_k). source: the hidden state a guess starts from: "l_out", a layer's output
    (the most accurate predictor in runtime/experts/prefetch.py's scores; one more graph stop per
    layer while prefetching), or "ffn_inp", its residual input, read at its routing event (no extra
    stop, but on the trained fixture 2.5x the wasted bytes for fewer covered misses).
    Defaults measured on the qwen3moe-trained fixture (README: prefetch).
    window / max_waste: guessing starts one expert wide; after every `window` prefetched
    experts, a window that left more than `max_waste` of its bytes unused halves the width
    (down to off), one below half of that doubles it (up to `width`). idle_span / idle_min:
    guessing costs the same whether or not it reads anything (a graph stop and a router
    product per layer); when `idle_span` one-token layer runs started fewer than `idle_min`
    expert reads (the guesses were resident already), prefetching turns off (large fixture,
    50 % cold: x0.75-0.81 with it on, x0.85-0.91 off, having read 0 experts). retry_tokens:
    tokens to stay off before trying again at width 1.
    """

    depth: int = 2
    width: int | None = None
    source: str = "l_out"
    window: int = 8
    max_waste: float = 0.5
    idle_span: int = 32
    idle_min: int = 1
    retry_tokens: int = 256

    def __post_init__(self) -> None:
        if self.depth not in (1, 2):
            raise ValueError(f"prefetch depth must be 1 or 2 MoE layers, got {self.depth}")
        if self.source not in SOURCES:
            raise ValueError(f"prefetch source must be one of {', '.join(SOURCES)}, "
                             f"got '{self.source}'")
        if self.width is not None and self.width < 1:
            raise ValueError(f"prefetch width must be positive, got {self.width}")
        if not 0.0 < self.max_waste <= 1.0:
            raise ValueError(f"prefetch max_waste must be in (0, 1], got {self.max_waste}")
        if self.window < 1 or self.retry_tokens < 1 or self.idle_span < 1:
            raise ValueError("prefetch window, idle_span and retry_tokens must be positive")
        if self.idle_min < 0:
            raise ValueError(f"prefetch idle_min must not be negative, got {self.idle_min}")


def prefetch_settings(value: PrefetchSettings | bool | None, cold: bool) -> PrefetchSettings | None:
    """What `load(prefetch=...)` means: None is "when cold" (only a miss that reads storage
    gains from reading early; a warm miss is a page-cache hit), False off, True the defaults."""
    if isinstance(value, PrefetchSettings):
        return value
    if value is None:
        value = cold
    return PrefetchSettings() if value else None


class PrefetchGovernor:
    """Turns prefetching down when its bytes go unused, and back up when they are used.

    It starts at width 1 and doubles per useful window up to the full width: on the barely
    trained medium fixture every guess of a missing expert is wrong, and starting at the full
    width read ~75 experts for nothing per 128 tokens before turning off (measured: x0.81 vs
    x0.87 without prefetch at 50 % cold)."""

    def __init__(self, settings: PrefetchSettings, top_k: int, max_width: int) -> None:
        self.settings = settings
        self.max_width = max(1, min(max_width, settings.width or top_k))
        self.full_width = self.max_width  # what the settings allow; a budget may cap it below
        self.width = 1  # slow start: a model whose guesses go unused wastes one window only
        self._fetched = self._wasted = self._experts = 0
        self._runs = self._started = 0  # one-token layer runs and reads started, this span
        self._off_for = 0
        self.fetched_bytes = self.wasted_bytes = 0
        self.changes = 0

    def record(self, used: int, unused: int, expert_bytes: int) -> bool:
        """A target layer ran: `used` of its prefetched experts were routed to, `unused` not.
        True when the width changed."""
        self._experts += used + unused
        self._fetched += (used + unused) * expert_bytes
        self._wasted += unused * expert_bytes
        self.fetched_bytes += (used + unused) * expert_bytes
        self.wasted_bytes += unused * expert_bytes
        if self._experts < self.settings.window:
            return False
        waste = self._wasted / self._fetched if self._fetched else 0.0
        self._fetched = self._wasted = self._experts = 0
        before = self.width
        if waste > self.settings.max_waste:
            self.width //= 2
        elif waste < self.settings.max_waste / 2:
            self.width = min(self.max_width, self.width * 2)
        return self._changed(before)

    def issued(self, experts: int) -> None:
        """The tap started reading `experts` experts."""
        self._started += experts

    def ran(self) -> bool:
        """A MoE layer ran for one token. When a span of them started (almost) no reads, the
        guesses were resident already and guessing costs without paying: off, retried like a
        wasteful one. (Widening instead was tried: on the large fixture at 25 % the wider
        guesses were read and wasted, the waste rule narrowed again, and it never settled.)
        True when the width changed."""
        if not self.width:
            return False
        self._runs += 1
        if self._runs < self.settings.idle_span:
            return False
        idle = self._started < self.settings.idle_min
        self._runs = self._started = 0
        if not idle:
            return False
        before, self.width = self.width, 0
        return self._changed(before)

    def limit(self, slots: int) -> bool:
        """Guess at most `slots` experts per layer (a budget's room beside its pins), never
        more than the settings allow; True when the width changed."""
        before = self.width
        self.max_width = max(1, min(self.full_width, slots))
        self.width = min(self.width, self.max_width)
        return self.width != before

    def tick(self) -> bool:
        """A token passed; while off, count towards a retry. True when the width changed."""
        if self.width:
            return False
        self._off_for += 1
        if self._off_for < self.settings.retry_tokens:
            return False
        self._off_for = 0
        self.width = 1
        return self._changed(0)

    def _changed(self, before: int) -> bool:
        if self.width != before:
            self.changes += 1
            return True
        return False


def tap_tables(
    pregate: Pregate, layers: Mapping[int, LayerExperts], n_experts: int, mapping: FileMapping
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, bool, np.ndarray | None,
           float] | str:
    """(routers, the next MoE layers after each layer, expert spans, selection biases or None,
    whether the biases add to softmax probabilities rather than sigmoids, the routers' own
    logit biases or None, the norm's epsilon) for the tap, or why they cannot be built.

    Each stacked expert tensor must lie in one mapped region: the tap adds e * stride to the
    address of expert 0, so the whole [offset, offset + n_experts * stride) is checked here.
    """
    moe = sorted(layers)
    n_layers = moe[-1] + 1
    n_embd = next(iter(pregate.routers.values())).matrix.shape[1]
    routers = np.zeros((n_layers, n_experts, n_embd), dtype=np.float32)
    nxt = np.full((n_layers, 2), -1, dtype=np.int32)
    spans = np.zeros((n_layers, MAX_TENSORS, 2), dtype=np.uint64)
    biased = [pregate.routers[x].bias is not None for x in moe if x in pregate.routers]
    if any(biased) and not all(biased):
        return "a selection bias on some MoE layers only is not supported by the tap"
    biases = np.zeros((n_layers, n_experts), dtype=np.float32) if any(biased) else None
    with_logit = [pregate.routers[x].logit_bias is not None for x in moe if x in pregate.routers]
    if any(with_logit) and not all(with_logit):
        return "a router bias on some MoE layers only is not supported by the tap"
    logit_biases = np.zeros((n_layers, n_experts), dtype=np.float32) if any(with_logit) else None
    eps = next(iter(pregate.routers.values())).eps
    gatings = {pregate.routers[x].gating for x in moe if x in pregate.routers}
    if biases is not None and len(gatings) > 1:
        return "selection biases after both softmax and sigmoid are not supported by the tap"
    for layer in range(n_layers):  # from any layer: a dense one's output guesses too
        for i, t in enumerate([x for x in moe if x > layer][:2]):
            nxt[layer, i] = t
    for layer in moe:
        r = pregate.routers.get(layer)
        if r is None or r.matrix.shape != (n_experts, n_embd):
            return f"layer {layer}: router shape not supported by the tap"
        routers[layer] = r.matrix
        if biases is not None:
            if r.bias is None or r.bias.shape != (n_experts,):
                return f"layer {layer}: selection bias shape not supported by the tap"
            biases[layer] = r.bias
        if logit_biases is not None:
            if r.logit_bias is None or r.logit_bias.shape != (n_experts,):
                return f"layer {layer}: router bias shape not supported by the tap"
            logit_biases[layer] = r.logit_bias
        tensors = layers[layer].tensors
        if len(tensors) > MAX_TENSORS:
            return f"layer {layer}: more than {MAX_TENSORS} expert tensors"
        for i, t in enumerate(tensors):
            pieces = mapping.pieces(t.offset, t.offset + n_experts * t.stride)
            if pieces is None or len(pieces) != 1:
                return f"layer {layer}: {t.name} is not one mapped range"
            spans[layer, i] = (pieces[0][0], t.stride)
    softmax_bias = biases is not None and gatings == {"softmax"}
    return routers, nxt, spans, biases, softmax_bias, logit_biases, eps


class Prefetcher:
    """The pager's side of prefetching: accounting, the governor, and the tap's width."""

    def __init__(self, log: RoutingLog, settings: PrefetchSettings, top_k: int,
                 expert_bytes: Mapping[int, int], forget: Forget | None = None) -> None:
        self.log = log
        self.settings = settings
        self.governor = PrefetchGovernor(settings, top_k, log.max_guess)
        self.expert_bytes = expert_bytes
        self._forget = forget  # (layer, expert) -> None: drop unused reads (cold mode)
        self._pending: dict[int, set[int]] = {}
        self.used = self.unused = 0
        log.set_prefetch(settings.depth, self.governor.width)

    @property
    def active(self) -> bool:
        """Whether the tap is guessing now (the governor has not turned it off)."""
        return self.governor.width > 0

    def issued(self, target: int, experts: Sequence[int]) -> None:
        """The tap started reading these experts of `target` (a replayed log record)."""
        self._pending.setdefault(target, set()).update(experts)
        self.governor.issued(len(experts))

    def routed(self, layer: int, experts: Sequence[int]) -> None:
        """`layer` ran for one token with `experts`: score what was prefetched for it."""
        if self.governor.ran():
            self.log.set_prefetch(self.settings.depth, self.governor.width)
        pending = self._pending.pop(layer, None)
        if not pending:
            return
        chosen = set(experts)
        used = len(pending & chosen)
        unused = pending - chosen
        self.used += used
        self.unused += len(unused)
        if self._forget is not None:
            for e in unused:
                self._forget(layer, e)
        if self.governor.record(used, len(unused), self.expert_bytes[layer]):
            self.log.set_prefetch(self.settings.depth, self.governor.width)

    def tick(self) -> None:
        """A decode batch finished."""
        if self.governor.tick():
            self.log.set_prefetch(self.settings.depth, self.governor.width)

    def stats(self) -> dict[str, int]:
        calls, _ = self.log.prefetch_issued
        return {
            "prefetch_width": self.governor.width,
            "prefetch_calls": calls,
            "prefetch_bytes": self.governor.fetched_bytes,
            "prefetch_wasted_bytes": self.governor.wasted_bytes,
            "prefetch_used_experts": self.used,
            "prefetch_unused_experts": self.unused,
            "prefetch_changes": self.governor.changes,
        }


def start_prefetch(log: RoutingLog, settings: PrefetchSettings, pregate: Pregate,
                   layers: Mapping[int, LayerExperts], n_experts: int, top_k: int,
                   mapping: FileMapping | None, forget: Forget | None = None) -> Prefetcher | str:
    """A running Prefetcher on the engine's log, or why prefetching cannot run."""
    if mapping is None:
        return "the expert file is not mapped"
    tables = tap_tables(pregate, layers, n_experts, mapping)
    if isinstance(tables, str):
        return tables
    if settings.source not in log.sources:
        return f"the engine does not tap '{settings.source}'"
    log.configure_prefetch(*tables, source=settings.source, page=PAGE_SIZE)
    sizes = {layer: x.expert_bytes for layer, x in layers.items()}
    return Prefetcher(log, settings, top_k, sizes, forget)
