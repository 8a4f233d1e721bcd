"""`create_app`: the FastAPI application around one Model (or a loader for one) and its settings."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from runtime.api import Model
from runtime.server.admin import router as admin_router
from runtime.server.errors import install_error_handlers
from runtime.server.keeper import BundleLoader
from runtime.server.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    MetricsMiddleware,
)
from runtime.server.routes import router
from runtime.server.settings import ServerSettings
from runtime.server.state import ServerState

API_VERSION = "1"


def create_app(
    model: Model | None = None,
    settings: ServerSettings | None = None,
    *,
    loader: Callable[[], Model] | None = None,
    reloader: BundleLoader | None = None,
) -> FastAPI:
    """The HTTP app serving `model`, or the model `loader()` returns.

    With a loader the model is loaded on a background thread once the app starts, /health says
    503 until it is ready, and the app closes the model at shutdown. A model passed in stays the
    caller's to close (unless its file changes under it: then it is closed). `reloader(bundle,
    verify)` loads a bundle for SIGHUP, POST /admin/reload and recovery from a changed model
    file; without it the app cannot reload. The OpenAPI description is served at /openapi.json.
    """
    if (model is None) == (loader is None):
        raise ValueError("create_app needs exactly one of model or loader")
    settings = settings or ServerSettings()
    state = ServerState(settings, owns_model=loader is not None, reloader=reloader)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        state.start(asyncio.get_running_loop())  # signals first: leases need their handler
        if model is not None:
            state.attach(model)
        else:
            assert loader is not None
            state.load_in_background(loader)
        yield
        state.begin_shutdown()
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
    app.include_router(admin_router)
    if settings.ui:
        # The kiosk page is package data of apps.kiosk, located by name (no import of the apps
        # layer); it shares the API's origin, so the page needs no CORS.
        app.mount("/ui", StaticFiles(packages=[("apps.kiosk", "static")], html=True), name="ui")
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
