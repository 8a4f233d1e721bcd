"""The HTTP routes: OpenAI-compatible /v1 endpoints plus /health and /metrics.

Routes only translate. A wire request becomes a GenerationRequest (its SamplingParams built by the
schema), `Model.prepare` renders, tokenizes and checks it once before it may queue (so bad input
is a 400 at once), the engine runs the PreparedRequest, and runtime events become the response
models of `schemas.py`. Errors are raised and mapped in `errors.py`.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive

from runtime.generation import GenerationRequest, StreamEvent, Usage
from runtime.server.engine import Engine, EngineStoppedError, Job
from runtime.server.errors import APIError, from_exception
from runtime.server.metrics import CONTENT_TYPE
from runtime.server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    UsageInfo,
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


# --- response shapes -----------------------------------------------------------------------------
class _Answer:
    """One request's answer as response models: the whole response, or its stream chunks.

    Chunks carry `usage` (null until the usage chunk) only when the client asked for it, as
    OpenAI does; every chunk of one answer shares its id and creation time.
    """

    prompt_param = "prompt"
    id_prefix = "cmpl"

    def __init__(self, model_id: str, include_usage: bool) -> None:
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model_id
        self.include_usage = include_usage

    def sse(self, chunk: BaseModel) -> str:
        exclude = None if self.include_usage else {"usage"}
        return f"data: {json_body(chunk, exclude=exclude)}\n\n"

    def head(self) -> str | None:
        """The chunk sent before the first token, if any."""
        return None

    def text_chunk(self, text: str) -> str:
        raise NotImplementedError

    def finish_chunk(self, reason: str) -> str:
        raise NotImplementedError

    def usage_chunk(self, usage: Usage | None) -> str:
        raise NotImplementedError

    def full(self, text: str, reason: str, usage: Usage | None) -> BaseModel:
        raise NotImplementedError


class _ChatAnswer(_Answer):
    prompt_param = "messages"
    id_prefix = "chatcmpl"

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
        return self.sse(ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices,
            usage=UsageInfo.of(usage) if usage is not None else None,
        ))

    def head(self) -> str | None:
        return self._chunk([ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))])

    def text_chunk(self, text: str) -> str:
        return self._chunk([ChatChunkChoice(delta=ChatDelta(content=text))])

    def finish_chunk(self, reason: str) -> str:
        return self._chunk([ChatChunkChoice(delta=ChatDelta(), finish_reason=reason)])

    def usage_chunk(self, usage: Usage | None) -> str:
        return self.sse(ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                            choices=[], usage=UsageInfo.of(usage)))

    def full(self, text: str, reason: str, usage: Usage | None) -> ChatCompletion:
        return ChatCompletion(
            id=self.id, created=self.created, model=self.model,
            choices=[ChatChoice(message=AssistantMessage(content=text), finish_reason=reason)],
            usage=UsageInfo.of(usage),
        )


class _CompletionAnswer(_Answer):
    def __init__(self, model_id: str, include_usage: bool, echo: str) -> None:
        super().__init__(model_id, include_usage)
        self.echo = echo

    def _chunk(self, text: str, reason: str | None = None) -> str:
        return self.sse(Completion(
            id=self.id, created=self.created, model=self.model,
            choices=[CompletionChoice(text=text, finish_reason=reason)],
        ))

    def head(self) -> str | None:
        return self.text_chunk(self.echo) if self.echo else None

    def text_chunk(self, text: str) -> str:
        return self._chunk(text)

    def finish_chunk(self, reason: str) -> str:
        return self._chunk("", reason)

    def usage_chunk(self, usage: Usage | None) -> str:
        return self.sse(Completion(id=self.id, created=self.created, model=self.model,
                                   choices=[], usage=UsageInfo.of(usage)))

    def full(self, text: str, reason: str, usage: Usage | None) -> Completion:
        return Completion(
            id=self.id, created=self.created, model=self.model,
            choices=[CompletionChoice(text=self.echo + text, finish_reason=reason)],
            usage=UsageInfo.of(usage),
        )


# --- generation endpoints ------------------------------------------------------------------------
@router.post(
    "/v1/chat/completions", response_model=ChatCompletion,
    responses={200: _STREAM_DOC, **_ERRORS},
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    st = _state(request)
    engine = st.ready()
    st.check_model(body.model)
    assert st.model_id is not None
    generation = GenerationRequest(messages=body.message_dicts(), params=body.sampling_params())
    answer = _ChatAnswer(st.model_id, body.include_usage)
    return await _answer(request, st, engine, generation, body.stream, answer)


@router.post(
    "/v1/completions", response_model=Completion, responses={200: _STREAM_DOC, **_ERRORS},
)
async def completions(body: CompletionRequest, request: Request) -> Response:
    st = _state(request)
    engine = st.ready()
    st.check_model(body.model)
    assert st.model_id is not None
    prompt = body.prompt_text()
    generation = GenerationRequest(prompt=prompt, params=body.sampling_params())
    answer = _CompletionAnswer(st.model_id, body.include_usage, prompt if body.echo else "")
    return await _answer(request, st, engine, generation, body.stream, answer)


async def _cancel_on_disconnect(receive: Receive, job: Job, engine: Engine) -> None:
    """The body is already read, so the next message is the client leaving: stop the work."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            engine.discard(job)
            return


async def _answer(
    request: Request, st: ServerState, engine: Engine, generation: GenerationRequest,
    stream: bool, answer: _Answer,
) -> Response:
    # Bad input (template, context window) fails here, before it may take a queue slot.
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
        parts, ev = [first.text], first
        while ev.finish_reason is None:
            ev = await job.next()
            parts.append(ev.text)
    finally:
        watcher.cancel()
        job.close()
    if ev.finish_reason == "cancelled":
        raise _cancelled(engine)
    return _respond(answer.full("".join(parts), ev.finish_reason, ev.usage))


def _cancelled(engine: Engine) -> Exception:
    if engine.stopped:
        return EngineStoppedError("the server is shutting down; the generation was cancelled")
    # Only a client that has gone away cancels otherwise; nobody reads this answer.
    return APIError(499, "client closed the request", code="client_closed_request")


async def _chunks(
    job: Job, ev: StreamEvent, answer: _Answer, watcher: asyncio.Task[None], engine: Engine,
) -> AsyncIterator[str]:
    try:
        head = answer.head()
        if head:
            yield head
        while True:
            if ev.text:
                yield answer.text_chunk(ev.text)
            if ev.finish_reason is not None:
                break
            ev = await job.next()
        if ev.finish_reason == "cancelled":
            yield from_exception(_cancelled(engine), answer.prompt_param).sse()
            return
        yield answer.finish_chunk(ev.finish_reason)
        if answer.include_usage:
            yield answer.usage_chunk(ev.usage)
        yield _DONE
    except Exception as e:  # after the 200 went out, errors travel as an SSE error event
        yield from_exception(e, answer.prompt_param).sse()
    finally:
        watcher.cancel()
        job.close()
