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
from runtime.structured.constraint import ResponseFormat, build_constraint, check_constraint
from runtime.structured.harmony import HarmonyTokens, is_harmony
from runtime.structured.tools import ToolChoice


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
    harmony = _harmony(engine, chat_template, request, params)
    if harmony is not None:  # its own reader splits answer, reasoning and calls
        return PreparedRequest(prompt, tuple(ids), params, harmony=harmony)
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


def _harmony(engine: Backend, chat_template: str | None, request: GenerationRequest,
             params: SamplingParams) -> HarmonyTokens | None:
    """The harmony tokens when a chat is answered in gpt-oss's harmony format; a request whose
    output a grammar would shape is refused (a grammar would replace the channels)."""
    if request.messages is None or not is_harmony(chat_template):
        return None
    tokens = HarmonyTokens.find(lambda text: engine.tokenize(text, special=True))
    if tokens is None:
        return None
    choice = request.tool_choice
    mode = choice.mode if isinstance(choice, ToolChoice) else None
    fmt = request.response_format
    if params.grammar or (isinstance(fmt, ResponseFormat) and fmt.constrains) or \
            mode in ("required", "function"):
        what = "a grammar" if params.grammar else "response_format" if fmt and \
            isinstance(fmt, ResponseFormat) and fmt.constrains else f"tool_choice {mode!r}"
        raise SamplingError(f"{what} cannot be enforced on a harmony (gpt-oss) chat: a grammar "
                            "would replace its channels; use tool_choice 'auto' and the tools")
    return tokens


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
