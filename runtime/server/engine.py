"""The server's generation engine: one worker thread runs generations; a bounded queue admits work.

A Model is not thread-safe, so every generation runs on the worker thread, one at a time. What
waits in the bounded queue is a PreparedRequest (rendered, tokenized and checked by
`Model.prepare` in the request handler), so nothing in the queue can still fail on its input.
When the queue is full the caller is told to retry (429) rather than piling up. Each job has a
cancel Event that the runtime checks between tokens: set it when the client goes away or the
deadline passes and the generation stops at once; `abort` also hands the job an error.

Each job runs on the model that prepared it, so a reload can swap in a new model while jobs
prepared for the old one finish on it; `wait_unused` says when the old one may be closed.
`Engine.model` changes only on the event loop's thread (`swap`, `resume`), which is what lets a
request handler prepare on `engine.model` and submit right after without a lock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from runtime.api import Model
from runtime.generation.request import PreparedRequest, StreamEvent
from runtime.stats import ModelStats

log = logging.getLogger("edgemoe.server")

_JOIN_AFTER_CANCEL_S = 10.0


class QueueFullError(Exception):
    """Every queue slot is taken; the client should retry after `retry_after_s`."""

    def __init__(self, depth: int, retry_after_s: int) -> None:
        self.depth, self.retry_after_s = depth, retry_after_s
        super().__init__(
            f"the server is busy ({depth} requests waiting); retry in {retry_after_s} s"
        )


class EngineStoppedError(Exception):
    """The engine is shutting down and takes no more work."""


class RequestTimeoutError(Exception):
    """The request's deadline passed before its generation finished."""


# An observer of finished generations: (final event, seconds on the worker).
FinishedHook = Callable[[StreamEvent, float], None]
# Called on the worker before each generation with the job's model; raises to refuse the job
# (the server checks the model files there).
BeforeRunHook = Callable[[Model], None]


def _fresh(error: BaseException) -> BaseException:
    """A new instance of a stored error, so concurrent raises do not share one traceback."""
    try:
        return type(error)(*error.args)
    except Exception:
        return error


class Job:
    """One admitted request. The worker pushes StreamEvents (or an exception) to the asyncio side.

    Iterate it with `await job.next()` on the event loop that submitted it.
    """

    def __init__(self, prepared: PreparedRequest, loop: asyncio.AbstractEventLoop,
                 stream: bool, model: Model) -> None:
        self.prepared = prepared
        self.stream = stream  # False: one event with the whole text (one wake-up of the loop)
        self.model = model  # the model that prepared it, and the one it runs on
        self.cancel = threading.Event()
        self.error: BaseException | None = None  # set by abort: the request fails with it
        self.done = False
        self._loop = loop
        self._events: asyncio.Queue[StreamEvent | BaseException] = asyncio.Queue()
        self._timer: asyncio.TimerHandle | None = None

    # worker side ------------------------------------------------------------------------------
    def push(self, item: StreamEvent | BaseException) -> None:
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel.set()

    def abort(self, error: BaseException) -> None:
        """Stop the generation at the next token and fail the request with `error`."""
        if self.error is None:
            self.error = error
        self.cancel.set()

    # event-loop side --------------------------------------------------------------------------
    def set_deadline(self, timeout_s: float, on_expire: Callable[[Job], None]) -> None:
        def expire() -> None:
            if not self.done:
                self.cancel.set()
                on_expire(self)
                self._events.put_nowait(
                    RequestTimeoutError(f"the request did not finish within {timeout_s:g} s")
                )

        self._timer = self._loop.call_later(timeout_s, expire)

    async def next(self) -> StreamEvent:
        """The next event; raises what the generation raised, or RequestTimeoutError."""
        item = await self._events.get()
        if isinstance(item, BaseException):
            self.close()
            raise item
        if item.finish_reason is not None:
            self.close()
        return item

    def close(self) -> None:
        """Stop the generation if it still runs; the job is finished as far as the caller cares."""
        if not self.done:
            self.done = True
            self.cancel.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Engine:
    """Runs queued jobs one at a time on a worker thread, each on the model that prepared it."""

    def __init__(
        self,
        model: Model,
        max_queue: int,
        on_finished: FinishedHook | None = None,
        before_run: BeforeRunHook | None = None,
    ) -> None:
        self.model = model  # what new work is prepared on and runs on (see the module doc)
        self.max_queue = max_queue
        self._on_finished = on_finished
        self._before_run = before_run
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._current: Job | None = None
        self._stopping = False
        self._refusal: BaseException | None = None  # while set, new work fails with it
        self._borrowed: dict[int, int] = {}  # id(model) -> requests preparing on it
        self._model_lock = threading.Lock()  # held by the worker while a generation runs
        self._stats: ModelStats | None = None
        self._avg_job_s = 1.0
        self._thread = threading.Thread(target=self._work, name="edgemoe-engine", daemon=True)

    def start(self) -> Engine:
        self._stats = self.model.stats()
        self._thread.start()
        return self

    # admission --------------------------------------------------------------------------------
    def submit(self, prepared: PreparedRequest, timeout_s: float, stream: bool = True) -> Job:
        """Queue a generation for the running event loop; raises QueueFullError when full.

        The job runs on `self.model`, the model the caller prepared on (see the module doc).
        stream=False delivers a single final event holding the whole text."""
        job = Job(prepared, asyncio.get_running_loop(), stream, self.model)
        with self._cond:
            self.check_running()
            if len(self._pending) >= self.max_queue and (
                self._current is not None or self._pending
            ):
                raise QueueFullError(len(self._pending), self.retry_after_s())
            self._pending.append(job)
            self._cond.notify_all()
        job.set_deadline(timeout_s, self.discard)
        return job

    def discard(self, job: Job) -> None:
        """Drop a job that has not started (client gone, deadline passed)."""
        job.cancel.set()
        with self._cond:
            try:
                self._pending.remove(job)
            except ValueError:
                pass
            self._cond.notify_all()

    def check_running(self) -> None:
        """Raise EngineStoppedError once shutdown has begun, or the error the engine refuses
        work with (checked before preparing too)."""
        if self._stopping:
            raise EngineStoppedError("the server is shutting down")
        if self._refusal is not None:
            raise _fresh(self._refusal)

    def borrow(self) -> Model:
        """The model to prepare a request on, counted as in use until `give_back`."""
        with self._cond:
            self.check_running()
            model = self.model
            self._borrowed[id(model)] = self._borrowed.get(id(model), 0) + 1
            return model

    @contextmanager
    def borrowed(self) -> Iterator[Model]:
        """`borrow` ... `give_back` around a block."""
        model = self.borrow()
        try:
            yield model
        finally:
            self.give_back(model)

    def give_back(self, model: Model) -> None:
        with self._cond:
            left = self._borrowed.get(id(model), 0) - 1
            if left > 0:
                self._borrowed[id(model)] = left
            else:
                self._borrowed.pop(id(model), None)
            self._cond.notify_all()

    def retry_after_s(self) -> int:
        waiting = len(self._pending) + (1 if self._current is not None else 0)
        return int(min(60, max(1, math.ceil(self._avg_job_s * waiting))))

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def busy(self) -> bool:
        return self._current is not None

    def stats(self) -> ModelStats | None:
        """The runtime's figures: fresh when idle, else the snapshot from before this generation
        (None: none taken since a swap)."""
        if self._model_lock.acquire(blocking=False):
            try:
                if not self.model.closed:
                    self._stats = self.model.stats()
            finally:
                self._model_lock.release()
        return self._stats

    # models -----------------------------------------------------------------------------------
    def swap(self, model: Model) -> Model:
        """Serve `model` from now on (event loop thread only); returns the previous model, which
        keeps running the jobs prepared on it."""
        with self._cond:
            old, self.model, self._refusal = self.model, model, None
            self._stats = None
        return old

    def fail_model(self, model: Model, error: BaseException) -> None:
        """Fail every request on `model` with `error` now: queued ones at once, the running one
        at its next token. While `model` is the engine's, new work is refused with `error`."""
        with self._cond:
            if model is self.model:
                self._refusal = error
            doomed = [j for j in self._pending if j.model is model]
            for job in doomed:
                self._pending.remove(job)
            if self._current is not None and self._current.model is model:
                self._current.abort(_fresh(error))
            self._cond.notify_all()
        for job in doomed:
            job.cancel.set()
            job.push(_fresh(error))

    def _in_use(self, model: Model) -> bool:
        current = self._current
        return (
            self._borrowed.get(id(model), 0) > 0
            or (current is not None and current.model is model)
            or any(j.model is model for j in self._pending)
        )

    def wait_unused(self, model: Model, timeout_s: float | None) -> bool:
        """Wait until no request prepares or runs on `model`; False if `timeout_s` passed."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._in_use(model), timeout_s)

    def close_model(self, model: Model) -> None:
        """Close a model no job uses any more, never under a running generation or a stats
        read (both hold the model lock)."""
        with self._model_lock:
            model.close()

    # the worker -------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                job = self._current = self._pending.popleft()
            try:
                if not job.cancel.is_set():
                    with self._model_lock:
                        self._run(job)
            finally:
                with self._cond:
                    self._current = None
                    self._cond.notify_all()

    def _run(self, job: Job) -> None:
        t0 = time.perf_counter()
        last: StreamEvent | None = None
        pieces: list[str] = []
        try:
            if self._before_run is not None:
                self._before_run(job.model)
            for ev in job.model.stream_prepared(job.prepared, cancel=job.cancel):
                last = ev
                if job.error is not None:  # aborted: let the runtime stop at its next check
                    continue
                if job.stream:
                    job.push(ev)
                else:
                    pieces.append(ev.text)
            if job.error is not None:
                job.push(job.error)
            elif not job.stream and last is not None:
                job.push(replace(last, text="".join(pieces)))
        except Exception as e:  # handed to the request, which maps it to an HTTP error
            job.push(job.error or e)
        elapsed = time.perf_counter() - t0
        self._avg_job_s = 0.8 * self._avg_job_s + 0.2 * elapsed
        if last is not None and last.finish_reason == "cancelled" and last.usage is not None:
            log.info("generation cancelled after %d of at most %d tokens",
                     last.usage.completion_tokens, job.prepared.max_tokens)
        if last is not None and self._on_finished is not None:
            try:
                self._on_finished(last, elapsed)
            except Exception:
                log.exception("metrics hook failed")

    # shutdown ---------------------------------------------------------------------------------
    def begin_stop(self) -> None:
        """Refuse new work and fail what waits, at once; the running generation goes on.

        Safe to call more than once; a signal handler's callback calls it before `stop`."""
        with self._cond:
            self._stopping = True
            waiting = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in waiting:
            job.cancel.set()
            job.push(EngineStoppedError("the server is shutting down"))

    def cancel_running(self) -> None:
        """Stop the running generation at its next token; its request fails as shutting down."""
        with self._cond:
            current = self._current
        if current is not None and not current.cancel.is_set():
            log.warning("cancelling the running generation at shutdown")
            current.abort(
                EngineStoppedError("the server is shutting down; the generation was cancelled")
            )

    def stop(self, grace_s: float) -> None:
        """Refuse new work, fail what waits, let the running generation finish within grace_s,
        then cancel it."""
        self.begin_stop()
        if not self._thread.is_alive():
            return
        self._thread.join(max(0.0, grace_s))
        if self._thread.is_alive():
            self.cancel_running()
            self._thread.join(_JOIN_AFTER_CANCEL_S)
        if self._thread.is_alive():
            log.error("the engine thread did not stop within %.0f s", _JOIN_AFTER_CANCEL_S)

    @property
    def stopped(self) -> bool:
        return self._stopping
