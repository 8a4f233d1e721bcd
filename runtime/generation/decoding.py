"""The decoding loop: what plain and speculative decoding share, from a token picked to the
events a caller streams.

A loop takes tokens from a source (`Pick`s: a sampled token, or the tokens a verify step kept)
and writes one choice: end-of-generation and stop strings end it, text is assembled in whole
UTF-8 characters, log-probs and tool calls are split out, `max_tokens` and `cancel` are
honoured, and timings are kept the same way for every source. Every engine step goes through
the model's one paged decode step (`Decoder.step`: the pager keeps what it routes to resident).

Plain decoding (`run`): the prompt is computed once; choice 0 samples from its logits right
after prefill, and every further choice of an `n` request truncates the KV cache back to the
prompt (`Backend.truncate`; a model with recurrent layers recomputes the prompt instead,
runtime/recurrent.py) and samples its first token from the same saved logits, so choice i is
exactly what a request with n=1 and seed `choice_seed(seed, i)` would answer. Per token:
logit_bias is added, log-probs are read (before any grammar or temperature, as OpenAI reports
them), and the sampler picks; a constrained choice picks through its `OutputTracker`
(`runtime.structured`: the library's mask, then the sampler, steered to a valid end near
max_tokens), which also splits content from tool calls and ends the choice once its grammar is
complete.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from runtime.backends.base import Backend, Sampler
from runtime.generation.latency import LatencyRecorder
from runtime.generation.logprobs import TokenLogprob, token_logprob
from runtime.generation.request import (
    Choice,
    PreparedRequest,
    SamplingParams,
    StreamEvent,
    TextAssembler,
    Usage,
    choice_seed,
)
from runtime.structured.constraint import OutputTracker
from runtime.structured.harmony import HarmonyReader
from runtime.structured.tools import ToolCall


class Decoder(Protocol):
    """What the decode loops need of a loaded model (`runtime.api.Model` is the one)."""

    engine: Backend
    latency: LatencyRecorder

    def step(self, tokens: list[int], *, all_outputs: bool = False,
             timed: bool = True) -> np.ndarray:
        """One paged decode step: the last position's logits (every position's are then in
        `engine.last_logits` with all_outputs); timed: it counts in the latency histograms."""
        ...

    def logit_bias_vector(self, bias: tuple[tuple[int, float], ...],
                          n_vocab: int) -> np.ndarray | None: ...



@dataclass(frozen=True)
class Pick:
    """A token a source picked, and the logits it was picked from (for log-probs)."""

    token: int
    logits: np.ndarray | None = None


@dataclass
class Clock:
    """When a generation started and when its first token came."""

    t0: float
    ttft: float | None = None
    tokens: int = 0

    def token(self) -> None:
        self.tokens += 1
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.t0


@dataclass
class ChoiceEnd:
    """How a choice ended: its last piece of text (held back until the end), the log-probs not
    yet sent, and the Choice itself."""

    text: str
    logprobs: tuple[TokenLogprob, ...]
    choice: Choice


def write_choice(
    engine: Backend,
    prepared: PreparedRequest,
    index: int,
    picks: Iterator[Pick],
    cancel: threading.Event | None,
    clock: Clock,
    tracker: OutputTracker | None = None,
) -> Generator[StreamEvent, None, ChoiceEnd]:
    """One choice's events from its picks (all but its last piece, which the caller sends as
    the choice's end); returns the ChoiceEnd. A source is advanced only after its last pick was
    taken, so it never computes a token nobody will use; a source that ends early (a grammar
    that allows no token of this vocabulary) ends the choice at "length"."""
    params, max_tokens = prepared.params, prepared.max_tokens
    text = TextAssembler(prepared.stop)
    harmony = HarmonyReader(prepared.harmony, engine.token_bytes) if prepared.harmony else None
    want_lp = params.logprobs is not None
    out: list[int] = []
    all_lp: list[TokenLogprob] = []
    pending: list[TokenLogprob] = []
    emitted: list[str] = []
    finish = "length"
    for pick in picks:
        if cancel is not None and cancel.is_set():
            finish = "cancelled"
            break
        tok = pick.token
        said = harmony.feed(tok) if harmony is not None else None  # <|call|> ends a call
        if engine.is_eog(tok):
            finish = "stop"
            break
        out.append(tok)
        clock.token()
        if want_lp:
            assert params.logprobs is not None and pick.logits is not None
            lp = token_logprob(pick.logits, tok, params.logprobs, engine.token_bytes)
            all_lp.append(lp)
            pending.append(lp)
        reasoning = ""
        if said is not None:  # harmony: stop strings apply to the answer only
            piece, deltas = text.feed(said.content.encode()), list(said.tool_calls)
            reasoning = said.reasoning
        else:
            piece, deltas = text.feed(engine.token_bytes(tok)), []
        if tracker is not None and piece:
            piece, deltas = tracker.feed(piece, max_tokens - len(out))
        if piece or deltas or reasoning:
            emitted.append(piece)
            yield StreamEvent(piece, tok, index=index, logprobs=tuple(pending),
                              tool_calls=tuple(deltas), reasoning=reasoning)
            pending = []
        if text.stopped or (tracker is not None and tracker.done):
            finish = "stop"
            break
        if len(out) >= max_tokens:
            break
    tail = text.flush()
    calls: tuple[ToolCall, ...] = ()
    reasoning = ""
    if harmony is not None:
        content, reasoning, calls = harmony.finish()
        if text.stopped:  # the answer ends before its stop string
            content = "".join(emitted) + tail
        tail = content[len("".join(emitted)):]
    elif tracker is None or tracker.reader is None:
        content = "".join(emitted) + tail
    else:  # the reader decides what is content (it may hold back a possible call opening)
        if tail:
            tracker.feed(tail, 0)
        content, calls = tracker.finish()
        tail = content[len("".join(emitted)):]
    if calls and finish == "stop":
        finish = "tool_calls"
    choice = Choice(index, content, tuple(out), finish, tuple(all_lp) if want_lp else None, calls,
                    reasoning)
    return ChoiceEnd(tail, tuple(pending), choice)


def final_event(ends: list[ChoiceEnd], n_prompt: int, t_prefill: float, t1: float,
                clock: Clock) -> StreamEvent:
    """The last event of a generation: its last choice's end, usage, timings, every choice."""
    t_decode = time.perf_counter() - t1
    timings = {
        "prefill_s": t_prefill,
        "decode_s": t_decode,
        "ttft_s": clock.ttft if clock.ttft is not None else t_prefill,
        "prefill_tok_s": n_prompt / t_prefill if t_prefill > 0 else 0.0,
        "decode_tok_s": clock.tokens / t_decode if t_decode > 0 and clock.tokens else 0.0,
    }
    last = ends[-1]
    usage = Usage(n_prompt, sum(len(e.choice.tokens) for e in ends))
    return StreamEvent(last.text, None, last.choice.finish_reason, usage, timings,
                       ends[0].choice.tokens, index=last.choice.index, logprobs=last.logprobs,
                       choice=last.choice, choices=tuple(e.choice for e in ends))


# --- plain decoding ----------------------------------------------------------------------
def run(decoder: Decoder, prepared: PreparedRequest, cancel: threading.Event | None
        ) -> Iterator[StreamEvent]:
    """Every StreamEvent of `prepared`; the last one carries finish_reason, usage, timings and
    all choices."""
    engine, params = decoder.engine, prepared.params
    assert params.seed is not None, "a prepared request has its seed resolved"
    prompt_ids = list(prepared.prompt_ids)
    engine.reset()
    t0 = time.perf_counter()
    prompt_logits = decoder.step(prompt_ids)
    t_prefill = time.perf_counter() - t0
    bias = decoder.logit_bias_vector(params.logit_bias, prompt_logits.size)
    clock, t1 = Clock(t0), time.perf_counter()
    ends: list[ChoiceEnd] = []
    for index in range(params.n):
        if index:
            _rewind(decoder, prompt_ids)
        sampler = engine.sampler(replace(params, seed=choice_seed(params.seed, index)))
        tracker = OutputTracker(prepared.constraint, engine, prepared.max_tokens,
                                _whole_softmax(params)) if prepared.constraint.active else None
        try:
            picks = _sampled(decoder, sampler, prompt_logits, bias, tracker, prepared.max_tokens)
            end = yield from write_choice(engine, prepared, index, picks, cancel, clock, tracker)
        finally:
            sampler.close()
        ends.append(end)
        if index + 1 < params.n and end.choice.finish_reason != "cancelled":
            yield StreamEvent(end.text, None, index=index, logprobs=end.logprobs,
                              choice=end.choice)
        else:
            break
    yield final_event(ends, len(prompt_ids), t_prefill, t1, clock)


def _rewind(decoder: Decoder, prompt_ids: list[int]) -> None:
    """Back to the end of the prompt for another choice: truncate a KV cache; recompute the
    prompt where the engine keeps recurrent state (it cannot be truncated that far back)."""
    if decoder.engine.recurrent:
        decoder.engine.reset()
        decoder.step(prompt_ids, timed=False)
    else:
        decoder.engine.truncate(len(prompt_ids))


def _whole_softmax(params: SamplingParams) -> bool:
    """Whether the sampler is greedy or draws from the whole softmax (no top-k, no top-p), so
    a constrained choice may draw first and mask only on a refusal (runtime.structured.guide)."""
    return params.temperature <= 0 or (params.top_k == 0 and params.top_p >= 1.0)


def _sampled(decoder: Decoder, sampler: Sampler, logits: np.ndarray, bias: np.ndarray | None,
             tracker: OutputTracker | None, max_tokens: int) -> Iterator[Pick]:
    """Sample a token (through the tracker's mask when constrained), then compute it to get
    the next logits; ends when the grammar allows no token of this vocabulary."""
    for step in range(max_tokens):
        x = logits if bias is None else logits + bias
        token = sampler.sample(x) if tracker is None else \
            tracker.pick(x, sampler.sample, max_tokens - step)
        if token is None:
            return
        yield Pick(token, x)
        logits = decoder.step([token])
