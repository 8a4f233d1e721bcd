"""The HTTP routes: OpenAI-compatible /v1 endpoints plus /health and /metrics.

Routes only translate: wire request -> `GenerationRequest` for the engine, runtime events ->
OpenAI responses or server-sent chunks. Errors are raised and mapped in `errors.py`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.types import Receive

from runtime.api import StreamEvent, Usage
from runtime.server.engine import Engine, EngineStoppedError, GenerationRequest, Job
from runtime.server.errors import APIError, from_exception
from runtime.server.schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    Completion,
    CompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
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


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


# --- health, models, metrics ---------------------------------------------------------------------
@router.get("/health", response_model=Health, responses={503: {"model": Health}})
async def health(request: Request) -> JSONResponse:
    st = _state(request)
    if st.stopping:
        return JSONResponse({"status": "stopping"}, status_code=503)
    if st.engine is None:
        if st.load_error is not None:
            return JSONResponse({"status": "error", "message": str(st.load_error)}, 503)
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "ok", "model": st.model_id})


def _card(st: ServerState) -> dict[str, Any]:
    assert st.model is not None
    return {"id": st.model_id, "object": "model", "created": st.created, "owned_by": "edgemoe",
            "context_length": st.model.n_ctx}


@router.get("/v1/models", response_model=ModelList, responses=_ERRORS)
async def list_models(request: Request) -> JSONResponse:
    st = _state(request)
    st.ready()
    return JSONResponse({"object": "list", "data": [_card(st)]})


@router.get("/v1/models/{model_id}", response_model=ModelCard, responses=_ERRORS)
async def get_model(model_id: str, request: Request) -> JSONResponse:
    st = _state(request)
    st.ready()
    st.check_model(model_id)
    return JSONResponse(_card(st))


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    # A plain def: FastAPI runs it on a worker thread, as Model.stats() reads /proc.
    st = _state(request)
    eng = st.engine
    text = st.metrics.render(
        model_id=st.model_id,
        queue_depth=eng.queue_depth if eng else 0,
        queue_capacity=st.settings.max_queue,
        busy=eng.busy if eng else False,
        stats=eng.stats() if eng else None,
    )
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


# --- response shapes -----------------------------------------------------------------------------
def _usage(usage: Usage | None) -> dict[str, int]:
    if usage is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


class _Shape:
    """How one endpoint's answers look: full response and stream chunks."""

    prompt_param = "prompt"
    id_prefix = "cmpl"
    object = "text_completion"
    chunk_object = "text_completion"

    def __init__(self, model_id: str, include_usage: bool) -> None:
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model_id
        self.include_usage = include_usage

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": choices}

    def chunk(self, choice: dict[str, Any]) -> str:
        out = self._envelope(self.chunk_object, [choice])
        if self.include_usage:
            out["usage"] = None
        return f"data: {_json(out)}\n\n"

    def usage_chunk(self, usage: Usage | None) -> str:
        out = self._envelope(self.chunk_object, [])
        out["usage"] = _usage(usage)
        return f"data: {_json(out)}\n\n"

    # per endpoint
    def head(self) -> str | None:
        """The chunk sent before the first token, if any."""
        return None

    def text_chunk(self, text: str) -> str:
        raise NotImplementedError

    def finish_chunk(self, reason: str) -> str:
        raise NotImplementedError

    def full(self, text: str, reason: str, usage: Usage | None) -> dict[str, Any]:
        raise NotImplementedError


class _ChatShape(_Shape):
    prompt_param = "messages"
    id_prefix = "chatcmpl"
    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def head(self) -> str | None:
        return self.chunk({"index": 0, "delta": {"role": "assistant", "content": ""},
                           "logprobs": None, "finish_reason": None})

    def text_chunk(self, text: str) -> str:
        return self.chunk({"index": 0, "delta": {"content": text}, "logprobs": None,
                           "finish_reason": None})

    def finish_chunk(self, reason: str) -> str:
        return self.chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason})

    def full(self, text: str, reason: str, usage: Usage | None) -> dict[str, Any]:
        out = self._envelope(self.object, [{
            "index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
            "finish_reason": reason,
        }])
        out["usage"] = _usage(usage)
        return out


class _CompletionShape(_Shape):
    def __init__(self, model_id: str, include_usage: bool, echo: str) -> None:
        super().__init__(model_id, include_usage)
        self.echo = echo

    def head(self) -> str | None:
        return self.text_chunk(self.echo) if self.echo else None

    def text_chunk(self, text: str) -> str:
        return self.chunk({"index": 0, "text": text, "logprobs": None, "finish_reason": None})

    def finish_chunk(self, reason: str) -> str:
        return self.chunk({"index": 0, "text": "", "logprobs": None, "finish_reason": reason})

    def full(self, text: str, reason: str, usage: Usage | None) -> dict[str, Any]:
        out = self._envelope(self.object, [{
            "index": 0, "text": self.echo + text, "logprobs": None, "finish_reason": reason,
        }])
        out["usage"] = _usage(usage)
        return out


# --- generation endpoints ------------------------------------------------------------------------
@router.post(
    "/v1/chat/completions", response_model=ChatCompletion,
    responses={200: _STREAM_DOC, **_ERRORS},
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    st = _state(request)
    engine = st.ready()
    st.check_model(body.model)
    assert st.model is not None and st.model_id is not None
    try:
        prompt = st.model.apply_chat_template([m.model_dump(exclude_none=True)
                                               for m in body.messages])
    except ValueError as e:  # messages the bundle's template cannot render
        raise APIError(400, str(e), param="messages") from None
    gen = GenerationRequest(
        prompt=prompt, max_tokens=body.token_limit(), **_sampling(body),
    )
    shape = _ChatShape(st.model_id, body.include_usage)
    return await _answer(request, st, engine, gen, bool(body.stream), shape)


@router.post(
    "/v1/completions", response_model=Completion, responses={200: _STREAM_DOC, **_ERRORS},
)
async def completions(body: CompletionRequest, request: Request) -> Response:
    st = _state(request)
    engine = st.ready()
    st.check_model(body.model)
    assert st.model_id is not None
    prompt = body.prompt_text()
    gen = GenerationRequest(
        prompt=prompt, max_tokens=body.max_tokens if body.max_tokens is not None else 16,
        **_sampling(body),
    )
    shape = _CompletionShape(st.model_id, body.include_usage, prompt if body.echo else "")
    return await _answer(request, st, engine, gen, bool(body.stream), shape)


def _sampling(body: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    return {
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "top_k": body.top_k or 0,
        "seed": body.seed,
        "stop": body.stop_list(),
    }


async def _cancel_on_disconnect(receive: Receive, job: Job, engine: Engine) -> None:
    """The body is already read, so the next message is the client leaving: stop the work."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            engine.discard(job)
            return


async def _answer(
    request: Request, st: ServerState, engine: Engine, gen: GenerationRequest, stream: bool,
    shape: _Shape,
) -> Response:
    job = engine.submit(gen, st.settings.request_timeout_s, stream=stream)
    watcher = asyncio.create_task(_cancel_on_disconnect(request.receive, job, engine))
    try:
        # Wait for the first event before answering, so a prompt that is too long still gets
        # a plain 400 rather than a stream that fails.
        first = await job.next()
    except BaseException:
        watcher.cancel()
        job.close()
        raise
    if stream:
        return StreamingResponse(_chunks(job, first, shape, watcher, engine),
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
    return JSONResponse(shape.full("".join(parts), ev.finish_reason, ev.usage))


def _cancelled(engine: Engine) -> Exception:
    if engine.stopped:
        return EngineStoppedError("the server is shutting down; the generation was cancelled")
    # Only a client that has gone away cancels otherwise; nobody reads this answer.
    return APIError(499, "client closed the request", code="client_closed_request")


async def _chunks(
    job: Job, ev: StreamEvent, shape: _Shape, watcher: asyncio.Task[None], engine: Engine,
) -> AsyncIterator[str]:
    try:
        head = shape.head()
        if head:
            yield head
        while True:
            if ev.text:
                yield shape.text_chunk(ev.text)
            if ev.finish_reason is not None:
                break
            ev = await job.next()
        if ev.finish_reason == "cancelled":
            yield from_exception(_cancelled(engine), shape.prompt_param).sse()
            return
        yield shape.finish_chunk(ev.finish_reason)
        if shape.include_usage:
            yield shape.usage_chunk(ev.usage)
        yield _DONE
    except Exception as e:  # after the 200 went out, errors travel as an SSE error event
        yield from_exception(e, shape.prompt_param).sse()
    finally:
        watcher.cancel()
        job.close()
