"""The engine behind the HTTP layer: concurrency, cancellation on disconnect, the bounded queue,
API keys and graceful shutdown, each against a real server process."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.runtime.server.conftest import N_CTX, RunningServer

pytestmark = [pytest.mark.endpoint, pytest.mark.engine]

LONG = N_CTX - 32  # max_tokens that keeps the engine busy for a while
# Servers that must stay busy for seconds get a larger window: decoding 2000 tokens of the tiny
# model takes several seconds even on a fast machine (the cost per token grows with position).
BUSY = ("--n-ctx", "2048")
BUSY_TOKENS = 2000


def _long_stream_body(model_id: str, max_tokens: int = LONG) -> dict:
    return {"model": model_id, "prompt": "Once upon a time", "max_tokens": max_tokens,
            "temperature": 0, "stream": True}


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_16_concurrent_clients(server: RunningServer, direct_model) -> None:
    prompts = [f"Request {i}: tell me about item number {i}" for i in range(16)]
    expected = [direct_model.generate(p, max_tokens=8, temperature=0.0).text for p in prompts]
    barrier = threading.Barrier(16, timeout=30)

    def ask(i: int) -> str:
        client = server.openai(timeout=120)
        barrier.wait()
        if i % 2:
            out = client.completions.create(model=server.model_id, prompt=prompts[i],
                                            max_tokens=8, temperature=0)
            return out.choices[0].text
        stream = client.completions.create(model=server.model_id, prompt=prompts[i],
                                           max_tokens=8, temperature=0, stream=True)
        return "".join(c.choices[0].text for c in stream if c.choices)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16), timeout=180))
    assert answers == expected


def test_disconnect_mid_stream_frees_the_engine(server: RunningServer) -> None:
    before = server.metrics()
    cancelled_before = before.get('edgemoe_generations_total{finish_reason="cancelled"}', 0)
    with server.http() as c:
        with c.stream("POST", "/v1/completions", json=_long_stream_body(server.model_id)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = 0
            for line in lines:
                if line.startswith("data: "):
                    got += 1
                if got >= 3:
                    break
        # Leaving the block closes the connection mid-stream.
    t0 = time.monotonic()
    out = server.openai(timeout=60).completions.create(
        model=server.model_id, prompt="Quick one", max_tokens=2, temperature=0)
    elapsed = time.monotonic() - t0
    assert out.choices[0].text is not None
    m = server.metrics()
    assert m.get('edgemoe_generations_total{finish_reason="cancelled"}', 0) == \
        cancelled_before + 1
    made = m['edgemoe_completion_tokens_total{finish_reason="cancelled"}'] - before.get(
        'edgemoe_completion_tokens_total{finish_reason="cancelled"}', 0)
    assert 0 < made < LONG, f"the cancelled generation made {made} of {LONG} tokens"
    # The next request did not wait for the abandoned generation to run out.
    full_run_s = LONG / max(m["edgemoe_last_decode_tokens_per_second"], 1e-9)
    assert elapsed < 30, f"next request took {elapsed:.1f} s"
    assert made < LONG and elapsed < full_run_s + 30


def test_queue_full_gives_429_with_retry_after(server_factory) -> None:
    s: RunningServer = server_factory("--max-queue", "1", *BUSY)
    client = s.http()
    with client.stream("POST", "/v1/completions",
                       json=_long_stream_body(s.model_id, BUSY_TOKENS)) as running:
        assert running.status_code == 200
        # Keep the iterator referenced: dropping it would close the connection (and cancel).
        running_lines = running.iter_lines()
        next(running_lines)  # the engine is now busy with it
        queued: dict = {}

        def wait_in_queue() -> None:
            with s.http(timeout=120) as c:
                r = c.post("/v1/completions", json={"model": s.model_id, "prompt": "queued",
                                                    "max_tokens": 2, "temperature": 0})
                queued["status"] = r.status_code

        t = threading.Thread(target=wait_in_queue)
        t.start()
        _wait_for(lambda: s.metrics()["edgemoe_queue_depth"] == 1 or not t.is_alive(), 30,
                  "a queued request")
        assert t.is_alive(), f"the queued request ended early: {queued}"
        r = client.post("/v1/completions", json={"model": s.model_id, "prompt": "one too many",
                                                 "max_tokens": 2})
        assert r.status_code == 429, r.text
        assert int(r.headers["Retry-After"]) >= 1
        err = r.json()["error"]
        assert err["code"] == "rate_limit_exceeded" and err["type"] and err["message"]
        with pytest.raises(openai.RateLimitError):
            s.openai().completions.create(model=s.model_id, prompt="again", max_tokens=2)
    # Closing the running stream frees the engine; the queued request is then answered.
    t.join(60)
    assert not t.is_alive() and queued["status"] == 200
    assert s.alive()
    client.close()


def test_request_timeout(server_factory) -> None:
    # 2000 tokens in 50 ms would take 40k tokens/s: far beyond this model on any CPU.
    s: RunningServer = server_factory("--timeout", "0.05", *BUSY)
    with s.http() as c:
        r = c.post("/v1/completions", json={"model": s.model_id, "prompt": "slow",
                                            "max_tokens": BUSY_TOKENS, "temperature": 0})
        assert r.status_code == 504, r.text
        assert r.json()["error"]["code"] == "timeout"
    assert s.alive()


def test_api_key(server_factory) -> None:
    key = "sk-test-" + "k" * 24
    s: RunningServer = server_factory(api_key=key)
    assert httpx.get(f"{s.base_url}/health", timeout=10).status_code == 200
    for path in ("/v1/models", "/metrics", "/openapi.json"):
        r = httpx.get(f"{s.base_url}{path}", timeout=10)
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.get(f"{s.base_url}{path}", headers={"Authorization": "Bearer wrong"},
                      timeout=10)
        assert r.status_code == 401, path
        r = httpx.get(f"{s.base_url}{path}", headers={"Authorization": f"Bearer {key}"},
                      timeout=10)
        assert r.status_code == 200, path
    r = httpx.post(f"{s.base_url}/v1/completions", timeout=10,
                   json={"model": s.model_id, "prompt": "hi"})
    assert r.status_code == 401 and r.headers.get("www-authenticate") == "Bearer"
    with pytest.raises(openai.AuthenticationError):
        s.openai(api_key="sk-wrong").models.list()
    out = s.openai().completions.create(model=s.model_id, prompt="hi", max_tokens=2)
    assert out.choices[0].finish_reason in ("stop", "length")


def test_graceful_shutdown_finishes_in_flight(server_factory, direct_model) -> None:
    """SIGTERM while a generation runs: it still completes, whole and correct, then the server
    exits. The answer must arrive after the signal and equal the in-process generation."""
    prompt = "finish me"
    expected = direct_model.generate(prompt, max_tokens=LONG, temperature=0.0)
    s: RunningServer = server_factory("--shutdown-grace", "60", "--log-level", "info")
    result: dict = {}

    def ask() -> None:
        with s.http(timeout=120) as c:
            r = c.post("/v1/completions", json={"model": s.model_id, "prompt": prompt,
                                                "max_tokens": LONG, "temperature": 0})
            result["answered_at"] = time.monotonic()
            result["status"], result["body"] = r.status_code, r.json()

    t = threading.Thread(target=ask)
    t.start()
    _wait_for(lambda: s.metrics()["edgemoe_engine_busy"] == 1 or "status" in result, 30,
              "the generation to start")
    signalled_at = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    t.join(120)
    assert not t.is_alive(), "no answer within 120 s"
    assert result["status"] == 200, result
    assert result["answered_at"] > signalled_at, "the generation ended before the signal"
    choice, usage = result["body"]["choices"][0], result["body"]["usage"]
    assert choice["text"] == expected.text
    assert choice["finish_reason"] == expected.finish_reason
    assert usage["completion_tokens"] == expected.usage.completion_tokens
    assert s.proc.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
    log = s.log()
    assert "Traceback" not in log, log
    assert "generation cancelled" not in log, log
    assert "Application shutdown complete" in log


_CANCELLED = re.compile(r"generation cancelled after (\d+) of at most (\d+) tokens")


def test_shutdown_cancels_a_long_stream(server_factory) -> None:
    """SIGTERM with a grace shorter than the running stream: the generation is cancelled (the
    server says so and after how many tokens), the stream ends with an error event and [DONE]
    rather than a finish_reason, and the process exits within the grace period."""
    s: RunningServer = server_factory("--shutdown-grace", "1", "--log-level", "info", *BUSY)
    pieces, errors, done, cut = [], [], False, False
    with s.http() as c, c.stream("POST", "/v1/completions",
                                 json=_long_stream_body(s.model_id, BUSY_TOKENS)) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        try:
            for line in lines:
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    event = json.loads(line[6:])
                    if "error" in event:
                        errors.append(event["error"])
                    else:
                        pieces.append(event["choices"][0])
        except httpx.HTTPError:
            cut = True  # the server closed the connection mid-stream
    assert s.proc.wait(30) in (0, -signal.SIGTERM)
    assert time.monotonic() - t0 < 2.5
    log = s.log()
    assert "Application shutdown complete" in log
    assert not any(p.get("finish_reason") for p in pieces), "the stream finished"
    assert not cut and done and [e["code"] for e in errors] == ["shutting_down"], (cut, errors)
    cancelled = _CANCELLED.search(log)
    assert cancelled, log
    made, limit = int(cancelled.group(1)), int(cancelled.group(2))
    assert limit == BUSY_TOKENS and 0 < made < BUSY_TOKENS
