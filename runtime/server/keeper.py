"""A served model's life after loading: its file guard, reloads, file faults and recovery.

Reload (SIGHUP, POST /admin/reload): the new model loads beside the old one on a worker thread;
on success the engine swaps to it on the event loop (jobs already prepared on the old model
finish on it), and the old model is closed once nothing uses it. A failed load leaves the old
model serving. Fault: when a guarded file changes in place (a broken lease signalled, or the
fingerprint check before a generation or in the once-a-second watch), every request on that
model fails with 503 `model_file_changed`, the model is closed and its files released (so a
writer held by the lease proceeds), /health says why, and the server either exits
(`--on-model-change exit`) or reloads the bundle, verified, once its files are quiet again.
Damaged weights (a checksum mismatch or a read error the model found, runtime/integrity/) are
the same fault with 503 `model_corrupt`, except that the files did not change: the bundle is
reloaded, fully verified, only once they do (replaced, or `edgemoe pull` swapped its folder),
and the server never exits for it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.concurrency import run_in_threadpool

from contract.manifest import MANIFEST_NAME
from runtime.api import Model
from runtime.errors import EdgemoeError, ModelCorruptError
from runtime.server.engine import Engine, EngineStoppedError
from runtime.server.errors import not_ready, reload_busy, reload_failed
from runtime.server.lease import (
    LEASE_SIGNAL,
    FileGuard,
    Fingerprint,
    ModelFileChangedError,
    lease_break_seconds,
    probe,
)

if TYPE_CHECKING:
    from runtime.server.state import ServerState

log = logging.getLogger("edgemoe.server")

# (bundle directory, verify hashes) -> a loaded Model.
BundleLoader = Callable[[Path, bool], Model]

WATCH_INTERVAL_S = 1.0
# A changed file is reloaded once it has kept one size and mtime this long, nobody has it open
# for writing (where leases tell), and it is not the version that already failed to load.
SETTLE_S = 1.0


def mapped_files(model: Model) -> list[Path]:
    """The files whose pages `model` maps: its bundle's model (and expert) file, and those of
    its draft model when it decodes speculatively with one."""
    models = [model] if model.draft_model is None else [model, model.draft_model]
    return list(dict.fromkeys(p for m in models
                              for p in (m.bundle.model_path, m.bundle.expert_path)))


@dataclass(frozen=True)
class ReloadOutcome:
    model_id: str
    bundle: str
    seconds: float
    previous: str | None


class ModelKeeper:
    """Guards, reloads and retires the models of one ServerState."""

    def __init__(self, state: ServerState, reloader: BundleLoader | None) -> None:
        self._state = state
        self._reloader = reloader
        # The served model was lost to this (its file changed, or its weights are damaged).
        self.fault: ModelFileChangedError | ModelCorruptError | None = None
        self.leases = False  # the lease-break signal has a handler, so leases may be taken
        self._lock = threading.Lock()
        self._guards: dict[int, tuple[Model, FileGuard | None]] = {}
        self._owned: set[int] = set()
        self._faulting: set[int] = set()
        self._reload_lock = threading.Lock()  # held from a reload's start to the old model's end
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._release_within_s = max(1.0, lease_break_seconds() - 2.0)
        # recovery after a fault
        self._fault_bundle: Path | None = None
        self._fault_paths: tuple[Path, ...] = ()
        self._fault_reason = ""
        self._settle: tuple[tuple[Fingerprint, ...], float] | None = None
        self._failed: tuple[Fingerprint, ...] | None = None

    # start and stop ---------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Install the lease and SIGHUP handlers (main thread only) and start the watch."""
        self._loop = loop
        try:
            loop.add_signal_handler(LEASE_SIGNAL, self._on_lease_signal)
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self.leases = True
        except (RuntimeError, ValueError, NotImplementedError) as e:
            log.warning("no signal handlers (%s): model files are guarded by their fingerprint "
                        "only, and SIGHUP does not reload", e)
        self._watcher = threading.Thread(target=self._watch, name="edgemoe-files", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()

    def close_all(self) -> None:
        """At shutdown: close the models this server loaded and release every guard."""
        self._stop.set()
        if self._watcher is not None and self._watcher is not threading.current_thread():
            self._watcher.join(5)
        with self._lock:
            models = [m for m, _ in self._guards.values()]
        for model in models:
            self._release(model)

    # guards -----------------------------------------------------------------------------------
    def adopt(self, model: Model, owned: bool) -> None:
        """Guard `model`'s files (a lease where possible); `owned`: close it when retired."""
        guard: FileGuard | None = None
        try:
            guard = FileGuard.open(mapped_files(model), lease=self.leases)
        except OSError as e:
            log.warning("cannot hold %s open to guard it (%s)", model.bundle.model_path, e)
        if guard is not None and guard.problems:
            log.warning("no file lease (%s): a model file truncated while a generation runs can "
                        "kill the server (SIGBUS); replace model files by rename, never in place",
                        "; ".join(guard.problems))
        with self._lock:
            self._guards[id(model)] = (model, guard)
            if owned:
                self._owned.add(id(model))
        model.integrity.subscribe(lambda error: self.report_corrupt(model, error))

    def check_files(self, model: Model) -> None:
        """Before each generation (worker thread): refuse to touch a mapping whose file changed."""
        entry = self._guards.get(id(model))
        guard = entry[1] if entry is not None else None
        reason = guard.changed() if guard is not None else None
        if reason is not None:
            self.report_change(model, reason)
            raise ModelFileChangedError(f"{reason}; the server stopped using it")

    def _snapshot(self) -> list[tuple[Model, FileGuard]]:
        with self._lock:
            return [(m, g) for m, g in self._guards.values() if g is not None]

    def _check_all(self) -> None:
        for model, guard in self._snapshot():
            reason = guard.changed()
            if reason is not None:
                self.report_change(model, reason)

    def _on_lease_signal(self) -> None:
        """A lease is being broken: a writer waits until we release it (event loop)."""
        self._check_all()

    # faults -----------------------------------------------------------------------------------
    def report_change(self, model: Model, reason: str) -> None:
        """A guarded file of `model` changed (any thread): handle it once, on its own thread,
        since it waits for the worker to leave the model."""
        self._report(model, reason, ModelFileChangedError(f"{reason}; the server stopped using it"))

    def report_corrupt(self, model: Model, error: ModelCorruptError) -> None:
        """`model` found damaged weights (any thread, the decoding one included)."""
        self._report(model, str(error), ModelCorruptError(
            f"{error}; the server stopped answering from this bundle until it is replaced"))

    def _report(self, model: Model, reason: str, error: EdgemoeError) -> None:
        with self._lock:
            if id(model) in self._faulting or id(model) not in self._guards:
                return
            self._faulting.add(id(model))
        threading.Thread(target=self._fault, args=(model, reason, error), name="edgemoe-fault",
                         daemon=True).start()

    def _fault(self, model: Model, reason: str, error: EdgemoeError) -> None:
        engine = self._state.running_engine
        corrupt = isinstance(error, ModelCorruptError)
        current = engine is None or engine.model is model
        t0 = time.monotonic()
        if current:
            # Damaged weights: watch the bundle as it was given (a `pull` destination swaps its
            # folder), and reload only once its files differ from the damaged ones.
            given = model.bundle.opened_as if corrupt and model.bundle.opened_as else None
            self._fault_bundle = given or model.bundle.path
            # The manifest too: a new model copied in may need its manifest to verify.
            folder = given or model.bundle.path
            self._fault_paths = (*(folder / p.name for p in mapped_files(model)),
                                 folder / MANIFEST_NAME)
            self._fault_reason, self._settle, self._failed = reason, None, None
            if corrupt:
                self._failed = self._fingerprints()
            self.fault = error  # /health and every request say 503 with the reason from now
        log.error("%s: failing its requests and closing the model", reason)
        if engine is not None:
            engine.fail_model(model, error)
            if not engine.wait_unused(model, self._release_within_s):
                log.error("a generation on %s did not stop within %.0f s; the kernel may let "
                          "the writer through first", model.name, self._release_within_s)
        self._release(model, force_close=True)
        with self._lock:
            self._faulting.discard(id(model))
        log.warning("model %s closed and its files released %.0f ms after the change",
                    model.name, 1000 * (time.monotonic() - t0))
        if not current:
            return
        if corrupt:
            log.warning("will reload %s once its files are replaced (fully verified)",
                        self._fault_bundle)
        elif self._state.settings.on_model_change == "exit":
            self._state.fatal(ModelFileChangedError(
                f"{reason}; exiting as --on-model-change is 'exit'"))
        else:
            log.warning("will reload %s once its files are complete and unchanged for %.0f s",
                        model.bundle.path, SETTLE_S)

    def _release(self, model: Model, force_close: bool = False) -> None:
        """Close `model` (if this server owns it, or a fault forces it), then release its
        files: in that order, so a writer the lease holds never meets our mapping."""
        with self._lock:
            entry = self._guards.pop(id(model), None)
            owned = id(model) in self._owned
            self._owned.discard(id(model))
        if entry is None:
            return
        if owned or force_close:
            engine = self._state.running_engine
            if engine is not None:
                engine.close_model(model)
            else:
                model.close()
        if entry[1] is not None:
            entry[1].close()

    # reload -----------------------------------------------------------------------------------
    async def reload(self, bundle: str | Path | None = None, *,
                     verify: bool = False) -> ReloadOutcome:
        """Load `bundle` (default: the served one, re-read) beside the served model and swap
        to it; on failure the served model stays (raises an APIError)."""
        st = self._state
        engine = st.running_engine
        if st.stopping:
            raise EngineStoppedError("the server is shutting down")
        if engine is None:
            raise not_ready("The model is still loading; retry shortly.")
        if self._reloader is None:
            raise reload_failed("this server was given a loaded model, not a bundle path, so "
                                "it cannot reload")
        path = Path(bundle) if bundle is not None else self._fault_bundle or st.bundle_path
        assert path is not None
        if not self._reload_lock.acquire(blocking=False):
            log.warning("reload of %s refused: another reload is still in progress", path)
            raise reload_busy()
        handed_off = False
        try:
            t0 = time.perf_counter()
            try:
                model = await run_in_threadpool(self._load, path, verify)
            except Exception as e:
                detail = str(e) if isinstance(e, EdgemoeError) else f"{type(e).__name__}: {e}"
                serving = "no model is served" if self.fault else f"still serving {st.model_id}"
                log.error("reload of %s failed (%s): %s", path, serving, detail)
                where = "" if str(path) in detail else f"{path}: "
                raise reload_failed(where + detail) from None
            if st.stopping:
                await run_in_threadpool(self._release, model)
                raise EngineStoppedError("the server is shutting down")
            previous = None if self.fault else st.model_id
            old = engine.swap(model)  # the event loop's thread: see engine.py
            st.show(model)
            self.fault, self._fault_bundle = None, None
            seconds = time.perf_counter() - t0
            log.info("now serving %s from %s (loaded in %.1f s)", st.model_id, path, seconds)
            if old is not model:
                threading.Thread(target=self._retire, args=(engine, old), daemon=True,
                                 name="edgemoe-retire").start()
                handed_off = True
            assert st.model_id is not None
            return ReloadOutcome(st.model_id, str(path), seconds, previous)
        finally:
            if not handed_off:
                self._reload_lock.release()

    def _load(self, path: Path, verify: bool) -> Model:
        assert self._reloader is not None
        model = self._reloader(path, verify)
        try:
            self.adopt(model, owned=True)
        except BaseException:
            model.close()
            raise
        return model

    def _retire(self, engine: Engine, old: Model) -> None:
        """Close the previous model once the requests prepared on it have finished."""
        try:
            limit = self._state.settings.request_timeout_s + 5
            if not engine.wait_unused(old, limit):
                log.warning("requests on the previous model outlived %.0f s; closing it", limit)
            self._release(old)
        finally:
            self._reload_lock.release()

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading the bundle")
        task = asyncio.ensure_future(self._reload_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception:  # reload logged why; a signal has nobody to answer
            pass

    # the watch --------------------------------------------------------------------------------
    def _watch(self) -> None:
        """Once a second: the fingerprint check (the only one without leases), and recovery."""
        while not self._stop.wait(WATCH_INTERVAL_S):
            try:
                self._check_all()
                if self.fault is not None and (
                        isinstance(self.fault, ModelCorruptError)
                        or self._state.settings.on_model_change == "reload"):
                    self._try_recover()
            except Exception:
                log.exception("the model file watch failed")

    def _fingerprints(self) -> tuple[Fingerprint, ...] | None:
        probes = [probe(p, lease=self.leases) for p in self._fault_paths]
        return tuple(fp for fp, _ in probes if fp is not None) or None

    def _try_recover(self) -> None:
        if self._reload_lock.locked() or self._loop is None or self._state.stopping:
            return
        probes = [probe(p, lease=self.leases) for p in self._fault_paths]
        if not probes or any(fp is None or busy for fp, busy in probes):
            self._settle = None
            return
        key = tuple(fp for fp, _ in probes if fp is not None)
        now = time.monotonic()
        if self._settle is None or self._settle[0] != key:
            self._settle = (key, now)
            return
        if now - self._settle[1] < SETTLE_S or key == self._failed:
            return
        future = asyncio.run_coroutine_threadsafe(self.reload(verify=True), self._loop)
        while True:
            try:
                future.result(timeout=WATCH_INTERVAL_S)
                return
            except concurrent.futures.TimeoutError:
                if self._stop.is_set():
                    future.cancel()
                    return
            except Exception as e:
                self._failed = key
                detail = getattr(e, "message", None) or str(e)
                kind = ModelCorruptError if isinstance(self.fault, ModelCorruptError) else \
                    ModelFileChangedError
                self.fault = kind(
                    f"{self._fault_reason}; the server stopped using it and will reload it "
                    f"once it is valid ({detail})")
                return
