"""A served model file truncated, rewritten, replaced or deleted while real server processes run.

With a lease (this process owns the file): the writer waits until the server has stopped using
the mapping, requests fail with 503 `model_file_changed`, /health says why, and the server
reloads the bundle once the file is valid again (or exits with a message when asked to).
Without one (CAP_LEASE dropped, file owned by another user): the change is still caught before
a generation, and a truncation during one is reported on the log by faulthandler, not silent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.runtime.server.conftest import N_CTX, REPO, RunningServer, free_port, start_server

pytestmark = [pytest.mark.endpoint, pytest.mark.engine]

BUSY = ("--n-ctx", "2048")
LONG = 1500


def _copy(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    return dest


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _health(s: RunningServer) -> tuple[int, dict]:
    r = httpx.get(f"{s.base_url}/health", timeout=10)
    return r.status_code, r.json()


def _ask(s: RunningServer, prompt: str = "hi", max_tokens: int = 8) -> httpx.Response:
    return httpx.post(f"{s.base_url}/v1/completions", timeout=60, json={
        "model": s.model_id, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0})


class _Stream(threading.Thread):
    """A long streamed completion read to its end on a thread."""

    def __init__(self, s: RunningServer) -> None:
        super().__init__(daemon=True)
        self.s, self.lines, self.status, self.error = s, [], None, None

    def run(self) -> None:
        body = {"model": self.s.model_id, "prompt": "Once upon a time", "max_tokens": LONG,
                "temperature": 0, "stream": True}
        try:
            with httpx.Client(timeout=120) as c, c.stream(
                    "POST", f"{self.s.base_url}/v1/completions", json=body) as r:
                self.status = r.status_code
                for line in r.iter_lines():
                    if line:
                        self.lines.append(line)
        except httpx.HTTPError as e:
            self.error = e

    def error_codes(self) -> list[str]:
        events = [json.loads(x[6:]) for x in self.lines if x.startswith("data: {")]
        return [e["error"]["code"] for e in events if "error" in e]


def test_truncation_under_load_fails_requests_then_reloads(server_bundle: Path, tmp_path: Path,
                                                          direct_model) -> None:
    bundle = _copy(server_bundle, tmp_path / "served")
    model_file = bundle / "model.gguf"
    good = model_file.read_bytes()
    expected = direct_model.generate("hi", max_tokens=8, temperature=0.0).text
    s = start_server(bundle, tmp_path, "--budget", "50%", "--max-queue", "4", *BUSY,
                     "--log-level", "info")
    try:
        stream = _Stream(s)
        stream.start()
        _wait_for(lambda: len(stream.lines) >= 2, 60, "the stream to start")
        queued: list[httpx.Response] = []
        askers = [threading.Thread(target=lambda: queued.append(_ask(s)), daemon=True)
                  for _ in range(2)]
        for t in askers:
            t.start()
        _wait_for(lambda: s.metrics()["edgemoe_queue_depth"] == 2, 30, "two queued requests")
        t0 = time.monotonic()
        os.truncate(model_file, 0)  # held by the lease until the server let go of the mapping
        held_s = time.monotonic() - t0
        stream.join(60)
        for t in askers:
            t.join(60)
        assert s.proc.poll() is None, s.log()
        assert held_s < 10, f"the truncation waited {held_s:.1f} s"
        assert stream.status == 200 and stream.error is None
        assert stream.error_codes() == ["model_file_changed"], stream.lines[-3:]
        assert stream.lines[-1] == "data: [DONE]"
        assert [r.status_code for r in queued] == [503, 503]
        assert all(r.json()["error"]["code"] == "model_file_changed" for r in queued)
        status, health = _health(s)
        assert status == 503 and health["status"] == "error"
        assert "model.gguf" in health["message"] and "truncated" in health["message"]
        r = _ask(s)
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert r.json()["error"]["code"] == "model_file_changed"
        model_file.write_bytes(good)  # the operator puts the file back (in place)
        _wait_for(lambda: _health(s)[0] == 200, 60, "the reload")
        again = _ask(s)
        assert again.status_code == 200 and again.json()["choices"][0]["text"] == expected
        log = s.log()
        assert "closed and its files released" in log and "now serving" in log
        assert "Traceback" not in log and "Bus error" not in log
    finally:
        s.stop()


def test_rewrite_in_place_with_exit_policy_exits_with_a_message(server_bundle: Path,
                                                                tmp_path: Path) -> None:
    bundle = _copy(server_bundle, tmp_path / "served")
    s = start_server(bundle, tmp_path, "--on-model-change", "exit")
    try:
        with open(bundle / "model.gguf", "r+b") as f:  # the lease holds this open meanwhile
            f.seek(4096)
            f.write(b"\xff" * 64)
        assert s.proc.wait(60) == 1
        log = s.log()
        assert "error: a process opened" in log and "--on-model-change is 'exit'" in log
        assert "Traceback" not in log
    finally:
        s.stop()


def test_a_corrupt_rewrite_is_not_served_until_the_file_verifies(server_bundle: Path,
                                                                tmp_path: Path) -> None:
    """The reload after a fault checks the hashes: same-size garbage keeps the server at 503
    (saying why) until the right bytes are back."""
    bundle = _copy(server_bundle, tmp_path / "served")
    model_file = bundle / "model.gguf"
    good = model_file.read_bytes()
    s = start_server(bundle, tmp_path)
    try:
        with open(model_file, "r+b") as f:  # opening for writing breaks the lease
            f.seek(len(good) // 2)
            f.write(b"\xff" * 4096)
        _wait_for(lambda: "sha256 mismatch" in (_health(s)[1].get("message") or ""), 60,
                  "the failed verification to show on /health")
        assert _health(s)[0] == 503 and _ask(s).status_code == 503
        model_file.write_bytes(good)
        _wait_for(lambda: _health(s)[0] == 200, 60, "the reload")
        assert _ask(s).status_code == 200 and s.proc.poll() is None
    finally:
        s.stop()


def test_rename_and_delete_keep_serving_the_old_mapping(server_bundle: Path,
                                                        tmp_path: Path) -> None:
    bundle = _copy(server_bundle, tmp_path / "served")
    model_file = bundle / "model.gguf"
    good = model_file.read_bytes()
    s = start_server(bundle, tmp_path)
    try:
        first = _ask(s).json()["choices"][0]["text"]
        staged = bundle / "model.gguf.new"
        staged.write_bytes(good)
        os.replace(staged, model_file)  # the safe way to update a model
        assert _ask(s).json()["choices"][0]["text"] == first
        model_file.unlink()
        assert _health(s)[0] == 200
        assert _ask(s).json()["choices"][0]["text"] == first
        time.sleep(1.5)  # a watch pass: still no fault
        assert _health(s)[0] == 200
        r = httpx.post(f"{s.base_url}/admin/reload", json={}, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "reload_failed"
        assert _ask(s).status_code == 200  # the failed reload kept the old model
        model_file.write_bytes(good)
        r = httpx.post(f"{s.base_url}/admin/reload", json={}, timeout=60)
        assert r.status_code == 200, r.text
        assert _ask(s).json()["choices"][0]["text"] == first
    finally:
        s.stop()


# --- without a lease ----------------------------------------------------------------------------
def _start_unleased(bundle: Path, log_dir: Path, *args: str) -> RunningServer:
    """A server that may not take leases: CAP_LEASE dropped, the files owned by nobody."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a server without CAP_LEASE")
    for f in bundle.iterdir():
        os.chown(f, 65534, 65534)
    port = free_port()
    log_path = log_dir / f"unleased-{port}.log"
    cmd = ["setpriv", "--inh-caps=-lease", "--bounding-set=-lease", sys.executable, "-m",
           "runtime.server", str(bundle), "--host", "127.0.0.1", "--port", str(port),
           "--n-ctx", str(N_CTX), "--threads", "2", "--log-level", "info", *args]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    s = RunningServer(proc, port, log_path)
    try:
        _wait_for(lambda: proc.poll() is not None or s.alive(), 90, "the server")
    except AssertionError:
        s.stop()
        raise
    assert proc.poll() is None, s.log()
    s.model_id = httpx.get(f"{s.base_url}/health", timeout=10).json()["model"]
    return s


def test_without_a_lease_an_idle_truncation_is_caught_before_generating(
        server_bundle: Path, tmp_path: Path) -> None:
    bundle = _copy(server_bundle, tmp_path / "served")
    good = (bundle / "model.gguf").read_bytes()
    s = _start_unleased(bundle, tmp_path)
    try:
        assert "no file lease" in s.log() and "CAP_LEASE" in s.log()
        assert _ask(s).status_code == 200
        os.truncate(bundle / "model.gguf", 0)  # not held: there is no lease
        r = _ask(s)  # the check before the generation refuses the changed mapping
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_file_changed"
        assert _health(s)[0] == 503
        (bundle / "model.gguf").write_bytes(good)
        _wait_for(lambda: _health(s)[0] == 200, 60, "the reload")
        assert _ask(s).status_code == 200
        assert s.proc.poll() is None and "Bus error" not in s.log()
    finally:
        s.stop()


def test_without_a_lease_a_truncation_mid_generation_is_never_silent(
        server_bundle: Path, tmp_path: Path) -> None:
    """The one case no check can catch: the pages vanish under a running generation. The
    process dies of SIGBUS, and faulthandler puts the fault and every stack on the log."""
    bundle = _copy(server_bundle, tmp_path / "served")
    # One engine thread: with two, both can touch the vanished pages at once, and the second
    # fault kills the process while faulthandler is still writing the first one's stacks.
    s = _start_unleased(bundle, tmp_path, *BUSY, "--threads", "1")
    try:
        stream = _Stream(s)
        stream.start()
        _wait_for(lambda: len(stream.lines) >= 2, 60, "the stream to start")
        os.truncate(bundle / "model.gguf", 0)
        stream.join(60)
        try:
            code = s.proc.wait(30)
        except subprocess.TimeoutExpired:
            code = None  # survived: the fingerprint check won the race
        log = s.log()
        if code is None:
            assert stream.error_codes() == ["model_file_changed"], stream.lines[-3:]
        else:
            assert code == -signal.SIGBUS, (code, log[-2000:])
            assert "Fatal Python error: Bus error" in log
            assert "in decode" in log  # the stack says where
    finally:
        s.stop()
