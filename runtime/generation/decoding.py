"""The decoding loop of one prepared request: its prompt computed once, then each of its `n`
choices token by token, as StreamEvents.

Choice 0 samples from the prompt's logits right after prefill. Every further choice truncates the
KV cache back to the prompt (`Backend.truncate`; a model with recurrent layers recomputes the
prompt instead, runtime/recurrent.py) and samples its first token from the same saved logits,
so choice i of a request is exactly what a request with n=1 and seed `choice_seed(seed, i)`
would answer. Per token: logit_bias is added, log-probs are read (before any grammar or
temperature, as OpenAI reports them), and the sampler picks; a constrained choice picks through
its `OutputTracker` (`runtime.structured`: the library's mask, then the sampler, steered to a
valid end near max_tokens), which also splits content from tool calls and ends the choice once
its grammar is complete.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from runtime.generation.logprobs import TokenLogprob, token_logprob
from runtime.generation.request import (
    Choice,
    PreparedRequest,
    StreamEvent,
    TextAssembler,
    Usage,
    choice_seed,
)
from runtime.structured.constraint import OutputTracker
from runtime.structured.tools import ToolCall

if TYPE_CHECKING:
    from runtime.api import Model


@dataclass
class _Clock:
    t0: float
    ttft: float | None = None
    tokens: int = 0

    def token(self) -> None:
        self.tokens += 1
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.t0


@dataclass
class _End:
    """How a choice ended: its last piece of text (held back until the end), the log-probs not
    yet sent, and the Choice itself."""

    text: str
    logprobs: tuple[TokenLogprob, ...]
    choice: Choice


def run(model: Model, prepared: PreparedRequest, cancel: threading.Event | None
        ) -> Iterator[StreamEvent]:
    """Every StreamEvent of `prepared`; the last one carries finish_reason, usage, timings and
    all choices."""
    engine, params = model.engine, prepared.params
    prompt_ids = list(prepared.prompt_ids)
    engine.reset()
    t0 = time.perf_counter()
    prompt_logits = model._decode(prompt_ids)
    t_prefill = time.perf_counter() - t0
    bias = model.logit_bias_vector(params.logit_bias, prompt_logits.size)
    seed = params.seed if params.seed is not None else int.from_bytes(os.urandom(4), "little")
    clock, t1 = _Clock(t0), time.perf_counter()
    ends: list[_End] = []
    for index in range(params.n):
        if index:
            _rewind(model, prompt_ids)
        steps = _choice(model, prepared, index, choice_seed(seed, index), prompt_logits, bias,
                        cancel, clock)
        end = yield from steps
        ends.append(end)
        cancelled = end.choice.finish_reason == "cancelled"
        if index + 1 < params.n and not cancelled:
            yield StreamEvent(end.text, None, index=index, logprobs=end.logprobs,
                              choice=end.choice)
        else:
            break
    t_decode = time.perf_counter() - t1
    timings = {
        "prefill_s": t_prefill,
        "decode_s": t_decode,
        "ttft_s": clock.ttft if clock.ttft is not None else t_prefill,
        "prefill_tok_s": len(prompt_ids) / t_prefill if t_prefill > 0 else 0.0,
        "decode_tok_s": clock.tokens / t_decode if t_decode > 0 and clock.tokens else 0.0,
    }
    model._timings = timings
    last = ends[-1]
    usage = Usage(len(prompt_ids), sum(len(e.choice.tokens) for e in ends))
    yield StreamEvent(last.text, None, last.choice.finish_reason, usage, timings,
                      ends[0].choice.tokens, index=last.choice.index, logprobs=last.logprobs,
                      choice=last.choice, choices=tuple(e.choice for e in ends))


def _rewind(model: Model, prompt_ids: list[int]) -> None:
    """Back to the end of the prompt for another choice: truncate a KV cache; recompute the
    prompt where the engine keeps recurrent state (it cannot be truncated that far back)."""
    engine = model.engine
    if getattr(engine, "recurrent", False):
        engine.reset()
        model._decode(prompt_ids)
    else:
        engine.truncate(len(prompt_ids))


def _choice(
    model: Model,
    prepared: PreparedRequest,
    index: int,
    seed: int,
    logits: np.ndarray,
    bias: np.ndarray | None,
    cancel: threading.Event | None,
    clock: _Clock,
) -> Iterator[StreamEvent]:
    """One choice's events (all but its last piece, which the caller sends as the choice's end);
    returns the _End."""
    engine, params, max_tokens = model.engine, prepared.params, prepared.max_tokens
    sampler = engine.sampler(replace(params, seed=seed))
    tracker = OutputTracker(prepared.constraint, engine, max_tokens) \
        if prepared.constraint.active else None
    text = TextAssembler(prepared.stop)
    want_lp = params.logprobs is not None
    out: list[int] = []
    all_lp: list[TokenLogprob] = []
    pending: list[TokenLogprob] = []
    emitted: list[str] = []
    finish = "length"
    try:
        for step in range(max_tokens):
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            x = logits if bias is None else logits + bias
            picked = sampler.sample(x) if tracker is None else \
                tracker.pick(x, sampler.sample, max_tokens - step)
            if picked is None:  # the grammar allows no token of this vocabulary here
                break
            tok = picked
            if engine.is_eog(tok):
                finish = "stop"
                break
            out.append(tok)
            clock.token()
            if want_lp:
                assert params.logprobs is not None
                lp = token_logprob(x, tok, params.logprobs, engine.token_bytes)
                all_lp.append(lp)
                pending.append(lp)
            piece, deltas = text.feed(engine.token_bytes(tok)), []
            if tracker is not None and piece:
                piece, deltas = tracker.feed(piece, max_tokens - step - 1)
            if piece or deltas:
                emitted.append(piece)
                yield StreamEvent(piece, tok, index=index, logprobs=tuple(pending),
                                  tool_calls=tuple(deltas))
                pending = []
            if text.stopped or (tracker is not None and tracker.done):
                finish = "stop"
                break
            if step + 1 < max_tokens:
                logits = model._decode([tok])
    finally:
        sampler.close()
    tail = text.flush()
    calls: tuple[ToolCall, ...] = ()
    if tracker is None or tracker.reader is None:
        content = "".join(emitted) + tail
    else:  # the reader decides what is content (it may hold back a possible call opening)
        if tail:
            tracker.feed(tail, 0)
        content, calls = tracker.finish()
        tail = content[len("".join(emitted)):]
    if calls and finish == "stop":
        finish = "tool_calls"
    choice = Choice(index, content, tuple(out), finish, tuple(all_lp) if want_lp else None, calls)
    return _End(tail, tuple(pending), choice)
