"""`serve(bundle, settings)`: run the HTTP server in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from runtime.server.app import create_app
from runtime.server.settings import ServerSettings

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

    def load_model():
        return load(bundle, settings.budget, n_ctx=settings.n_ctx, threads=settings.threads)

    app = create_app(loader=load_model, settings=settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
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
