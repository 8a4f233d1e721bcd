"""SIGTERM under load, against a real server process: queued requests fail at once with an
OpenAI-shaped 503, the running stream ends with an error event and `[DONE]`, the process exits
within the grace period, and the log holds no traceback."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from tests.runtime.server.conftest import RunningServer

pytestmark = [pytest.mark.endpoint, pytest.mark.engine]

BUSY = ("--n-ctx", "2048")
GRACE_S = 3.0


def test_sigterm_fails_queued_at_once_and_ends_the_stream_with_done(server_factory) -> None:
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
    exited = time.monotonic() - signalled

    assert len(answers) == 3
    for at, r in answers:
        assert at - signalled < 1.5, f"a queued request waited {at - signalled:.1f} s"
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        assert r.json()["error"]["code"] == "shutting_down"
    events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    assert "error" in events[-1] and events[-1]["error"]["code"] == "shutting_down"
    assert lines[-1] == "data: [DONE]"
    assert not any(c.get("finish_reason") for e in events for c in e.get("choices", []))
    assert code in (0, -signal.SIGTERM)
    assert exited < GRACE_S + 0.75, f"exited {exited:.1f} s after SIGTERM (grace {GRACE_S})"
    log = s.log()
    assert "Traceback" not in log and "CancelledError" not in log, log
    assert "timeout graceful shutdown exceeded" not in log
    assert "Application shutdown complete" in log


def test_sigterm_when_idle_exits_at_once(server_factory) -> None:
    s: RunningServer = server_factory("--shutdown-grace", "30")
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) in (0, -signal.SIGTERM)
    assert time.monotonic() - t0 < 5
    assert "Traceback" not in s.log()
