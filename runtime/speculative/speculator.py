"""Speculative decoding: a drafter proposes K tokens, the target verifies them in one batch.

Each step feeds the target [last token, draft_1..draft_K] in ONE decode with every position's
logits, keeps the drafted tokens the acceptance rule (runtime/speculative/acceptance.py) accepts,
emits the target's correction (or bonus token), and truncates the target's KV cache past the first
rejection (`Backend.truncate`); a model drafter truncates its own on the next proposal. Greedy
output is token for token the target's alone; sampled output follows the target's
distribution. When it does not pay, runtime/speculative/switch.py turns drafting off.

Requests speculation cannot serve decode plainly through the Model's own path
(runtime/generation/decoding.py): `serves` accepts only requests without an output constraint whose
every sampling field beyond the plain ones (max_tokens, temperature, top_p, top_k, seed, stop) is at
its default; n > 1, logprobs, logit_bias, a grammar, and any field added later, decode plainly
until speculation learns them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import MISSING, Field, fields
from typing import Any

import numpy as np

from runtime.backends.sampling import sampling_distribution
from runtime.generation.decoding import Clock, Decoder, Pick, final_event, write_choice
from runtime.generation.request import (
    PreparedRequest,
    SamplingParams,
    StreamEvent,
)
from runtime.speculative.acceptance import Verdict, accept_greedy, accept_sampled
from runtime.speculative.drafting import EMPTY, Draft, Drafter
from runtime.speculative.switch import (
    DEFAULT_DRAFT_TOKENS,
    MAX_DRAFT_TOKENS,
    AutoSwitch,
    check_draft_tokens,
)

__all__ = ["DEFAULT_DRAFT_TOKENS", "MAX_DRAFT_TOKENS", "Speculator", "check_draft_tokens"]

# Fields of SamplingParams / PreparedRequest the speculative loop implements.
SERVED_PARAMS = frozenset({"max_tokens", "temperature", "top_p", "top_k", "seed", "stop"})
SERVED_REQUEST = frozenset({"prompt", "prompt_ids", "params", "constraint"})


def _at_default(obj: object, f: Field[Any]) -> bool:
    if f.default is not MISSING:
        return bool(getattr(obj, f.name) == f.default)
    if f.default_factory is not MISSING:
        return bool(getattr(obj, f.name) == f.default_factory())
    return False


class Speculator:
    """A Model's speculative decoding: its drafter, draft length, switch and counters."""

    def __init__(self, drafter: Drafter, k: int = DEFAULT_DRAFT_TOKENS) -> None:
        self.drafter = drafter
        self.k = check_draft_tokens(k)
        self.switch = AutoSwitch(self.k)
        self.drafted = 0  # tokens proposed and verified
        self.accepted = 0  # of which the target kept
        self.steps = 0  # verify steps that had a draft

    @property
    def auto(self) -> bool:
        """False keeps drafting on whatever it measures (to measure speculation itself)."""
        return self.switch.auto

    @auto.setter
    def auto(self, value: bool) -> None:
        self.switch.auto = value

    def serves(self, prepared: PreparedRequest) -> bool:
        """Whether the speculative loop implements everything this request asks for: plain
        sampling fields only (n, logprobs, logit_bias, a grammar or any later field at its
        default) and no output constraint."""
        if prepared.constraint.active:
            return False
        return all(
            f.name in SERVED_PARAMS or _at_default(prepared.params, f)
            for f in fields(prepared.params)
        ) and all(f.name in SERVED_REQUEST or _at_default(prepared, f) for f in fields(prepared))

    # --- one generation ------------------------------------------------------------------
    def run(
        self, model: Decoder, prepared: PreparedRequest, cancel: threading.Event | None
    ) -> Iterator[StreamEvent]:
        """The Model's generation with drafting: the one decoding loop, its tokens taken from
        verify steps; the same events, usage and timings.

        Latency: a verify step that emits m tokens in d seconds records m inter-token
        latencies of d / m (tokens arrive in bursts; the histogram shows the rate)."""
        engine, params = model.engine, prepared.params
        assert params.seed is not None, "a prepared request has its seed resolved"
        rng = np.random.default_rng(params.seed % 2**32)
        prompt = list(prepared.prompt_ids)
        engine.reset()
        t0 = time.perf_counter()
        self.drafter.start(prompt)
        rows = _verify(model, prompt, all_outputs=False)
        t_prefill = time.perf_counter() - t0
        first = _judge(EMPTY, rows, params, rng).token
        clock, t1 = Clock(t0), time.perf_counter()
        model.latency.ttft.observe(t1 - t0)
        picks = self._verified(model, prompt, first, prepared, rng)
        end = yield from write_choice(engine, prepared, 0, picks, cancel, clock)
        yield final_event([end], len(prompt), t_prefill, t1, clock)

    def _verified(self, model: Decoder, prompt: list[int], first: int,
                  prepared: PreparedRequest, rng: np.random.Generator) -> Iterator[Pick]:
        """The tokens the target keeps, a verify step's worth at a time (each taken before the
        next step runs, so `out` is what the loop has accepted)."""
        out = [first]
        yield Pick(first)
        while True:
            t = time.perf_counter()
            new = self._step(model, prompt, out, prepared, rng)
            gap = (time.perf_counter() - t) / len(new)
            for _ in new:
                model.latency.itl.observe(gap)
            for token in new:
                out.append(token)
                yield Pick(token)

    def _step(
        self,
        model: Decoder,
        prompt: list[int],
        out: list[int],
        prepared: PreparedRequest,
        rng: np.random.Generator,
    ) -> list[int]:
        """Draft, verify in one batch, roll back past the first rejection; the new tokens.

        On entry the target has seen prompt + out[:-1]; out[-1] is fed now, with the draft.
        """
        params, history = prepared.params, prompt + out
        room = prepared.max_tokens - len(out) - 1  # what the request may take beyond one token
        k = min(self.switch.draft_tokens(), room)
        t = time.perf_counter()
        draft = self.drafter.propose(history, k, params, rng) if k > 0 else EMPTY
        draft = Draft(draft.tokens[:k], draft.probs[:k] if draft.probs is not None else None)
        rows = _verify(model, [out[-1], *draft.tokens], all_outputs=bool(draft.tokens))
        verdict = _judge(draft, rows, params, rng)
        model.engine.truncate(len(history) + verdict.accepted)
        new = [*draft.tokens[: verdict.accepted], verdict.token]
        self.switch.record(len(draft.tokens), len(new), time.perf_counter() - t)
        if draft.tokens:
            self.steps += 1
            self.drafted += len(draft.tokens)
            self.accepted += verdict.accepted
        return new

    # --- introspection -------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        s = self.switch
        return {
            "draft_kind": self.drafter.kind,
            "draft_tokens": self.k,
            "speculation_auto": s.auto,
            "speculation_state": s.state.value,
            "speculation_active": int(s.draft_tokens() > 0),
            "speculation_switched_off": s.switched_off,
            "verify_steps": self.steps,
            "drafted_tokens": self.drafted,
            "accepted_tokens": self.accepted,
            "acceptance_rate": self.accepted / self.drafted if self.drafted else 0.0,
            "tokens_per_verify_step": (self.accepted + self.steps) / self.steps
            if self.steps else 0.0,
            "speculative_tok_s": s.spec_total.rate or 0.0,
            "plain_tok_s": s.plain_total.rate or 0.0,
            "speculative_speedup": s.speedup,
            **self.drafter.stats(),
        }

    def close(self) -> None:
        self.drafter.close()


def _judge(
    draft: Draft, rows: np.ndarray, params: SamplingParams, rng: np.random.Generator
) -> Verdict:
    """What the target keeps of `draft` given its logits rows (len(draft) + 1 of them)."""
    if params.temperature <= 0:
        return accept_greedy(draft.tokens, rows)
    target = [sampling_distribution(r, params) for r in rows]
    return accept_sampled(draft.tokens, draft.probs, target, rng)


def _verify(model: Decoder, tokens: list[int], *, all_outputs: bool) -> np.ndarray:
    """Feed the target through its paged decode step; every position's logits, or the last
    one's (a verify step's bursts are timed by `run`, not as single steps)."""
    last = model.step(tokens, all_outputs=all_outputs, timed=False)
    return model.engine.last_logits if all_outputs else last[None, :]
