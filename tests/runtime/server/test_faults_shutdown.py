"""SIGTERM under load, against a real server process: queued requests fail at once with an
OpenAI-shaped 503, the running stream ends with an error event and `[DONE]`, the process exits
within the grace period, and the log holds no traceback."""

from __future__ import annotations

import json
import signal
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from tests.runtime.server.conftest import RunningServer

pytestmark = [pytest.mark.endpoint, pytest.mark.engine]

BUSY = ("--n-ctx", "2048")
GRACE_S = 3.0


ATTEMPTS = 3  # runs of the scenario until the grace period cuts a stream (see below)


@dataclass
class Shutdown:
    server: RunningServer
    lines: list[str]  # the stream's non-empty lines
    answers: list[tuple[float, httpx.Response]]  # (when, answer) of each queued request
    signalled: float
    code: int
    exited: float  # seconds from SIGTERM to the process's exit

    @property
    def events(self) -> list[dict]:
        return [json.loads(x[6:]) for x in self.lines if x.startswith("data: {")]

    def finished(self) -> bool:
        """The stream ended on its own (a finish_reason) instead of being cut."""
        return any(c.get("finish_reason") for e in self.events for c in e.get("choices", []))


def _sigterm_under_load(server_factory) -> Shutdown:
    """A stream running and three requests queued behind it, then SIGTERM."""
    s: RunningServer = server_factory("--max-queue", "4", "--shutdown-grace", str(GRACE_S),
                                      "--log-level", "info", *BUSY)
    lines: list[str] = []
    answers: list[tuple[float, httpx.Response]] = []

    def stream() -> None:
        body = {"model": s.model_id, "prompt": "Once", "max_tokens": 2000, "temperature": 0,
                "stream": True}
        with httpx.Client(timeout=60) as c, c.stream("POST", f"{s.base_url}/v1/completions",
                                                     json=body) as r:
            assert r.status_code == 200
            lines.extend(x for x in r.iter_lines() if x)

    def queued(i: int) -> None:
        r = httpx.post(f"{s.base_url}/v1/chat/completions", timeout=60, json={
            "model": s.model_id, "max_tokens": 4,
            "messages": [{"role": "user", "content": f"queued {i}"}]})
        answers.append((time.monotonic(), r))

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    deadline = time.monotonic() + 60
    while not lines and time.monotonic() < deadline:
        time.sleep(0.02)
    waiting = [threading.Thread(target=queued, args=(i,), daemon=True) for i in range(3)]
    for t in waiting:
        t.start()
    deadline = time.monotonic() + 30
    while s.metrics()["edgemoe_queue_depth"] < 3:
        assert time.monotonic() < deadline, "the requests did not queue"
        time.sleep(0.05)
    signalled = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    for t in waiting:
        t.join(30)
    streamer.join(30)
    code = s.proc.wait(30)
    return Shutdown(s, lines, answers, signalled, code, time.monotonic() - signalled)


def test_sigterm_fails_queued_at_once_and_ends_the_stream_with_done(server_factory) -> None:
    """The stream (2,000 tokens, ~5 s on this fixture) may also end on its own inside the grace
    period when queueing the other requests took long (a loaded machine): the server keeps its
    promise then too, but the cut went unexercised, so the scenario runs again, ATTEMPTS times
    at most, until the grace period cuts a stream."""
    for _ in range(ATTEMPTS):
        r = _sigterm_under_load(server_factory)
        assert len(r.answers) == 3
        for at, answer in r.answers:
            assert at - r.signalled < 1.5, f"a queued request waited {at - r.signalled:.1f} s"
            assert answer.status_code == 503
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()["error"]["code"] == "shutting_down"
        assert r.lines[-1] == "data: [DONE]"
        assert r.code in (0, -signal.SIGTERM)
        assert r.exited < GRACE_S + 0.75, f"exited {r.exited:.1f} s after SIGTERM (grace {GRACE_S})"
        log = r.server.log()
        assert "Traceback" not in log and "CancelledError" not in log, log
        assert "timeout graceful shutdown exceeded" not in log
        assert "Application shutdown complete" in log
        if r.finished():
            assert not any("error" in e for e in r.events)
            continue
        assert "error" in r.events[-1] and r.events[-1]["error"]["code"] == "shutting_down"
        return
    pytest.fail(f"the stream ended on its own before the grace period in all {ATTEMPTS} runs")


def test_sigterm_when_idle_exits_at_once(server_factory) -> None:
    s: RunningServer = server_factory("--shutdown-grace", "30")
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) in (0, -signal.SIGTERM)
    assert time.monotonic() - t0 < 5
    assert "Traceback" not in s.log()
