"""Fixtures for the HTTP server tests: real server processes on loopback over a real bundle.

Every server is `python -m runtime.server BUNDLE ...` in its own process (the same `serve()` the
CLI calls), reached over 127.0.0.1 with a free port, and waited for through /health with a
bounded timeout. Nothing here fakes the engine.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
N_CTX = 512  # every test server and the direct model use the same window
THREADS = 2
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (labels as written by the server)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"malformed metrics line: {line!r}"
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


@dataclass
class RunningServer:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    api_key: str | None = None
    model_id: str = ""
    extra_args: tuple[str, ...] = field(default_factory=tuple)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def http(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, headers=self.headers(), timeout=timeout)

    def openai(self, timeout: float = 60.0, api_key: str | None = None):
        import openai

        return openai.OpenAI(base_url=f"{self.base_url}/v1",
                             api_key=api_key or self.api_key or "unused", max_retries=0,
                             timeout=timeout)

    def metrics(self) -> dict[str, float]:
        r = httpx.get(f"{self.base_url}/metrics", headers=self.headers(), timeout=30)
        assert r.status_code == 200, r.text
        return parse_metrics(r.text)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        """The process runs and answers a quick request."""
        if self.proc.poll() is not None:
            return False
        try:
            return httpx.get(f"{self.base_url}/health", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(bundle: Path, log_dir: Path, *args: str, api_key: str | None = None,
                 env: dict[str, str] | None = None) -> RunningServer:
    """Start a server process and wait (bounded) until /health says 200."""
    last_log = ""
    for attempt in range(3):  # another process may take the free port before we bind it
        port = free_port()
        log_path = log_dir / f"server-{port}-{attempt}.log"
        cmd = [sys.executable, "-m", "runtime.server", str(bundle), "--host", "127.0.0.1",
               "--port", str(port), "--n-ctx", str(N_CTX), "--threads", str(THREADS),
               "--log-level", "warning", *args]
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        full_env.pop("EDGEMOE_API_KEY", None)
        if api_key is not None:
            full_env["EDGEMOE_API_KEY"] = api_key
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                    env=full_env)
        server = RunningServer(proc, port, log_path, api_key, extra_args=tuple(args))
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"{server.base_url}/health", timeout=2)
                if r.status_code == 200:
                    server.model_id = r.json()["model"]
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        server.stop()
        last_log = server.log()
        if "address already in use" not in last_log.lower():
            break
    raise RuntimeError(f"server did not become healthy within {START_TIMEOUT_S} s:\n{last_log}")


@pytest.fixture(scope="session")
def server_bundle(tiny_bundle: Path) -> Path:
    return tiny_bundle


@pytest.fixture(scope="session")
def server(server_bundle: Path, tmp_path_factory) -> Iterator[RunningServer]:
    """The shared server: default settings but room for 16 concurrent clients."""
    s = start_server(server_bundle, tmp_path_factory.mktemp("server"), "--max-queue", "32")
    yield s
    s.stop()


@pytest.fixture
def server_factory(server_bundle: Path, tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start extra servers with their own options; all are stopped after the test."""
    started: list[RunningServer] = []

    def make(*args: str, api_key: str | None = None) -> RunningServer:
        s = start_server(server_bundle, tmp_path, *args, api_key=api_key)
        started.append(s)
        return s

    yield make
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def direct_model(server_bundle: Path):
    """The same bundle loaded in this process, as a Python user would, for comparisons."""
    from runtime.api import load

    model = load(server_bundle, n_ctx=N_CTX, threads=THREADS)
    yield model
    model.close()
