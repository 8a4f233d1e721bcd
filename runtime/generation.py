"""Plain data of a generation (results, stream events, sampling settings) and text assembly.

Kept apart from the engine so the HTTP layer and tests can use the types without a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from runtime.errors import SamplingError


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class GenerationResult:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" | "length" | "cancelled"
    usage: Usage
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamEvent:
    text: str
    token: int | None
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: dict[str, float] | None = None


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def validate(self) -> SamplingParams:
        def bad(name: str, rule: str, value: object) -> SamplingError:
            return SamplingError(f"{name} must be {rule}, got {value!r}")

        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise bad("max_tokens", "an integer >= 1", self.max_tokens)
        if not math.isfinite(self.temperature) or not 0 <= self.temperature <= 2:
            raise bad("temperature", "in [0, 2]", self.temperature)
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]", self.top_p)
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0", self.top_k)
        if self.seed is not None and not isinstance(self.seed, int):
            raise bad("seed", "an integer", self.seed)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", "non-empty strings", self.stop)
        return self


class TextAssembler:
    """Token bytes -> text pieces: waits for whole UTF-8 characters, and holds back any tail that
    could still become a stop string, so a stop string is never streamed to the client."""

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self._bytes = b""
        self._text = ""  # decoded, not yet emitted
        self.emitted = ""
        self.stopped = False

    def feed(self, data: bytes) -> str:
        self._bytes += data
        try:
            self._text += self._bytes.decode("utf-8")
            self._bytes = b""
        except UnicodeDecodeError as e:
            if e.start > 0 and len(self._bytes) - e.start < 4:
                self._text += self._bytes[: e.start].decode("utf-8")
                self._bytes = self._bytes[e.start :]
            elif len(self._bytes) >= 4:
                self._text += self._bytes.decode("utf-8", errors="replace")
                self._bytes = b""
        return self._release()

    def _release(self) -> str:
        for s in self.stop:
            idx = self._text.find(s)
            if idx >= 0:
                self.stopped = True
                out, self._text = self._text[:idx], ""
                self.emitted += out
                return out
        hold = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self._text)), 0, -1):
                if self._text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        out = self._text[: len(self._text) - hold] if hold else self._text
        self._text = self._text[len(out) :]
        self.emitted += out
        return out

    def flush(self) -> str:
        if self.stopped:
            return ""
        out = self._text + self._bytes.decode("utf-8", errors="replace")
        self._text, self._bytes = "", b""
        self.emitted += out
        return out
