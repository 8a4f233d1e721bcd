"""Damaged weights behind the HTTP server and the CLI: the request that needs a damaged expert
gets 503 `model_corrupt` (earlier ones were answered), /health says why, the log names the file
and the tensor, every later request is refused until the bundle's files are replaced, then the
server reloads it (fully verified) and answers again; `edgemoe run` exits 1 with one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import httpx
import pytest

from tests.runtime.integrity.damage import BUDGET, damage_expert, pick_expert
from tests.runtime.server.conftest import REPO, start_server

pytestmark = [pytest.mark.endpoint, pytest.mark.engine]

TOKENS = 12


@pytest.fixture(scope="module")
def damaged(bundle_factory, tmp_path_factory):
    src = bundle_factory("qwen3moe-trained", "Q8_0")
    first, later, (layer, expert), _ = pick_expert(src, TOKENS)
    d = damage_expert(src, tmp_path_factory.mktemp("corrupt") / "bundle", layer, expert)
    return src, d, first, later


def _ask(base: str, prompt: str) -> httpx.Response:
    return httpx.post(f"{base}/v1/completions", timeout=60, json={
        "prompt": prompt, "max_tokens": TOKENS, "temperature": 0})


def test_served_corruption_is_503_until_the_bundle_is_replaced(damaged, tmp_path):
    src, d, first, later = damaged
    bundle = tmp_path / "served"
    shutil.copytree(d.bundle, bundle)
    s = start_server(bundle, tmp_path, "--budget", BUDGET)
    try:
        base = s.base_url
        assert _ask(base, first).status_code == 200
        r = _ask(base, later)
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "model_corrupt" and d.tensor in error["message"]
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/health", timeout=10).status_code == 200:
            assert time.monotonic() < deadline, "the fault never reached /health"
            time.sleep(0.05)
        health = httpx.get(f"{base}/health", timeout=10)
        assert health.status_code == 503 and d.tensor in health.json()["message"]
        again = _ask(base, first)
        assert again.status_code == 503 and again.json()["error"]["code"] == "model_corrupt"
        log = s.log()
        assert d.file in log and d.tensor in log and "Traceback" not in log
        # Repaired: a good copy renamed over the damaged file.
        fresh = bundle / f".{d.file}.new"
        shutil.copyfile(src / d.file, fresh)
        os.replace(fresh, bundle / d.file)
        deadline = time.monotonic() + 90
        while httpx.get(f"{base}/health", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, s.log()[-2000:]
            time.sleep(0.2)
        assert _ask(base, later).status_code == 200
    finally:
        s.stop()


def test_cli_run_exits_1_with_one_line(damaged):
    _, d, _, later = damaged
    r = subprocess.run(
        [sys.executable, "-m", "apps.cli.main", "run", str(d.bundle), "--prompt", later,
         "--max-tokens", str(TOKENS), "--budget", BUDGET, "--temperature", "0"],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert r.returncode == 1, (r.returncode, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert d.tensor in lines[0] and "does not match the manifest's checksum" in lines[0]


def test_edgemoe_pull_repairs_a_rotten_install(damaged, tmp_path):
    """A pulled install whose expert rots in place: 503 model_corrupt until `pull` installs a
    good version beside it; the server then reloads the destination (its symlink) and answers."""
    from runtime.bundles.store import pull

    src, d, first, later = damaged
    dest = tmp_path / "kiosk" / "model"
    dest.parent.mkdir()
    pull(src, dest)
    installed = dest.resolve() / d.file
    with open(installed, "r+b") as f:  # the same byte as in `damaged`, rotted on the device
        f.seek(d.offset)
        byte = f.read(1)
        f.seek(d.offset)
        f.write(bytes([byte[0] ^ 0x5A]))
    s = start_server(dest, tmp_path, "--budget", BUDGET)
    try:
        base = s.base_url
        assert _ask(base, first).status_code == 200
        r = _ask(base, later)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_corrupt"
        pull(src, dest)  # a new version beside the rotten one, swapped in atomically
        deadline = time.monotonic() + 90
        while httpx.get(f"{base}/health", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, s.log()[-2000:]
            time.sleep(0.2)
        assert _ask(base, later).status_code == 200
    finally:
        s.stop()
