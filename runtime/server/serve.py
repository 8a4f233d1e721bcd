"""`serve(bundle, settings)`: run the HTTP server in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import copy
import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtime.server.app import create_app
from runtime.server.settings import ServerSettings

if TYPE_CHECKING:
    from runtime.api import Model

log = logging.getLogger("edgemoe.server")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(bundle: str | Path, settings: ServerSettings | None = None) -> None:
    """Serve `bundle` over HTTP (OpenAI-compatible) until interrupted.

    The socket opens at once and /health answers 503 while the model loads on a background
    thread. If loading fails the server stops and the runtime's error (BundleError, BudgetError,
    ...) is raised here. SIGINT/SIGTERM stop taking connections, let in-flight requests finish
    within `settings.shutdown_grace_s`, then cancel what remains and close the model.
    """
    import uvicorn

    from runtime.api import load

    settings = settings or ServerSettings()
    if not _is_loopback(settings.host) and settings.api_key is None:
        log.warning("serving on %s without an API key: anyone on the network can use it",
                    settings.host)

    def load_model() -> Model:
        return load(
            bundle,
            settings.budget,
            n_ctx=settings.n_ctx,
            threads=settings.threads,
            backend=settings.backend,
        )

    app = create_app(loader=load_model, settings=settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=_log_config(settings.log_level),
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=max(1, int(round(settings.shutdown_grace_s))),
    )
    server = uvicorn.Server(config)
    state = app.state.edgemoe

    def stop(_error: BaseException) -> None:
        server.should_exit = True

    state.on_load_error = stop
    server.run()
    if state.load_error is not None:
        raise state.load_error


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, with the server's own messages (model loaded, generation cancelled,
    errors) on the same stream at the same level; otherwise Python drops everything below
    WARNING from a logger nobody configured."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["edgemoe"] = {
        "handlers": ["default"], "level": level.upper(), "propagate": False,
    }
    return config
