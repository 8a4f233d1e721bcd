"""Server lifecycle: /health while the model loads, a bundle that fails to load, CORS opt-in."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.runtime.server.conftest import REPO, RunningServer, free_port

pytestmark = [pytest.mark.endpoint, pytest.mark.engine]


def test_health_is_503_until_the_model_is_loaded(server_bundle: Path) -> None:
    """The real model loads behind a gate, so the loading window can be observed for sure.

    (In-process uvicorn on loopback: the gate is the only thing a separate process can't give.)
    """
    import uvicorn

    from runtime.api import load
    from runtime.server import ServerSettings, create_app

    gate = threading.Event()

    def gated_load():
        assert gate.wait(60)
        return load(server_bundle, n_ctx=128, threads=2)

    port = free_port()
    app = create_app(loader=gated_load, settings=ServerSettings(port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                r = httpx.get(f"{base}/health", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "server did not open its socket"
                time.sleep(0.05)
        assert r.status_code == 503 and r.json()["status"] == "loading"
        r = httpx.get(f"{base}/v1/models", timeout=5)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "model_not_ready" and r.headers["Retry-After"]
        gate.set()
        deadline = time.monotonic() + 60
        while httpx.get(f"{base}/health", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "model did not finish loading"
            time.sleep(0.05)
        assert httpx.get(f"{base}/v1/models", timeout=5).status_code == 200
    finally:
        gate.set()
        server.should_exit = True
        thread.join(30)
    assert not thread.is_alive()


def test_bundle_that_fails_to_load_stops_the_server(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-bundle"
    proc = subprocess.run(
        [sys.executable, "-m", "runtime.server", str(missing), "--host", "127.0.0.1",
         "--port", str(free_port()), "--log-level", "warning"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "error:" in proc.stderr and "no-such-bundle" in proc.stderr


def test_cors_is_off_by_default(server: RunningServer) -> None:
    r = httpx.get(f"{server.base_url}/v1/models", headers={"Origin": "http://evil.example"},
                  timeout=10)
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


def test_cors_when_enabled(server_factory) -> None:
    origin = "http://app.local:3000"
    s: RunningServer = server_factory("--cors-origin", origin, api_key="sk-cors")
    pre = httpx.options(f"{s.base_url}/v1/chat/completions", timeout=10, headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == origin
    r = httpx.get(f"{s.base_url}/v1/models", headers={"Origin": origin, **s.headers()},
                  timeout=10)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    other = httpx.get(f"{s.base_url}/v1/models", timeout=10,
                      headers={"Origin": "http://elsewhere", **s.headers()})
    assert "access-control-allow-origin" not in other.headers


def test_model_alias(server_factory, direct_model) -> None:
    s: RunningServer = server_factory("--model-alias", "local-moe", "--model-alias", "gpt-4o")
    client = s.openai()
    assert [m.id for m in client.models.list().data] == ["local-moe"]
    for name in ("local-moe", "gpt-4o", direct_model.name):  # the bundle name keeps working
        out = client.completions.create(model=name, prompt="hi", max_tokens=2, temperature=0)
        assert out.model == "local-moe"
    with pytest.raises(openai.NotFoundError, match="answering to 'local-moe', '"):
        client.completions.create(model="gpt-nope", prompt="hi", max_tokens=2)


def test_any_model_answers_every_name(server_factory) -> None:
    s: RunningServer = server_factory("--any-model")
    client = s.openai()
    out = client.completions.create(model="gpt-nope", prompt="hi", max_tokens=2, temperature=0)
    assert out.model == s.model_id
