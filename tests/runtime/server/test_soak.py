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

pytestmark = [pytest.mark.endpoint, pytest.mark.engine, pytest.mark.slow]

REQUESTS = 1000


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
