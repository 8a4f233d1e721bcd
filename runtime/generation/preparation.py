"""A request made ready to run, once: chat template, tokens, context check, grammar, seed.

Every generation goes through `prepare_request` before it runs (or waits in a server's queue),
so a request that cannot run fails early (ChatTemplateError, PromptTooLongError, or a
SamplingError for a grammar that cannot run on this vocabulary), and the engine never tokenizes
again. Rendering is pure, and tokenizing and compiling a grammar only read the vocabulary, so
this is safe while another thread generates on the same engine.
"""

from __future__ import annotations

from dataclasses import replace

from runtime.backends.base import Backend
from runtime.backends.sampling import fresh_seed
from runtime.errors import PromptTooLongError, SamplingError
from runtime.generation.request import (
    DEFAULT_MAX_TOKENS,
    GenerationRequest,
    PreparedRequest,
    SamplingParams,
)
from runtime.structured.constraint import build_constraint, check_constraint


def prepare_request(
    engine: Backend, chat_template: str | None, n_ctx: int, request: GenerationRequest
) -> PreparedRequest:
    """`request` rendered, tokenized and checked against `engine` and an `n_ctx` window."""
    if request.messages is not None:
        from runtime.generation.chat_template import render_chat

        prompt = render_chat(chat_template, request.messages, tools=request.tools,
                             tool_choice=request.tool_choice)  # type: ignore[arg-type]
    else:
        assert request.prompt is not None  # GenerationRequest holds exactly one
        prompt = request.prompt
    ids = engine.tokenize(prompt) or [engine.eos_token()]
    params = _fit_context(request.params, len(ids), n_ctx)
    if params.seed is None:  # resolved here, once: every loop and sampler then uses it
        params = replace(params, seed=fresh_seed())
    for token, _ in params.logit_bias:
        if token >= engine.n_vocab:
            raise SamplingError(f"logit_bias names token {token}, outside the vocabulary of "
                                f"{engine.n_vocab} tokens")
    constraint = build_constraint(
        request.response_format,  # type: ignore[arg-type]  # checked by GenerationRequest
        params.grammar,
        request.tools,  # type: ignore[arg-type]
        request.tool_choice,  # type: ignore[arg-type]
        request.parallel_tool_calls,
    )
    if constraint.active:
        check_constraint(engine, constraint)
    return PreparedRequest(prompt, tuple(ids), params, constraint)


def _fit_context(params: SamplingParams, n_prompt: int, n_ctx: int) -> SamplingParams:
    """max_tokens checked against the room the prompt leaves; unset, as much as fits, up to
    DEFAULT_MAX_TOKENS."""
    room = n_ctx - n_prompt
    if params.max_tokens is None:
        if room < 1:
            raise PromptTooLongError(n_prompt, n_ctx)
        return replace(params, max_tokens=min(DEFAULT_MAX_TOKENS, room))
    if params.max_tokens > room:
        raise PromptTooLongError(n_prompt, n_ctx, params.max_tokens)
    return params
