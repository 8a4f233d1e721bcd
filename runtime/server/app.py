"""`create_app`: the FastAPI application around one Model (or a loader for one) and its settings."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from runtime.api import Model
from runtime.server.errors import install_error_handlers
from runtime.server.middleware import ApiKeyMiddleware, BodyLimitMiddleware, MetricsMiddleware
from runtime.server.routes import router
from runtime.server.settings import ServerSettings
from runtime.server.state import ServerState

API_VERSION = "1"


def create_app(
    model: Model | None = None,
    settings: ServerSettings | None = None,
    *,
    loader: Callable[[], Model] | None = None,
) -> FastAPI:
    """The HTTP app serving `model`, or the model `loader()` returns.

    With a loader the model is loaded on a background thread once the app starts, /health says
    503 until it is ready, and the app closes the model at shutdown. A model passed in stays the
    caller's to close. The OpenAPI description is served at /openapi.json.
    """
    if (model is None) == (loader is None):
        raise ValueError("create_app needs exactly one of model or loader")
    settings = settings or ServerSettings()
    state = ServerState(settings, owns_model=loader is not None)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if model is not None:
            state.attach(model)
        else:
            assert loader is not None
            state.load_in_background(loader)
        yield
        await run_in_threadpool(state.shutdown)

    app = FastAPI(
        title="edgemoe",
        summary="OpenAI-compatible API for a Mixture-of-Experts model run on this device.",
        version=API_VERSION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.edgemoe = state
    _document_errors_as_400(app)
    install_error_handlers(app)
    app.include_router(router)
    # add_middleware wraps: the last added runs first.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"],
        )
    return app


def _document_errors_as_400(app: FastAPI) -> None:
    """FastAPI documents a 422 for every body; this server answers bad input with 400."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
