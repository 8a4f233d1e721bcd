"""Operator endpoints: `POST /admin/reload` switches the server to a bundle without a restart;
`POST /admin/budget` changes the served model's memory budget while it runs.

Behind the API key when one is set (the key middleware covers every path but /health). The
body is optional JSON, `{"bundle": PATH}`, else the served bundle is re-read; the JSON content
type is required even without a body, so a web page cannot trigger a reload with a form post
(such "simple" cross-origin requests are sent without asking). The work is the keeper's
(`keeper.py`), shared with SIGHUP: load beside the served model, swap between requests,
close the old one; a failed load leaves the old model serving and answers 400.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from runtime.server.errors import APIError
from runtime.server.schemas import ErrorResponse, json_body
from runtime.server.state import ServerState

router = APIRouter(prefix="/admin", tags=["admin"])


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bundle: str | None = Field(
        None, min_length=1, max_length=4096,
        description="Bundle directory to serve from now on; default: the served one, re-read.",
    )


class ReloadResponse(BaseModel):
    status: Literal["reloaded"] = "reloaded"
    model: str = Field(description="The model id served from now on.")
    bundle: str
    load_seconds: float
    previous_model: str | None = Field(
        description="The model served before; null when none was (after a file fault).")


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in (
        (400, "Bad body, or the bundle failed to load (the previous model is still served)"),
        (401, "Missing or wrong API key"), (409, "Another reload is in progress"),
        (503, "Model loading or server stopping"),
    )
}


def _bad_body(message: str) -> APIError:
    return APIError(400, message, code="invalid_json")


async def _reload_request(request: Request) -> ReloadRequest:
    """The optional body, checked by hand: an empty body is allowed, a non-JSON one is not."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise _bad_body("Send Content-Type: application/json (with '{}' or no body to re-read "
                        "the served bundle).")
    raw = await request.body()
    if not raw.strip():
        return ReloadRequest()
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise _bad_body(f"We could not parse the JSON body of your request ({e}).") from None
    try:
        return ReloadRequest.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or None
        raise APIError(400, f"Invalid value for '{where or 'body'}': {err.get('msg')}",
                       param=where, code="invalid_value") from None


@router.post("/reload", response_model=ReloadResponse, responses=_ERRORS,
             openapi_extra={"requestBody": {"required": False, "content": {"application/json": {
                 "schema": ReloadRequest.model_json_schema()}}}})
async def reload(request: Request) -> Response:
    """Load a bundle beside the served model and switch to it without dropping requests."""
    state: ServerState = request.app.state.edgemoe
    body = await _reload_request(request)
    outcome = await state.keeper.reload(body.bundle)
    answer = ReloadResponse(model=outcome.model_id, bundle=outcome.bundle,
                            load_seconds=round(outcome.seconds, 3),
                            previous_model=outcome.previous)
    return Response(json_body(answer), media_type="application/json")


class BudgetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    budget: str | int = Field(
        description="The new budget, as at load: '40%' of expert bytes, '1.5GB' or bytes.")


class BudgetResponse(BaseModel):
    status: Literal["applied", "pending"] = Field(
        description="'pending': a generation is running; it applies at its next token.")
    budget_bytes: int
    expert_capacity_bytes: int
    budget_fraction: float


@router.post("/budget", response_model=BudgetResponse, responses={
    status: {"model": ErrorResponse, "description": text} for status, text in (
        (400, "Bad body, a budget below the model's minimum, or a model that pages nothing"),
        (401, "Missing or wrong API key"), (503, "Model loading or server stopping"))},
             openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                 "schema": BudgetRequest.model_json_schema()}}}})
async def budget(request: Request) -> Response:
    """Change the served model's memory budget without a reload: the coldest experts are
    released at the next step boundary (never mid-token); tokens do not change."""
    state: ServerState = request.app.state.edgemoe
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise _bad_body("Send Content-Type: application/json with {\"budget\": \"40%\"}.")
    try:
        body = BudgetRequest.model_validate(json.loads(await request.body()))
    except (ValueError, RecursionError) as e:
        if isinstance(e, ValidationError):
            err = e.errors()[0]
            where = ".".join(str(p) for p in err.get("loc", ())) or "body"
            raise APIError(400, f"Invalid value for '{where}': {err.get('msg')}",
                           param=where, code="invalid_value") from None
        raise _bad_body(f"We could not parse the JSON body of your request ({e}).") from None
    engine = state.ready()
    model = engine.model
    plan = await run_in_threadpool(model.set_budget, body.budget, reason="admin")
    answer = BudgetResponse(status="pending" if model.budget_pending else "applied",
                            budget_bytes=plan.budget_bytes,
                            expert_capacity_bytes=plan.expert_capacity_bytes,
                            budget_fraction=round(plan.fraction, 6))
    return Response(json_body(answer), media_type="application/json")
