"""When speculative decoding pays: timing both modes and switching drafting off when it loses.

Pure bookkeeping over (drafted, produced, seconds) per step, so it is tested with made-up
timings. Speculation can lose: a draft that is rarely right, or (MoE) a verify batch whose
tokens route to many different experts, which makes verifying K tokens cost nearly K single
steps, worse under a budget where each extra expert may be a storage read. The switch:

1. `MEASURE`: the first `plain_tokens` tokens decode plainly, timing a plain token.
2. `SPECULATE`: every `window` verify steps, the window's tokens per second are compared with
   the last plain measurement; below it, drafting is switched off. A clear loss (below
   `early_factor` of plain after `early_steps` steps) switches off without waiting for the
   window. The first step after switching on is not judged: a draft model then catches up on
   the tokens decoded plainly meanwhile, a one-off cost.
3. `PLAIN`: `backoff` tokens decode plainly (re-timing plain decoding), then speculation is
   tried again. Each consecutive loss doubles the backoff (up to `max_backoff`); a window
   that wins resets it. A draft that always loses thus costs about
   window / max_backoff of the loss in the long run.

The state lives as long as the Model, so a server's requests inform each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from runtime.errors import EdgemoeError

# Tokens drafted per verify step: the default, and the most one step may verify. Kept here,
# free of numpy, so the server's option table can read them.
DEFAULT_DRAFT_TOKENS = 4
MAX_DRAFT_TOKENS = 32
DEFAULT_WINDOW = 8  # verify steps per comparison
DEFAULT_PLAIN_TOKENS = 8  # plain tokens timed before speculating
DEFAULT_EARLY_STEPS = 3  # steps before a clear loss may switch drafting off
DEFAULT_EARLY_FACTOR = 0.8  # a clear loss: below this fraction of plain tokens/s
DEFAULT_BACKOFF = 64  # plain tokens after a losing window, doubled per consecutive loss
DEFAULT_MAX_BACKOFF = 1024


def check_draft_tokens(k: object) -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= MAX_DRAFT_TOKENS:
        raise EdgemoeError(f"draft_tokens must be an integer in 1..{MAX_DRAFT_TOKENS}, got {k!r}")
    return k


class SwitchState(Enum):
    MEASURE = "measure"  # timing plain decoding before the first speculation
    SPECULATE = "speculate"
    PLAIN = "plain"  # backed off after a losing window


@dataclass
class Throughput:
    """Tokens produced and seconds spent over some steps."""

    tokens: int = 0
    seconds: float = 0.0
    steps: int = 0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds
        self.steps += 1

    @property
    def rate(self) -> float | None:
        return self.tokens / self.seconds if self.seconds > 0 and self.tokens else None


class AutoSwitch:
    """Says how many tokens to draft for the next step (0: decode plainly) from measured speed.

    auto False: always draft k (tests and benchmarks that measure speculation itself).
    """

    def __init__(
        self,
        k: int,
        *,
        auto: bool = True,
        window: int = DEFAULT_WINDOW,
        early_steps: int = DEFAULT_EARLY_STEPS,
        early_factor: float = DEFAULT_EARLY_FACTOR,
        plain_tokens: int = DEFAULT_PLAIN_TOKENS,
        backoff: int = DEFAULT_BACKOFF,
        max_backoff: int = DEFAULT_MAX_BACKOFF,
    ) -> None:
        self.k, self.auto, self.window = k, auto, window
        self.early_steps, self.early_factor = early_steps, early_factor
        self._unjudged = 0  # steps after switching on that the window leaves out
        self._base_backoff, self._max_backoff = backoff, max_backoff
        self._backoff = backoff
        self.state = SwitchState.MEASURE
        self._left = plain_tokens  # plain tokens still to decode in MEASURE / PLAIN
        self._plain_window = Throughput()  # the current or last plain phase
        self._plain_rate: float | None = None
        self._spec_window = Throughput()
        self.spec_total = Throughput()  # lifetime, for stats
        self.plain_total = Throughput()
        self.switched_off = 0  # times a window lost and drafting went off

    def draft_tokens(self) -> int:
        if not self.auto or self.state == SwitchState.SPECULATE:
            return self.k
        return 0

    def record(self, drafted: int, produced: int, seconds: float) -> None:
        """One step: `drafted` tokens proposed (0: a plain step), `produced` tokens emitted."""
        speculative = self.state == SwitchState.SPECULATE or not self.auto
        (self.spec_total if speculative and drafted else self.plain_total).add(produced, seconds)
        if not self.auto:
            return
        if self.state != SwitchState.SPECULATE:
            self._plain_window.add(produced, seconds)
            self._left -= produced
            if self._left <= 0:
                self._plain_rate = self._plain_window.rate or self._plain_rate
                self._plain_window = Throughput()
                self._spec_window = Throughput()
                self._unjudged = 1
                self.state = SwitchState.SPECULATE
            return
        if self._unjudged:
            self._unjudged -= 1
            return
        window = self._spec_window
        window.add(produced, seconds)
        spec, plain = window.rate, self._plain_rate
        if spec is None or plain is None:
            if window.steps >= self.window:
                self._spec_window = Throughput()
            return
        if (window.steps >= self.early_steps and spec < self.early_factor * plain) or (
            window.steps >= self.window and spec < plain
        ):
            self._spec_window = Throughput()
            self.state = SwitchState.PLAIN
            self.switched_off += 1
            self._left = self._backoff
            self._backoff = min(2 * self._backoff, self._max_backoff)
        elif window.steps >= self.window:
            self._spec_window = Throughput()
            self._backoff = self._base_backoff

    @property
    def speedup(self) -> float | None:
        """Lifetime speculative tokens/s over plain tokens/s; None until both are measured."""
        spec, plain = self.spec_total.rate, self.plain_total.rate
        return spec / plain if spec is not None and plain is not None else None
