"""What one running server holds: settings, metrics, the engine and the model(s) it serves.

Kept on `app.state.edgemoe` (no module globals), so several apps can live in one process. The
model's life after loading (reloads, file faults, retiring an old model) is `ModelKeeper`'s,
in `keeper.py`; this module answers requests and runs the shutdown timeline.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runtime.api import Model
from runtime.experts.pressure import PressureFollower
from runtime.generation.request import GenerationRequest, PreparedRequest
from runtime.server.engine import Engine
from runtime.server.errors import from_exception, model_not_found, not_ready
from runtime.server.keeper import BundleLoader, ModelKeeper
from runtime.server.metrics import Metrics, ServingFigures
from runtime.server.settings import ServerSettings

log = logging.getLogger("edgemoe.server")

# Threads that render and tokenize requests. A fixed pool: more than a couple gain nothing on a
# small CPU (tokenizing holds the GIL much of the time), and its size stays put under load.
PREPARE_THREADS = 2


def cancel_margin_s(grace_s: float) -> float:
    """How long before the end of the grace period the running generation is cancelled, so
    its error event, the connection close and the model's release fit inside the period."""
    return min(1.0, grace_s / 4)


class ServerState:
    def __init__(self, settings: ServerSettings, owns_model: bool,
                 reloader: BundleLoader | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics(self.figures)
        self.owns_model = owns_model
        self.model: Model | None = None
        self.model_id: str | None = None
        self.created = int(time.time())
        self.stopping = False
        # Set when the server must end without a model (load failed, --on-model-change exit);
        # `serve` raises it after uvicorn stops.
        self.exit_error: BaseException | None = None
        self.on_exit: Callable[[BaseException], None] | None = None
        self.keeper = ModelKeeper(self, reloader)
        self._engine: Engine | None = None
        self._load_error: BaseException | None = None
        self._loader: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadline: float | None = None
        self._preparers = ThreadPoolExecutor(PREPARE_THREADS, thread_name_prefix="edgemoe-prep")
        self._follower: PressureFollower | None = None  # --follow-pressure

    # what routes read -------------------------------------------------------------------------
    @property
    def engine(self) -> Engine | None:
        """The engine while a model is served; None while loading, after a load error, or
        after a fault took the model away (then `load_error` says why)."""
        return None if self.keeper.fault is not None else self._engine

    @property
    def running_engine(self) -> Engine | None:
        """The engine whatever the model's state (None only before the first load)."""
        return self._engine

    @property
    def load_error(self) -> BaseException | None:
        """Why no model is served: the load failed, or its file changed while being served."""
        return self.keeper.fault or self._load_error

    # loading ----------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """At app startup, on the event loop: signals (where allowed) and the file watcher."""
        self._loop = loop
        self.keeper.start(loop)

    def attach(self, model: Model) -> None:
        """Start serving `model`; from here on /health answers 200."""
        self.keeper.adopt(model, owned=self.owns_model)
        engine = Engine(model, self.settings.max_queue,
                        on_finished=self.metrics.observe_generation,
                        before_run=self.keeper.check_files).start()
        self.show(model)
        self._engine = engine  # set last: it is the readiness flag
        if self.settings.follow_pressure and self._follower is None:
            self._follower = PressureFollower(
                lambda: self._engine.model if self._engine and not self.keeper.fault else None,
                self._pressure_floor).start()

    def _pressure_floor(self, model: Model) -> int:
        """The least expert capacity --follow-pressure shrinks `model` to."""
        if self.settings.pressure_floor is not None:
            return model.plan_budget(self.settings.pressure_floor).expert_capacity_bytes
        b = model.budget
        return max(b.minimum_bytes - b.dense_bytes - b.kv_bytes, b.expert_bytes_total // 8)

    def show(self, model: Model) -> None:
        """Publish `model` as the one served (event loop thread, or before the engine exists)."""
        self.model = model
        self.model_id = next(iter(self.settings.model_alias), model.name)
        self.created = int(time.time())

    def load_in_background(self, loader: Callable[[], Model]) -> None:
        def run() -> None:
            try:
                model = loader()
            except BaseException as e:  # reported by /health and re-raised by serve()
                self._load_error = e
                log.error("could not load the model: %s", e)
                self.fatal(e)
                return
            if self.stopping:
                model.close()
                return
            self.attach(model)
            log.info("model %s loaded (n_ctx=%d)", self.model_id, model.n_ctx)

        self._loader = threading.Thread(target=run, name="edgemoe-load", daemon=True)
        self._loader.start()

    def fatal(self, error: BaseException) -> None:
        """End the server because it cannot serve (any thread): `serve` raises `error`."""
        if self.exit_error is None:
            self.exit_error = error
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.begin_shutdown)
        if self.on_exit is not None:
            self.on_exit(error)

    # per request ------------------------------------------------------------------------------
    def ready(self) -> Engine:
        if self.keeper.fault is not None:
            raise from_exception(self.keeper.fault)
        if self._engine is None:
            if self._load_error is not None:
                raise not_ready(f"The model failed to load: {self._load_error}")
            raise not_ready("The model is still loading; retry shortly.")
        return self._engine

    def check_model(self, name: str | None) -> None:
        """A request may name the served model by its id, its bundle name or an alias, or not
        at all (one model is served); any name with `any_model`; else 404."""
        assert self.model is not None and self.model_id is not None
        names = (self.model_id, self.model.name, *self.settings.model_alias)
        if name is not None and name not in names and not self.settings.any_model:
            raise model_not_found(name, names)

    async def prepare(self, engine: Engine, request: GenerationRequest) -> PreparedRequest:
        """Render, tokenize and check a request before it may queue (errors become 400s).

        On a worker thread: a megabyte prompt takes a while to tokenize, and the event loop
        keeps streaming other answers meanwhile. The model is borrowed so a reload cannot close
        it underneath; if a reload swapped models meanwhile, the request is prepared again on
        the new one (its template and vocabulary may differ). Models are swapped on the event
        loop only, so the caller's `engine.submit` right after this runs on the same model."""
        loop = asyncio.get_running_loop()
        while True:
            with engine.borrowed() as model:
                prepared = await loop.run_in_executor(self._preparers, model.prepare, request)
            if engine.model is model:
                return prepared

    def figures(self) -> ServingFigures:
        """What /metrics reports besides counters; the runtime's figures only once loaded."""
        eng = self._engine
        stats = eng.stats() if eng else None
        return ServingFigures(
            model_id=self.model_id,
            queue_depth=eng.queue_depth if eng else 0,
            queue_capacity=self.settings.max_queue,
            busy=eng.busy if eng else False,
            stats=stats.to_json() if stats is not None else None,
        )

    # shutdown ---------------------------------------------------------------------------------
    def signal_shutdown(self) -> None:
        """From a SIGTERM/SIGINT handler: takes no lock, only schedules `begin_shutdown`."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.begin_shutdown)

    def begin_shutdown(self) -> None:
        """On the event loop, at the signal: refuse new work, fail queued requests at once
        (503), and cancel the running generation shortly before the grace period ends."""
        if self._deadline is not None:
            return
        grace = self.settings.shutdown_grace_s
        self.stopping = True
        self._deadline = time.monotonic() + grace
        self.keeper.stop()
        if self._follower is not None:
            self._follower.stop()
        if self._engine is not None:
            self._engine.begin_stop()
            delay = max(0.0, grace - cancel_margin_s(grace))
            log.info("shutting down: queued requests refused; the running generation, if any, "
                     "has %.1f s to finish", delay)
            if self._loop is not None:
                self._loop.call_later(delay, self._engine.cancel_running)
            else:
                self._engine.cancel_running()

    def shutdown(self) -> None:
        """At app shutdown, off the event loop (begin_shutdown has run): wait for the running
        generation within what is left of the grace period, then release every model."""
        self.stopping = True
        deadline = self._deadline or time.monotonic() + self.settings.shutdown_grace_s
        margin = cancel_margin_s(self.settings.shutdown_grace_s)
        if self._loader is not None:
            self._loader.join(max(0.0, deadline - time.monotonic()))
        if self._engine is not None:
            self._engine.stop(max(0.0, deadline - margin - time.monotonic()))
        self._preparers.shutdown(wait=False, cancel_futures=True)
        self.keeper.close_all()

    @property
    def bundle_path(self) -> Path | None:
        return self.model.bundle.path if self.model is not None else None
