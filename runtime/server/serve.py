"""`serve(bundle, settings)`: run the HTTP server in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import copy
import faulthandler
import ipaddress
import logging
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from runtime.server.app import create_app
from runtime.server.settings import ServerSettings

if TYPE_CHECKING:
    from runtime.api import Model
    from runtime.server.state import ServerState

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
    ...) is raised here; so is ModelFileChangedError when a model file changes in place under
    `--on-model-change exit`. SIGINT/SIGTERM stop taking connections and fail queued requests
    (503) at once, let the running generation finish within `settings.shutdown_grace_s`, then
    cancel it and close the model. SIGHUP reloads the bundle (see keeper.py).
    """
    from runtime.api import load

    # A process killed by a fault (SIGBUS from a model file truncated without a lease, or a
    # storage read error on a page of the mapping) says so, with every thread's stack, on
    # stderr: never a silent death.
    if not faulthandler.is_enabled():
        faulthandler.enable(all_threads=True)

    settings = settings or ServerSettings()
    if not _is_loopback(settings.host) and settings.api_key is None:
        log.warning("serving on %s without an API key: anyone on the network can use it",
                    settings.host)

    def load_model(path: Path, verify: bool = False) -> Model:
        return load(path, options=replace(
            settings.load, verify=settings.load.verify or verify,
            resizable=settings.load.resizable or settings.follow_pressure))

    app = create_app(loader=lambda: load_model(Path(bundle)), reloader=load_model,
                     settings=settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=_log_config(settings.log_level),
        log_level=settings.log_level,
        lifespan="on",
        # A backstop: the state cancels the running generation before the grace period ends
        # (with no grace at all, the cancelled stream still gets a moment to say so).
        timeout_graceful_shutdown=max(0.5, settings.shutdown_grace_s),  # type: ignore[arg-type]
    )
    state: ServerState = app.state.edgemoe
    server = _Server(config, state)

    def stop(_error: BaseException) -> None:
        server.should_exit = True

    state.on_exit = stop
    server.run()
    if state.exit_error is not None:
        raise state.exit_error


class _Server(uvicorn.Server):
    """uvicorn's server, telling the state at the signal itself (not after connections drain)
    so queued requests are refused at once."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.edgemoe_state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.edgemoe_state.signal_shutdown()
        super().handle_exit(sig, frame)


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
