"""The server's generation engine: one worker thread owns the Model; a bounded queue admits work.

The Model is not thread-safe, so every generation runs on the worker thread, one at a time. What
waits in the bounded queue is a PreparedRequest (rendered, tokenized and checked by
`Model.prepare` in the request handler), so nothing in the queue can still fail on its input.
When the queue is full the caller is told to retry (429) rather than piling up. Each job has a
cancel Event that the runtime checks between tokens: set it when the client goes away or the
deadline passes and the generation stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from runtime.api import Model
from runtime.generation import PreparedRequest, StreamEvent

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


class Job:
    """One admitted request. The worker pushes StreamEvents (or an exception) to the asyncio side.

    Iterate it with `await job.next()` on the event loop that submitted it.
    """

    def __init__(self, prepared: PreparedRequest, loop: asyncio.AbstractEventLoop,
                 stream: bool) -> None:
        self.prepared = prepared
        self.stream = stream  # False: one event with the whole text (one wake-up of the loop)
        self.cancel = threading.Event()
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
    """Owns the Model; runs queued jobs one at a time on a worker thread."""

    def __init__(
        self, model: Model, max_queue: int, on_finished: FinishedHook | None = None
    ) -> None:
        self.model = model
        self.max_queue = max_queue
        self._on_finished = on_finished
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._current: Job | None = None
        self._stopping = False
        self._model_lock = threading.Lock()  # held by the worker while a generation runs
        self._stats: dict[str, Any] = {}
        self._avg_job_s = 1.0
        self._thread = threading.Thread(target=self._work, name="edgemoe-engine", daemon=True)

    def start(self) -> Engine:
        self._stats = self.model.stats()
        self._thread.start()
        return self

    # admission --------------------------------------------------------------------------------
    def submit(self, prepared: PreparedRequest, timeout_s: float, stream: bool = True) -> Job:
        """Queue a generation for the running event loop; raises QueueFullError when full.

        stream=False delivers a single final event holding the whole text."""
        job = Job(prepared, asyncio.get_running_loop(), stream)
        with self._cond:
            self.check_running()
            if len(self._pending) >= self.max_queue and (
                self._current is not None or self._pending
            ):
                raise QueueFullError(len(self._pending), self.retry_after_s())
            self._pending.append(job)
            self._cond.notify()
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

    def check_running(self) -> None:
        """Raise EngineStoppedError once shutdown has begun (checked before preparing too)."""
        if self._stopping:
            raise EngineStoppedError("the server is shutting down")

    def retry_after_s(self) -> int:
        waiting = len(self._pending) + (1 if self._current is not None else 0)
        return int(min(60, max(1, math.ceil(self._avg_job_s * waiting))))

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def busy(self) -> bool:
        return self._current is not None

    def stats(self) -> dict[str, Any]:
        """The runtime's figures: fresh when idle, else the snapshot from before this generation."""
        if self._model_lock.acquire(blocking=False):
            try:
                if self.model.engine is not None:
                    self._stats = self.model.stats()
            finally:
                self._model_lock.release()
        return self._stats

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

    def _run(self, job: Job) -> None:
        t0 = time.perf_counter()
        last: StreamEvent | None = None
        pieces: list[str] = []
        try:
            for ev in self.model.stream_prepared(job.prepared, cancel=job.cancel):
                last = ev
                if job.stream:
                    job.push(ev)
                else:
                    pieces.append(ev.text)
            if not job.stream and last is not None:
                job.push(replace(last, text="".join(pieces)))
        except Exception as e:  # handed to the request, which maps it to an HTTP error
            job.push(e)
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
    def stop(self, grace_s: float) -> None:
        """Refuse new work, fail what waits, let the running generation finish within grace_s,
        then cancel it."""
        with self._cond:
            self._stopping = True
            waiting = list(self._pending)
            self._pending.clear()
            self._cond.notify_all()
        for job in waiting:
            job.cancel.set()
            job.push(EngineStoppedError("the server is shutting down"))
        if not self._thread.is_alive():
            return
        self._thread.join(grace_s)
        current = self._current
        if self._thread.is_alive() and current is not None:
            log.warning("cancelling the running generation at shutdown")
            current.cancel.set()
            self._thread.join(_JOIN_AFTER_CANCEL_S)
        if self._thread.is_alive():
            log.error("the engine thread did not stop within %.0f s", _JOIN_AFTER_CANCEL_S)

    @property
    def stopped(self) -> bool:
        return self._stopping
