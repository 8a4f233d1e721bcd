"""What one running server holds: its settings, metrics, and the model + engine once loaded.

Kept on `app.state.edgemoe` (no module globals), so several apps can live in one process.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from starlette.concurrency import run_in_threadpool

from runtime.api import Model
from runtime.generation import GenerationRequest, PreparedRequest
from runtime.server.engine import Engine
from runtime.server.errors import model_not_found, not_ready
from runtime.server.metrics import Metrics, ServingFigures
from runtime.server.settings import ServerSettings

log = logging.getLogger("edgemoe.server")


class ServerState:
    def __init__(self, settings: ServerSettings, owns_model: bool) -> None:
        self.settings = settings
        self.metrics = Metrics(self.figures)
        self.owns_model = owns_model
        self.model: Model | None = None
        self.engine: Engine | None = None
        self.model_id: str | None = None
        self.created = int(time.time())
        self.load_error: BaseException | None = None
        self.on_load_error: Callable[[BaseException], None] | None = None
        self.stopping = False
        self._loader: threading.Thread | None = None

    # loading ----------------------------------------------------------------------------------
    def attach(self, model: Model) -> None:
        """Start serving `model`; from here on /health answers 200."""
        engine = Engine(model, self.settings.max_queue,
                        on_finished=self.metrics.observe_generation).start()
        self.model = model
        self.model_id = self.settings.model_alias or model.name
        self.created = int(time.time())
        self.engine = engine  # set last: it is the readiness flag

    def load_in_background(self, loader: Callable[[], Model]) -> None:
        def run() -> None:
            try:
                model = loader()
            except BaseException as e:  # reported by /health and re-raised by serve()
                self.load_error = e
                log.error("could not load the model: %s", e)
                if self.on_load_error is not None:
                    self.on_load_error(e)
                return
            if self.stopping:
                model.close()
                return
            self.attach(model)
            log.info("model %s loaded (n_ctx=%d)", self.model_id, model.n_ctx)

        self._loader = threading.Thread(target=run, name="edgemoe-load", daemon=True)
        self._loader.start()

    # per request ------------------------------------------------------------------------------
    def ready(self) -> Engine:
        if self.engine is None:
            if self.load_error is not None:
                raise not_ready(f"The model failed to load: {self.load_error}")
            raise not_ready("The model is still loading; retry shortly.")
        return self.engine

    def check_model(self, name: str) -> None:
        assert self.model is not None and self.model_id is not None
        if name != self.model_id and name != self.model.name:
            raise model_not_found(name, self.model_id)

    async def prepare(self, engine: Engine, request: GenerationRequest) -> PreparedRequest:
        """Render, tokenize and check a request before it may queue (errors become 400s).

        On a worker thread: a megabyte prompt takes a while to tokenize, and the event loop
        keeps streaming other answers meanwhile."""
        engine.check_running()
        assert self.model is not None
        return await run_in_threadpool(self.model.prepare, request)

    def figures(self) -> ServingFigures:
        """What /metrics reports besides counters; the runtime's figures only once loaded."""
        eng = self.engine
        return ServingFigures(
            model_id=self.model_id,
            queue_depth=eng.queue_depth if eng else 0,
            queue_capacity=self.settings.max_queue,
            busy=eng.busy if eng else False,
            stats=eng.stats() if eng else None,
        )

    # shutdown ---------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Finish or cancel in-flight work, then release the model if this server loaded it."""
        self.stopping = True
        if self._loader is not None:
            self._loader.join(self.settings.shutdown_grace_s)
        if self.engine is not None:
            self.engine.stop(self.settings.shutdown_grace_s)
        if self.owns_model and self.model is not None:
            self.model.close()
