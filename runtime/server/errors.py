"""Every error the server answers, in OpenAI's shape; domain exceptions become HTTP errors here.

`{"error": {"message", "type", "param", "code"}}` with the status OpenAI would use: bad input is
a 400 (never FastAPI's 422, never a 500), unknown model 404, auth 401, busy 429 + Retry-After,
a reload already running 409, shutting down, a model file changed under the server or damaged
weights (`model_corrupt`) 503.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from runtime.errors import (
    BudgetError,
    EdgemoeError,
    ModelCorruptError,
    PromptTooLongError,
    SamplingError,
)
from runtime.server.engine import EngineStoppedError, QueueFullError, RequestTimeoutError
from runtime.server.lease import ModelFileChangedError
from runtime.server.schemas import REQUEST_FIELDS, ErrorDetail, ErrorResponse, json_body

log = logging.getLogger("edgemoe.server")

INVALID_REQUEST = "invalid_request_error"
SERVER_ERROR = "server_error"


class APIError(Exception):
    """An error answer: status, OpenAI error fields and extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type, self.param, self.code = type, param, code
        self.headers = headers or {}

    def body(self) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(message=self.message, type=self.type, param=self.param,
                              code=self.code)
        )

    def response(self) -> Response:
        return Response(json_body(self.body()), status_code=self.status, headers=self.headers,
                        media_type="application/json")

    def sse(self) -> str:
        """The error as one server-sent event, for failures after a stream has started."""
        return f"data: {json_body(self.body())}\n\n"


# --- the errors the server itself raises -------------------------------------------------------
def model_not_found(name: str, served: tuple[str, ...]) -> APIError:
    known = ", ".join(f"'{n}'" for n in dict.fromkeys(served))
    return APIError(
        404, f"The model '{name}' does not exist; this server serves {served[0]!r} (answering "
        f"to {known}; omit 'model' to use it).", param="model", code="model_not_found",
    )


def not_ready(message: str) -> APIError:
    return APIError(503, message, type=SERVER_ERROR, code="model_not_ready",
                    headers={"Retry-After": "1"})


def reload_failed(message: str) -> APIError:
    """A reload that could not load the new bundle; the old model goes on serving."""
    return APIError(400, f"The reload failed and the previous model is still served: {message}",
                    param="bundle", code="reload_failed")


def reload_busy() -> APIError:
    return APIError(409, "Another reload is in progress (or the previous model is still "
                         "finishing its requests); retry shortly.", code="reload_in_progress",
                    headers={"Retry-After": "5"})


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than the limit of {limit} bytes.",
                    code="request_too_large")


def bad_api_key(missing: bool) -> APIError:
    message = (
        "You didn't provide an API key: send it as 'Authorization: Bearer <key>'."
        if missing else "Incorrect API key provided."
    )
    return APIError(401, message, code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"})


# --- mapping -----------------------------------------------------------------------------------
def from_exception(exc: BaseException, prompt_param: str = "prompt") -> APIError:
    """The API error for an exception raised while serving a request (domain, engine or bug)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptTooLongError):
        param = "max_tokens" if exc.max_tokens and exc.n_prompt < exc.n_ctx else prompt_param
        return APIError(400, str(exc), param=param, code="context_length_exceeded")
    if isinstance(exc, SamplingError):
        param = str(exc).split(" ", 1)[0] or None
        return APIError(400, str(exc), param=param, code="invalid_value")
    if isinstance(exc, BudgetError):  # POST /admin/budget
        return APIError(400, str(exc), param="budget", code="invalid_value")
    if isinstance(exc, EdgemoeError) and isinstance(exc, ValueError):  # e.g. chat template
        return APIError(400, str(exc), param=prompt_param)
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), type="rate_limit_error", code="rate_limit_exceeded",
                        headers={"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, RequestTimeoutError):
        return APIError(504, str(exc), type="timeout_error", code="timeout")
    if isinstance(exc, EngineStoppedError):
        return APIError(503, str(exc), type=SERVER_ERROR, code="shutting_down")
    if isinstance(exc, ModelCorruptError):  # no Retry-After: it needs a new bundle, not time
        return APIError(503, str(exc), type=SERVER_ERROR, code="model_corrupt")
    if isinstance(exc, ModelFileChangedError):
        return APIError(503, str(exc), type=SERVER_ERROR, code="model_file_changed",
                        headers={"Retry-After": "5"})
    if isinstance(exc, EdgemoeError):
        return APIError(500, str(exc), type=SERVER_ERROR)
    log.error("unexpected error while serving a request", exc_info=exc)
    return APIError(500, "The server had an error while processing your request.",
                    type=SERVER_ERROR)


def _prompt_param(request: Request) -> str:
    return "messages" if request.url.path.endswith("/chat/completions") else "prompt"


def _param_path(loc: tuple[Any, ...] | list[Any]) -> list[str]:
    """The request field a validation error is about: pydantic's location without "body" and
    without the union-member tags it adds ("str", "list[...]")."""
    out: list[str] = []
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int) or part in REQUEST_FIELDS:
            out.append(str(part))
        else:
            break
    return out


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    if not errors:
        return APIError(400, "Invalid request.")
    err = errors[0]
    loc = _param_path(err.get("loc", ()))
    param = ".".join(loc) or None
    kind = err.get("type", "")
    if kind == "json_invalid":
        detail = (err.get("ctx") or {}).get("error", "")
        return APIError(400, f"We could not parse the JSON body of your request ({detail}). "
                             "Send a JSON object with Content-Type: application/json.",
                        code="invalid_json")
    if not loc and kind == "missing":
        return APIError(400, "The request needs a JSON body.", code="invalid_json")
    if not loc:
        # Also the answer to a body without Content-Type: application/json, which is not
        # parsed on purpose: a web page could otherwise post to this local server unasked.
        return APIError(400, "The request body must be a JSON object sent with "
                             "Content-Type: application/json.", code="invalid_json")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param,
                        code="missing_required_parameter")
    msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    others = {".".join(_param_path(e.get("loc", ()))) for e in errors[1:]} - {param}
    more = f" (and problems with {', '.join(sorted(others))})" if others else ""
    return APIError(400, f"Invalid value for '{param}': {msg}{more}", param=param,
                    code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error FastAPI or the runtime can raise through the OpenAI error shape."""

    async def on_api_error(request: Request, exc: Exception) -> Response:
        return from_exception(exc, _prompt_param(request)).response()

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return _validation_error(exc).response()

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        kind = INVALID_REQUEST if exc.status_code < 500 else SERVER_ERROR
        return APIError(exc.status_code, str(exc.detail), type=kind, code=code,
                        headers=dict(exc.headers or {})).response()

    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    for cls in (APIError, EdgemoeError, QueueFullError, RequestTimeoutError,
                EngineStoppedError, ModelFileChangedError, Exception):
        app.add_exception_handler(cls, on_api_error)
