"""`push`: a bundle is verified before a byte leaves, then handed to the real huggingface_hub
client. No Hub is reachable here, so the client is pointed at endpoints on loopback: one that
records what it is asked and answers 503, and a closed port. What a real Hub does with the
upload is not tested here."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from packager.push import PushError, check_pushable, push

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]


class _Recorder(BaseHTTPRequestHandler):
    """Records each request line and answers 503 (a Hub that is down)."""

    seen: list[str] = []

    def _answer(self) -> None:
        type(self).seen.append(f"{self.command} {self.path}")
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"error": "down for the test"}'
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hub() -> Iterator[tuple[str, list[str]]]:
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def corrupt(tiny_bundle, tmp_path) -> Path:
    out = tmp_path / "corrupt"
    shutil.copytree(tiny_bundle, out)
    with open(out / "model.gguf", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 50)
    return out


@pytest.mark.endpoint
def test_a_sound_bundle_reaches_the_client_call(tiny_bundle, hub):
    url, seen = hub
    with pytest.raises(PushError) as e:
        push(tiny_bundle, "edgemoe-test/tiny", endpoint=url, token="hf_not_a_real_token")
    assert "edgemoe-test/tiny: upload failed" in str(e.value) and "\n" not in str(e.value)
    assert seen and seen[0].startswith("POST /api/repos/create"), seen


@pytest.mark.endpoint
def test_a_corrupt_bundle_is_refused_before_any_request(corrupt, hub):
    url, seen = hub
    with pytest.raises(PushError, match="verification failed: model.gguf: sha256 mismatch"):
        push(corrupt, "edgemoe-test/tiny", endpoint=url, token="hf_not_a_real_token")
    assert seen == []


def test_an_unreachable_hub_is_one_line(tiny_bundle):
    with pytest.raises(PushError, match="upload failed: .*[Cc]onnect") as e:
        push(tiny_bundle, "edgemoe-test/tiny", endpoint="http://127.0.0.1:9", token="hf_x")
    assert "\n" not in str(e.value)


def test_only_the_manifest_and_its_files_are_uploaded(tiny_bundle, tmp_path):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "notes.txt").write_text("not part of the bundle")
    files = check_pushable(bundle)
    assert files[0] == "manifest.json" and "notes.txt" not in files and "model.gguf" in files


def test_cli_push_of_a_corrupt_bundle_is_one_error_line(corrupt):
    r = subprocess.run(
        [sys.executable, "-m", "apps.cli.main", "push", str(corrupt), "edgemoe-test/tiny"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": "hf_x"},
    )
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("error: ") and "sha256 mismatch" in lines[0]
