"""A short soak: bench/soak_server.py's 1,000-request mix against a real `edgemoe serve` process
at a 50 % budget, asserting no 5xx, no unexpected answer and a flat server process
(RSS, threads, descriptors within 5 % after warm-up). The full run is 10,000 requests by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime.server.conftest import REPO

REQUESTS = 1000


@pytest.mark.endpoint
@pytest.mark.engine
@pytest.mark.slow
def test_soak_1000_requests(server_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "soak_server.py"), "--bundle", str(server_bundle),
         "--requests", str(REQUESTS), "--duration", "420", "--max-tokens", "4",
         "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=480,
    )
    assert out.exists(), done.stdout + done.stderr
    report = json.loads(out.read_text())
    summary = done.stdout[-3000:]
    assert report["requests"] == REQUESTS, summary  # not cut short by --duration
    assert report["count_5xx"] == 0, summary
    assert report["unexpected"] == 0, summary
    assert report["server_log_problems"] == [], summary
    for name in ("rss", "rss_anon", "threads", "fds"):
        assert abs(report["resources"][name]["drift"]) <= 0.05, (name, summary)
    kinds = report["per_kind"]
    assert kinds["stream_disconnect"]["n"] > 0 and kinds["oversize_body"]["n"] > 0
    assert report["status_counts"].get("200", 0) > REQUESTS // 4, summary
    assert done.returncode == 0, summary


@pytest.mark.unit
def test_drift_tells_a_breathing_pool_from_a_leak(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread or two descriptors more in the last window (a worker that happened to be
    alive at that sample) is no drift; anything beyond is, in the same units as before."""
    import importlib

    monkeypatch.syspath_prepend(str(REPO / "bench"))  # the bench scripts import their common.py
    soak = importlib.import_module("soak_server")
    Sample, drift = soak.Sample, soak.drift

    def run(threads_end: int, fds_end: int) -> dict:
        samples = [Sample(t, 1000, True, 100, 50, 50, 7, 30, 9) for t in range(9)]
        return drift([*samples, Sample(9, 1000, True, 100, 50, 50, threads_end, fds_end, 9)],
                     1000, 0.0)

    calm = run(8, 32)
    assert calm["threads"]["drift"] == 0.0 and calm["fds"]["drift"] == 0.0
    leak = run(10, 36)
    assert leak["threads"]["drift"] == pytest.approx(2 / 7)
    assert leak["fds"]["drift"] == pytest.approx(4 / 30)
    assert run(5, 30)["threads"]["drift"] == pytest.approx(-1 / 7)
