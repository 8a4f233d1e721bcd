"""Plain data of a generation: what is asked (SamplingParams, GenerationRequest), what the engine
runs (PreparedRequest), what comes back (StreamEvent, Choice, GenerationResult), and text assembly.

Kept apart from the engine so the HTTP layer, the CLI and tests share the types without a model.
SamplingParams is the one place sampling defaults and ranges are declared: the HTTP schema, the
CLI and `Model.generate(**kwargs)` all build it, and the backend's sampler reads it. What shapes
the output beyond sampling (response_format, tools) is part of the GenerationRequest, checked when
it is built, and turned into a grammar by `Model.prepare`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.errors import ChatTemplateError, SamplingError
from runtime.generation.logprobs import MAX_TOP_LOGPROBS, TokenLogprob
from runtime.structured.constraint import (
    NO_CONSTRAINT,
    Constraint,
    ResponseFormat,
    check_grammar_text,
    parse_response_format,
)
from runtime.structured.harmony import HarmonyTokens
from runtime.structured.tools import (
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    ToolSpec,
    parse_tool_choice,
    parse_tools,
)

# Valid ranges, shared with the HTTP schema so both refuse the same values.
MIN_MAX_TOKENS = 1
MAX_TEMPERATURE = 2.0  # OpenAI's upper bound
MAX_N = 128  # choices per request in Python; the server's `max_n` setting is lower
MAX_LOGIT_BIAS = 100.0  # OpenAI's range is [-100, 100]
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
class Choice:
    """One finished answer of a request (a request with `n` > 1 has n of them).

    text: the content, tool-call markup taken out; finish_reason "stop", "length", "tool_calls"
    or "cancelled"; logprobs: one entry per generated token when asked for."""

    index: int
    text: str
    tokens: tuple[int, ...]
    finish_reason: str
    logprobs: tuple[TokenLogprob, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""  # the model's reasoning apart from its answer (harmony's analysis)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" | "length" | "tool_calls" | "cancelled"
    usage: Usage
    timings: dict[str, float] = field(default_factory=dict)
    choices: tuple[Choice, ...] = ()  # every choice; text/tokens/finish_reason are choice 0's

    @property
    def tool_calls(self) -> tuple[ToolCall, ...]:
        return self.choices[0].tool_calls if self.choices else ()

    @property
    def reasoning(self) -> str:
        """Choice 0's reasoning, apart from its text (gpt-oss's analysis channel)."""
        return self.choices[0].reasoning if self.choices else ""

    @property
    def logprobs(self) -> tuple[TokenLogprob, ...] | None:
        return self.choices[0].logprobs if self.choices else None


@dataclass(frozen=True)
class StreamEvent:
    """A piece of text (and the token that completed it) of choice `index`; the last event of a
    generation also carries why it finished, usage, timings and every generated token (some
    tokens complete no text of their own: part of a UTF-8 character, or held back as a possible
    stop string).

    logprobs: the tokens this event covers, when asked for; tool_calls: pieces of calls being
    written (their text is never in `text`); reasoning: a piece of the model's reasoning (a
    harmony chat's analysis channel); choice: set on the event that ends a choice (with
    n > 1 several events do, and only the last event has `finish_reason`); choices: every
    choice, on the last event."""

    text: str
    token: int | None
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: dict[str, float] | None = None
    tokens: tuple[int, ...] | None = None
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCallDelta, ...] = ()
    choice: Choice | None = None
    choices: tuple[Choice, ...] = ()
    reasoning: str = ""  # a piece of reasoning (never in `text`)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one generation; validated when built, so every instance is usable.

    max_tokens None (the default) means DEFAULT_MAX_TOKENS, or fewer when the context window
    ends first: a default never makes a prompt too long, while an explicit max_tokens that does
    not fit is refused. temperature 0 is greedy (the default: a device answer should be
    reproducible unless asked otherwise). top_k 0 is off. seed None draws a fresh one. `stop`
    also accepts one string or a list and is stored as a tuple; the generated text ends before
    the first stop string.

    n: independent answers to one prompt; the prompt is computed once and choice i samples with
    `choice_seed(seed, i)`. logprobs: None for none, else report each token's log-probability
    and this many most likely alternatives (0..20). logit_bias: {token id: bias in [-100, 100]}
    added to the logits (stored as sorted pairs). grammar: GBNF the output must match (set by
    `Model.prepare` from response_format/tools, or given raw).
    """

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    logprobs: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None

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
        if not _is_int(self.n) or not 1 <= self.n <= MAX_N:
            raise bad("n", f"an integer in 1..{MAX_N}", self.n)
        if self.logprobs is not None and (
            not _is_int(self.logprobs) or not 0 <= self.logprobs <= MAX_TOP_LOGPROBS
        ):
            raise bad("logprobs", f"None or an integer in 0..{MAX_TOP_LOGPROBS}", self.logprobs)
        object.__setattr__(self, "logit_bias", _bias_pairs(self.logit_bias, bad))
        object.__setattr__(self, "grammar", check_grammar_text(self.grammar))


def _bias_pairs(value: Any, bad: Any) -> tuple[tuple[int, float], ...]:
    """{token: bias} or pairs -> sorted (token, bias) pairs, each checked."""
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = sorted((int(t) if isinstance(t, str) and t.isdigit() else t, b) for t, b in items)
    except (TypeError, ValueError):
        raise bad("logit_bias", "a map of token ids to numbers", value) from None
    for t, b in pairs:
        if not _is_int(t) or t < 0:
            raise bad("logit_bias", "keyed by token ids (integers >= 0)", t)
        if not _is_real(b) or not -MAX_LOGIT_BIAS <= b <= MAX_LOGIT_BIAS:
            raise bad("logit_bias", f"values in [-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]", b)
    return tuple((int(t), float(b)) for t, b in pairs)


def choice_seed(seed: int, index: int) -> int:
    """The seed of choice `index` of a request with `seed`: choice 0 uses the seed itself (so n=1
    is unchanged), the others a 32-bit mix of both, so choices differ and never repeat another
    seed's first choice by construction of a simple offset."""
    if index == 0:
        return seed
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    x = (x * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 29)) & 0xFFFFFFFF


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


DEFAULT_SAMPLING = SamplingParams()

Message = Mapping[str, Any]


@dataclass(frozen=True)
class GenerationRequest:
    """What a caller asks for: a plain prompt or chat messages (exactly one), how to sample, and
    what shape the answer must have.

    `Model.prepare` turns it into a PreparedRequest; messages are checked when the bundle's chat
    template renders them, so a bad role is a ChatTemplateError naming the message.
    response_format (OpenAI's object), tools (OpenAI's list) and tool_choice are checked here,
    so an unsupported schema keyword fails at once; they are stored checked (ResponseFormat,
    ToolSpec, ToolChoice). tools apply to chat messages only.
    """

    prompt: str | None = None
    messages: Sequence[Message] | None = None  # stored as a tuple
    params: SamplingParams = field(default_factory=SamplingParams)
    response_format: ResponseFormat | Mapping[str, Any] | None = None
    tools: Sequence[ToolSpec | Mapping[str, Any]] = ()
    tool_choice: ToolChoice | str | Mapping[str, Any] | None = None
    parallel_tool_calls: bool = True

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise TypeError("a GenerationRequest needs exactly one of prompt or messages")
        if self.messages is not None:
            if isinstance(self.messages, str | bytes | Mapping):
                raise ChatTemplateError("messages must be a list of {role, content} objects")
            object.__setattr__(self, "messages", tuple(self.messages))
        object.__setattr__(self, "response_format", parse_response_format(self.response_format))
        tools = parse_tools(self.tools or ())
        if tools and self.messages is None:
            raise SamplingError("tools need chat messages; a plain prompt cannot call tools")
        object.__setattr__(self, "tools", tools)
        object.__setattr__(self, "tool_choice", parse_tool_choice(self.tool_choice, tools))
        if not isinstance(self.parallel_tool_calls, bool):
            raise SamplingError("parallel_tool_calls must be a boolean")


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
    constraint: Constraint = NO_CONSTRAINT  # the grammar's plan (params.grammar is its start)
    # Set for a chat in gpt-oss's harmony format: its reader splits answer, reasoning, calls.
    harmony: HarmonyTokens | None = None

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
