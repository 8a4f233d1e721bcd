"""Reload in the field, against real server processes: POST /admin/reload and SIGHUP switch
bundles without dropping the request in flight; a failed reload keeps the old model serving."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.runtime.server.conftest import RunningServer, start_server

pytestmark = [pytest.mark.endpoint, pytest.mark.engine]

KEY = "sk-reload-" + "r" * 20


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def _reload(s: RunningServer, body: dict | None = None, **kw) -> httpx.Response:
    headers = {**s.headers(), **kw.pop("headers", {})}
    return httpx.post(f"{s.base_url}/admin/reload", json={} if body is None else body,
                      headers=headers, timeout=120, **kw)


def _mapped(s: RunningServer, path: Path) -> bool:
    return str(path) in Path(f"/proc/{s.proc.pid}/maps").read_text()


def test_reload_to_another_bundle_keeps_the_stream_in_flight(server_bundle: Path,
                                                             tmp_path: Path,
                                                             direct_model) -> None:
    first = _copy(server_bundle, tmp_path / "first")
    second = _copy(server_bundle, tmp_path / "second")
    prompt, n = "The reload must not cut this", 300
    expected = direct_model.generate(prompt, max_tokens=n, temperature=0.0).text
    s = start_server(first, tmp_path, api_key=KEY)
    try:
        lines: list[str] = []

        def stream() -> None:
            body = {"model": "first", "prompt": prompt, "max_tokens": n, "temperature": 0,
                    "stream": True}
            with s.http(timeout=120) as c, c.stream("POST", "/v1/completions", json=body) as r:
                assert r.status_code == 200
                lines.extend(x for x in r.iter_lines() if x)

        t = threading.Thread(target=stream, daemon=True)
        t.start()
        deadline = time.monotonic() + 60
        while s.metrics()["edgemoe_engine_busy"] != 1:
            assert time.monotonic() < deadline and t.is_alive(), "the stream did not start"
            time.sleep(0.02)
        assert _reload(s, headers={"Authorization": "Bearer wrong"}).status_code == 401
        r = _reload(s, {"bundle": str(second)})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["status"] == "reloaded" and answer["model"] == "second"
        assert answer["previous_model"] == "first" and answer["bundle"] == str(second)
        t.join(120)
        events = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
        assert lines[-1] == "data: [DONE]" and not any("error" in e for e in events)
        assert "".join(c["text"] for e in events for c in e["choices"]) == expected
        assert all(e["model"] == "first" for e in events)
        client = s.openai()
        assert [m.id for m in client.models.list().data] == ["second"]
        out = client.completions.create(model="second", prompt="hi", max_tokens=4)
        assert out.model == "second"
        assert httpx.post(f"{s.base_url}/v1/completions", headers=s.headers(), timeout=30,
                          json={"model": "first", "prompt": "x"}).status_code == 404
        deadline = time.monotonic() + 30  # the old model closes once its stream is done
        while _mapped(s, first / "model.gguf"):
            assert time.monotonic() < deadline, "the previous model was never unmapped"
            time.sleep(0.1)
        assert _mapped(s, second / "model.gguf")
        assert "Traceback" not in s.log()
    finally:
        s.stop()


def test_failed_reload_keeps_the_old_model(server_factory, tmp_path: Path) -> None:
    s: RunningServer = server_factory()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    for body in ({"bundle": str(tmp_path / "missing")}, {"bundle": str(broken)}):
        r = _reload(s, body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "reload_failed" and err["param"] == "bundle"
        assert "previous model is still served" in err["message"]
        assert httpx.get(f"{s.base_url}/health", timeout=10).json()["model"] == s.model_id
        out = s.openai().completions.create(model=s.model_id, prompt="still", max_tokens=2)
        assert out.choices[0].finish_reason in ("stop", "length")


def test_reload_body_is_checked(server_factory) -> None:
    s: RunningServer = server_factory()
    url = f"{s.base_url}/admin/reload"
    r = httpx.post(url, content=b"", timeout=30)  # no JSON content type: a form post
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(url, content=b"{oops", timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    for body in ({"bundle": 5}, {"bundel": "x"}, {"bundle": ""}):
        r = _reload(s, body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_value", body
    r = httpx.post(url, content=b"", timeout=60, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["model"] == s.model_id


def test_sighup_reloads_the_same_bundle_while_serving(server_factory) -> None:
    s: RunningServer = server_factory("--log-level", "info")
    statuses: list[int] = []
    stop = threading.Event()

    def keep_asking() -> None:
        with s.http(timeout=60) as c:
            while not stop.is_set():
                statuses.append(c.post("/v1/completions", json={
                    "model": s.model_id, "prompt": "during", "max_tokens": 2}).status_code)

    t = threading.Thread(target=keep_asking, daemon=True)
    t.start()
    time.sleep(0.3)
    s.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 60
    while "now serving" not in s.log():
        assert time.monotonic() < deadline, s.log()
        time.sleep(0.1)
    time.sleep(0.3)
    stop.set()
    t.join(60)
    assert s.proc.poll() is None and "SIGHUP: reloading" in s.log()
    assert statuses and set(statuses) == {200}, statuses
