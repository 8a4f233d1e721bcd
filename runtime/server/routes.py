"""The HTTP routes: OpenAI-compatible /v1 endpoints, llama.cpp server's /tokenize and
/detokenize, plus /health and /metrics.

Routes only translate. A wire request becomes a GenerationRequest (its SamplingParams built by the
schema, response_format and tools passed as given), `Model.prepare` renders, tokenizes and builds
the grammar once before it may queue (so bad input is a 400 at once), the engine runs the
PreparedRequest, and runtime events become response models (`answers.py`). Errors are raised and
mapped in `errors.py`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive

from runtime.generation.request import GenerationRequest, StreamEvent
from runtime.server.answers import Answer, ChatAnswer, CompletionAnswer, final_choices
from runtime.server.engine import Engine, EngineStoppedError, Job
from runtime.server.errors import APIError, from_exception
from runtime.server.metrics import CONTENT_TYPE
from runtime.server.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
    TokenPiece,
    json_body,
)
from runtime.server.state import ServerState

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Invalid request"), (401, "Missing or wrong API key"), (404, "Unknown model"),
        (413, "Body too large"), (429, "Queue full; see Retry-After"),
        (503, "Model loading or server stopping"), (504, "Request timed out"),
    )
}
_STREAM_DOC: dict[str, Any] = {
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
    "description": "The completion; with stream=true, server-sent chunks ending in [DONE].",
}
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = "data: [DONE]\n\n"


def _state(request: Request) -> ServerState:
    return request.app.state.edgemoe


def _respond(body: BaseModel, status_code: int = 200, *, drop_none: bool = False) -> Response:
    return Response(json_body(body, drop_none=drop_none), status_code=status_code,
                    media_type="application/json")


# --- health, models, metrics ---------------------------------------------------------------------
@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request) -> Response:
    st = _state(request)
    if st.stopping:
        answer, status = Health(status="stopping"), 503
    elif st.engine is None and st.load_error is not None:
        answer, status = Health(status="error", message=str(st.load_error)), 503
    elif st.engine is None:
        answer, status = Health(status="loading"), 503
    else:
        answer, status = Health(status="ok", model=st.model_id), 200
    return _respond(answer, status, drop_none=True)


def _card(st: ServerState) -> ModelCard:
    assert st.model is not None and st.model_id is not None
    return ModelCard(id=st.model_id, created=st.created, context_length=st.model.n_ctx)


@router.get("/v1/models", response_model=ModelList, responses=_ERRORS)
async def list_models(request: Request) -> Response:
    st = _state(request)
    st.ready()
    return _respond(ModelList(data=[_card(st)]))


@router.get("/v1/models/{model_id}", response_model=ModelCard, responses=_ERRORS)
async def get_model(model_id: str, request: Request) -> Response:
    st = _state(request)
    st.ready()
    st.check_model(model_id)
    return _respond(_card(st))


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> Response:
    # A plain def: FastAPI runs it on a worker thread, as Model.stats() reads /proc.
    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE)


# --- generation endpoints ------------------------------------------------------------------------
def _admit(request: Request, body: ChatCompletionRequest | CompletionRequest
           ) -> tuple[ServerState, Engine, str]:
    """(state, engine, the model id answers carry) for a generation request: the model is
    ready, the request names it (or none), and `n` is within --max-n."""
    st = _state(request)
    engine = st.ready()
    st.check_model(body.model)
    if body.n is not None and body.n > st.settings.max_n:
        raise APIError(400, f"Invalid value for 'n': at most {st.settings.max_n} choices per "
                            "request on this server (--max-n).", param="n",
                       code="invalid_value")
    assert st.model_id is not None
    return st, engine, st.model_id


@router.post(
    "/v1/chat/completions", response_model=ChatCompletion,
    responses={200: _STREAM_DOC, **_ERRORS},
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    st, engine, model_id = _admit(request, body)
    generation = GenerationRequest(
        messages=body.message_dicts(), params=body.sampling_params(),
        response_format=body.response_format_dict(), tools=body.tool_dicts(),
        tool_choice=body.tool_choice_value(),
        parallel_tool_calls=body.parallel_tool_calls is not False,
    )
    answer = ChatAnswer(model_id, body.include_usage, bool(body.logprobs))
    return await _answer(request, st, engine, generation, body.stream, answer)


@router.post(
    "/v1/completions", response_model=Completion, responses={200: _STREAM_DOC, **_ERRORS},
)
async def completions(body: CompletionRequest, request: Request) -> Response:
    st, engine, model_id = _admit(request, body)
    prompt = body.prompt_text()
    generation = GenerationRequest(prompt=prompt, params=body.sampling_params(),
                                   response_format=body.response_format_dict())
    answer = CompletionAnswer(model_id, body.include_usage, body.logprobs is not None,
                              prompt if body.echo else "")
    return await _answer(request, st, engine, generation, body.stream, answer)


# --- llama.cpp server extensions ---------------------------------------------------------------
@router.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    """The ids a prompt of this text gets (llama.cpp server's /tokenize)."""
    with _state(request).ready().borrowed() as model:
        ids = await run_in_threadpool(model.tokenize, body.content)
        if not body.with_pieces:
            return _respond(TokenizeResponse(tokens=ids))
        pieces = await run_in_threadpool(lambda: [model.token_piece(t) for t in ids])
    return _respond(TokenizeResponse(tokens=[TokenPiece(id=t, piece=_piece(b))
                                             for t, b in zip(ids, pieces, strict=True)]))


def _piece(data: bytes) -> str | list[int]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)


@router.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
    """The text of token ids (llama.cpp server's /detokenize)."""
    with _state(request).ready().borrowed() as model:
        text = await run_in_threadpool(model.detokenize, body.tokens)
    return _respond(DetokenizeResponse(content=text))


async def _cancel_on_disconnect(receive: Receive, job: Job, engine: Engine) -> None:
    """The body is already read, so the next message is the client leaving: stop the work."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            engine.discard(job)
            return


async def _answer(
    request: Request, st: ServerState, engine: Engine, generation: GenerationRequest,
    stream: bool, answer: Answer,
) -> Response:
    # Bad input (template, context window, grammar) fails here, before it may take a queue slot.
    prepared = await st.prepare(engine, generation)
    job = engine.submit(prepared, st.settings.request_timeout_s, stream=stream)
    watcher = asyncio.create_task(_cancel_on_disconnect(request.receive, job, engine))
    try:
        # Wait for the first event before answering, so a request that times out in the queue
        # or meets a shutdown still gets a plain error status rather than a stream that fails.
        first = await job.next()
    except BaseException:
        watcher.cancel()
        job.close()
        raise
    if stream:
        return StreamingResponse(_chunks(job, first, answer, watcher, engine),
                                 media_type="text/event-stream", headers=_SSE_HEADERS)
    try:
        ev = first
        while ev.finish_reason is None:
            ev = await job.next()
    finally:
        watcher.cancel()
        job.close()
    if ev.finish_reason == "cancelled":
        raise _cancelled(engine)
    return _respond(answer.full(final_choices(ev), ev.usage))


def _cancelled(engine: Engine) -> Exception:
    if engine.stopped:
        return EngineStoppedError("the server is shutting down; the generation was cancelled")
    # Only a client that has gone away cancels otherwise; nobody reads this answer.
    return APIError(499, "client closed the request", code="client_closed_request")


async def _chunks(
    job: Job, ev: StreamEvent, answer: Answer, watcher: asyncio.Task[None], engine: Engine,
) -> AsyncIterator[str]:
    try:
        while True:
            for chunk in answer.chunks(ev):
                yield chunk
            if ev.finish_reason is not None:
                break
            ev = await job.next()
        if ev.finish_reason == "cancelled":
            yield from_exception(_cancelled(engine), answer.prompt_param).sse()
        elif answer.include_usage:
            yield answer.usage_chunk(ev.usage)
        yield _DONE
    except Exception as e:  # after the 200 went out, errors travel as an SSE error event
        yield from_exception(e, answer.prompt_param).sse()
        yield _DONE  # every stream ends explicitly, an error one too
    finally:
        watcher.cancel()
        job.close()
