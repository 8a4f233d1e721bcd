"""Plain data of a generation: what is asked (SamplingParams, GenerationRequest), what the engine
runs (PreparedRequest), what comes back (StreamEvent, GenerationResult), and text assembly.

Kept apart from the engine so the HTTP layer, the CLI and tests share the types without a model.
SamplingParams is the one place sampling defaults and ranges are declared: the HTTP schema, the
CLI and `Model.generate(**kwargs)` all build it, and the backend's sampler reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import ChatTemplateError, SamplingError

# Valid ranges, shared with the HTTP schema so both refuse the same values.
MIN_MAX_TOKENS = 1
MAX_TEMPERATURE = 2.0  # OpenAI's upper bound
# What max_tokens=None allows: this many tokens, or fewer where the context window ends first.
DEFAULT_MAX_TOKENS = 128


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
    """A piece of text (and the token that completed it); the last event of a generation also
    carries why it finished, usage, timings and every generated token (some tokens complete no
    text of their own: part of a UTF-8 character, or held back as a possible stop string)."""

    text: str
    token: int | None
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: dict[str, float] | None = None
    tokens: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one generation; validated when built, so every instance is usable.

    max_tokens None (the default) means DEFAULT_MAX_TOKENS, or fewer when the context window
    ends first: a default never makes a prompt too long, while an explicit max_tokens that does
    not fit is refused. temperature 0 is greedy (the default: a device answer should be
    reproducible unless asked otherwise). top_k 0 is off. seed None draws a fresh one. `stop`
    also accepts one string or a list and is stored as a tuple; the generated text ends before
    the first stop string.
    """

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        def bad(name: str, rule: str, value: object) -> SamplingError:
            return SamplingError(f"{name} must be {rule}, got {value!r}")

        stop: Any = self.stop
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        try:
            object.__setattr__(self, "stop", tuple(stop))
        except TypeError:
            raise bad("stop", "a string or a list of strings", stop) from None

        if self.max_tokens is not None and (
            not _is_int(self.max_tokens) or self.max_tokens < MIN_MAX_TOKENS
        ):
            raise bad("max_tokens", f"an integer >= {MIN_MAX_TOKENS} or None", self.max_tokens)
        if not _is_real(self.temperature) or not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise bad("temperature", f"in [0, {MAX_TEMPERATURE:g}]", self.temperature)
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "in (0, 1]", self.top_p)
        if not _is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "an integer >= 0", self.top_k)
        if self.seed is not None and not _is_int(self.seed):
            raise bad("seed", "an integer", self.seed)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", "non-empty strings", self.stop)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


DEFAULT_SAMPLING = SamplingParams()

Message = Mapping[str, Any]


@dataclass(frozen=True)
class GenerationRequest:
    """What a caller asks for: a plain prompt or chat messages (exactly one), and how to sample.

    `Model.prepare` turns it into a PreparedRequest; messages are checked when the bundle's chat
    template renders them, so a bad role is a ChatTemplateError naming the message.
    """

    prompt: str | None = None
    messages: Sequence[Message] | None = None  # stored as a tuple
    params: SamplingParams = field(default_factory=SamplingParams)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise TypeError("a GenerationRequest needs exactly one of prompt or messages")
        if self.messages is not None:
            if isinstance(self.messages, str | bytes | Mapping):
                raise ChatTemplateError("messages must be a list of {role, content} objects")
            object.__setattr__(self, "messages", tuple(self.messages))


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready for the engine: rendered, tokenized and fitted to the context window.

    Built once by `Model.prepare` (before any queueing), consumed by `Model.stream_prepared`
    without tokenizing again. `prompt` is the rendered text (chat template applied); `params`
    has max_tokens resolved to a number that fits the window.
    """

    prompt: str
    prompt_ids: tuple[int, ...]
    params: SamplingParams

    def __post_init__(self) -> None:
        if self.params.max_tokens is None:
            raise TypeError("a PreparedRequest needs max_tokens resolved (see Model.prepare)")

    @property
    def max_tokens(self) -> int:
        assert self.params.max_tokens is not None  # resolved when built
        return self.params.max_tokens

    @property
    def stop(self) -> tuple[str, ...]:
        return self.params.stop


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
