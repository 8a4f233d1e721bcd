"""The camera: bounded parsing and queueing, the schema and backoff as pure logic, then the real
thing against a real server (structured summaries, dropped invalid answers, 429 backoff, soak)."""

from __future__ import annotations

import io
import json
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from apps.camera.client import Backoff, retry_after
from apps.camera.events import (
    MAX_FIELD_CHARS,
    MAX_LABELS,
    Event,
    MalformedEvent,
    parse_event,
    prompt_for,
    read_lines,
)
from apps.camera.pipeline import CameraConfig, CameraReport, EventQueue, read_events
from apps.camera.schema import (
    OUTPUT_SCHEMA,
    RESPONSE_FORMAT,
    SUMMARY_SCHEMA,
    InvalidSummary,
    output_line,
    parse_summary,
)
from tests.apps.browser import artifacts_dir
from tests.apps.camera_soak import malformed_in, run_soak, synthetic_events
from tests.runtime.server.conftest import REPO, RunningServer, start_server

pytestmark = pytest.mark.unit

GOOD = {"event_type": "person", "objects": ["person", "car"], "count": 2, "severity": "low",
        "text": "Two visitors at the gate."}


# --- events ---------------------------------------------------------------------------------
def test_event_fields_are_cut_to_size():
    ev = parse_event(json.dumps({"time": 7, "zone": "g" * 500, "confidence": 3,
                                 "labels": ["Person\n"] + ["x"] * 100}))
    assert ev.time == "7" and len(ev.zone) == MAX_FIELD_CHARS and ev.confidence == 1.0
    assert ev.labels[0] == "person" and len(ev.labels) == MAX_LABELS
    assert parse_event('{"time": "t", "labels": ["car"]}').zone == "?"


@pytest.mark.parametrize("line, message", [
    ("not json", "not JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"zone": "x"}', "needs 'time' and 'labels'"),
    ('{"time": "t", "labels": []}', "'labels' must be a non-empty list"),
    ('{"time": {"a": 1}, "labels": ["car"]}', "'time' must be a string or number, got dict"),
    ('{"time": "t", "labels": ["car"], "confidence": "high"}', "'confidence' must be a finite"),
    ('{"time": "t", "labels": [" "]}', "'labels' is empty"),
])
def test_malformed_events_say_why(line, message):
    with pytest.raises(MalformedEvent, match=message):
        parse_event(line)


def test_an_overlong_line_is_skipped_in_pieces():
    stream = io.StringIO("a" * 100 + "\n" + "b" * 10_000 + "\nshort\nlast")
    assert list(read_lines(stream, limit=256)) == ["a" * 100 + "\n", None, "short\n", "last"]


def test_prompt_size_does_not_grow_with_the_window():
    def window(n: int) -> list[Event]:
        return [Event(f"t{i}", "gate", ("person", "car"), 0.5) for i in range(n)]

    small, big = prompt_for(window(5)), prompt_for(window(5000))
    assert "gate: person x5000, car x5000 (confidence up to 0.50)" in big
    assert len(big) - len(small) < 20


# --- schema ---------------------------------------------------------------------------------
def test_summary_is_validated_and_put_on_one_line():
    doc = parse_summary(json.dumps({**GOOD, "text": " Two\nvisitors \t at the gate. "}))
    assert doc["text"] == "Two visitors at the gate."
    line = output_line({"from": "a", "to": "b", "events": 3, "zones": ["gate"], "summary": doc})
    assert "\n" not in line and json.loads(line)["summary"] == doc


@pytest.mark.parametrize("answer, where", [
    ("", "not JSON"),
    ('{"event_type": "person"', "not JSON"),
    (json.dumps({**GOOD, "severity": "extreme"}), "/severity"),
    (json.dumps({**GOOD, "count": -1}), "/count"),
    (json.dumps({**GOOD, "objects": ["x"] * 9}), "/objects"),
    (json.dumps({**GOOD, "text": "\n "}), "/text"),
    (json.dumps({**GOOD, "extra": 1}), "Additional properties"),
    (json.dumps([GOOD]), "not of type"),
])
def test_invalid_summaries_are_refused(answer, where):
    with pytest.raises(InvalidSummary, match=where):
        parse_summary(answer)


def test_output_lines_are_checked_too():
    with pytest.raises(InvalidSummary, match="output"):
        output_line({"from": "a", "to": "b", "events": 0, "zones": ["g"], "summary": GOOD})


def test_request_shape_is_openais_json_schema_format():
    assert RESPONSE_FORMAT["type"] == "json_schema"
    spec = RESPONSE_FORMAT["json_schema"]
    assert spec["name"] == "event_summary" and spec["strict"] is True
    assert spec["schema"] is SUMMARY_SCHEMA and OUTPUT_SCHEMA["properties"]["summary"] is \
        SUMMARY_SCHEMA


def test_schema_keeps_to_what_the_server_can_enforce():
    """The server refuses schema keywords it cannot enforce; this one passes as is."""
    from runtime.structured.grammar import check_schema

    check_schema(SUMMARY_SCHEMA, "response_format")


# --- backoff and queueing ---------------------------------------------------------------------
def test_backoff_doubles_respects_retry_after_and_is_capped():
    b, rng = Backoff(base_s=0.5, cap_s=8, jitter=0), random.Random(0)
    assert [b.delay(n, None, rng) for n in range(6)] == [0.5, 1, 2, 4, 8, 8]
    assert b.delay(0, 3, rng) == 3 and b.delay(4, 3, rng) == 8 and b.delay(0, 60, rng) == 8
    jittered = Backoff(base_s=1, cap_s=8, jitter=0.1)
    assert all(1 <= jittered.delay(0, None, rng) <= 1.1 for _ in range(100))
    assert retry_after("2") == 2 and retry_after("soon") is None and retry_after(None) is None
    with pytest.raises(ValueError):
        Backoff(base_s=0)


def _events(n: int) -> list[Event]:
    return [Event(f"t{i}", "gate", ("person",)) for i in range(n)]


def test_full_queue_pushes_back_on_the_reader():
    stop = threading.Event()
    q = EventQueue(capacity=4, drop_oldest=False, stop=stop)
    fed = threading.Thread(target=lambda: [q.put(e) for e in _events(10)], daemon=True)
    fed.start()
    time.sleep(0.3)
    assert fed.is_alive()  # blocked: 4 held, 6 waiting in the detector's pipe
    got = [e.time for e in q.take_window(3, 10)]
    assert got == ["t0", "t1", "t2"]
    while len(got) < 9:  # each window taken lets the reader go on
        got += [e.time for e in q.take_window(3, 10)]
    fed.join(5)
    q.close()
    got += [e.time for e in q.take_window(3, 10)]  # the partial last one, at end of input
    assert got == [f"t{i}" for i in range(10)] and q.take_window(3, 10) is None
    assert q.dropped == 0


def test_live_feed_drops_the_oldest_and_counts_them():
    q = EventQueue(capacity=4, drop_oldest=True, stop=threading.Event())
    for e in _events(10):
        q.put(e)
    q.close()
    assert [e.time for e in q.take_window(10, 1)] == ["t6", "t7", "t8", "t9"] and q.dropped == 6


def test_a_quiet_feed_flushes_a_partial_window():
    q = EventQueue(capacity=8, drop_oldest=False, stop=threading.Event())
    for e in _events(2):
        q.put(e)
    t0 = time.monotonic()
    assert len(q.take_window(5, flush_after_s=0.3)) == 2
    assert 0.25 <= time.monotonic() - t0 < 3


def test_reader_counts_malformed_lines_and_keeps_few_messages():
    lines = "".join(synthetic_events(1000))
    q = EventQueue(capacity=2000, drop_oldest=False, stop=threading.Event())
    report = CameraReport()
    read_events(io.StringIO(lines + "junk\n" * 50), q, report, threading.Event())
    assert report.malformed == malformed_in(1000) + 50
    assert report.events == 1000 - malformed_in(1000) and len(report.first_errors) == 5


def test_bad_settings_are_usage_errors():
    with pytest.raises(ValueError, match="window <= queue_events"):
        CameraConfig(window=50, queue_events=10)
    r = subprocess.run([sys.executable, "-m", "apps.camera", "--max-tokens", "0"],
                       capture_output=True, text=True, cwd=REPO, timeout=60,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "max_tokens must be >= 1" in r.stderr


def test_sigterm_stops_a_waiting_camera_with_its_report():
    """Nothing listens on the port: the camera retries; SIGTERM ends it cleanly, counts out."""
    from tests.runtime.server.conftest import free_port

    camera = subprocess.Popen(
        [sys.executable, "-m", "apps.camera", "--url", f"http://127.0.0.1:{free_port()}/v1",
         "--backoff", "0.1", "--retries", "1000"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=REPO)
    time.sleep(2.0)
    camera.send_signal(signal.SIGTERM)
    out, err = camera.communicate(timeout=30)
    assert camera.returncode == 0 and out == "", err
    report = json.loads(err.rsplit("camera: ", 1)[1])
    assert report["retries"] >= 1 and report["summaries"] == 0


# --- against a real server ----------------------------------------------------------------------
N_CTX = "2048"  # a window's prompt plus a summary fits with room to spare


@pytest.fixture(scope="module")
def camera_server(tiny_bundle: Path, tmp_path_factory) -> RunningServer:
    s = start_server(tiny_bundle, tmp_path_factory.mktemp("camera"), "--n-ctx", N_CTX)
    yield s
    s.stop()


@pytest.fixture(scope="module", params=("llama.cpp", "onnx"))
def camera_servers(request, bundle_factory, tmp_path_factory) -> RunningServer:
    """The structured answers come from either backend: the GGUF and the ONNX build of one
    bundle."""
    bundle = bundle_factory("qwen3moe-tiny", "F16", format="gguf,onnx")
    s = start_server(bundle, tmp_path_factory.mktemp(f"camera-{request.param}"), "--n-ctx",
                     N_CTX, "--backend", request.param)
    yield s
    s.stop()


def _camera(server: RunningServer, events: str, *args: str, timeout: float = 180
            ) -> tuple[list[dict], dict, subprocess.CompletedProcess[str]]:
    proc = subprocess.run(
        [sys.executable, "-m", "apps.camera", "--url", f"{server.base_url}/v1", *args],
        input=events, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    report = json.loads(proc.stderr.rsplit("camera: ", 1)[1]) if "camera: " in proc.stderr \
        else {}
    return [json.loads(x) for x in proc.stdout.splitlines()], report, proc


@pytest.mark.endpoint
def test_structured_summaries_through_a_real_server(camera_servers: RunningServer):
    events = "".join(synthetic_events(12, seed=1)) + "broken line\n"
    rows, report, proc = _camera(camera_servers, events, "--window", "4", "--max-tokens", "128")
    assert proc.returncode == 0, proc.stderr
    assert report["summaries"] == 3 and report["invalid"] == 0 and report["malformed"] == 1, report
    assert [(r["from"], r["to"], r["events"]) for r in rows] == [
        ("00:00:00", "00:00:03", 4), ("00:00:04", "00:00:07", 4), ("00:00:08", "00:00:11", 4)]
    for row in rows:
        parse_summary(json.dumps(row["summary"]))  # schema-valid, as the camera checked


@pytest.mark.endpoint
def test_an_answer_cut_short_is_counted_never_printed(camera_servers: RunningServer):
    """max_tokens far below the shortest summary: every answer is truncated JSON."""
    events = "".join(synthetic_events(6, seed=2))
    rows, report, proc = _camera(camera_servers, events, "--window", "3", "--max-tokens", "4")
    assert proc.returncode == 0, proc.stderr
    assert rows == [] and proc.stdout == ""
    assert report["invalid"] == report["windows"] == 2 and report["summaries"] == 0
    assert "invalid summary dropped" in report["first_errors"][0]


@pytest.mark.endpoint
def test_camera_backs_off_while_the_server_is_busy(tiny_bundle: Path, tmp_path: Path):
    """No queue and a long generation in flight: the camera meets real 429s, waits (Retry-After,
    growing, capped) and gets every summary once the server is free; nothing is lost."""
    server = start_server(tiny_bundle, tmp_path, "--max-queue", "0", "--n-ctx", "4096")
    events = tmp_path / "events.jsonl"
    events.write_text("".join(synthetic_events(4, seed=3)))
    camera: subprocess.Popen[str] | None = None
    try:
        busy = {"model": server.model_id, "prompt": "Once", "max_tokens": 4000, "stream": True}
        with httpx.Client(base_url=server.base_url, timeout=60) as http, \
                http.stream("POST", "/v1/completions", json=busy) as running:
            lines = running.iter_lines()  # held: closing it would cancel the generation
            while not next(lines).startswith("data:"):
                pass
            camera = subprocess.Popen(
                [sys.executable, "-m", "apps.camera", "--url", f"{server.base_url}/v1",
                 "--input", str(events), "--window", "2", "--max-tokens", "128",
                 "--backoff", "0.2", "--backoff-cap", "1", "--retries", "200"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
            time.sleep(4.0)  # the camera meets 429s meanwhile
            assert camera.poll() is None  # still waiting, not given up
        out, err = camera.communicate(timeout=300)
    finally:
        if camera is not None and camera.poll() is None:
            camera.kill()
            camera.wait(30)
        server.stop()
    assert camera.returncode == 0, err
    report = json.loads(err.rsplit("camera: ", 1)[1])
    assert report["rate_limited"] >= 2 and report["retries"] >= report["rate_limited"], report
    assert report["summaries"] == 2 and report["failed"] == 0, report
    assert len(out.splitlines()) == 2


SOAK_EVENTS = 2000
SOAK_WINDOW = 50  # 40 summaries: enough requests to see a trend, few enough for 2 cores


@pytest.mark.endpoint
@pytest.mark.slow
def test_soak_memory_stays_flat_and_nothing_invalid_is_printed(camera_server: RunningServer):
    result = run_soak(camera_server.base_url, SOAK_EVENTS, window=SOAK_WINDOW, max_tokens=128,
                      interval_s=0.25, timeout_s=600)
    summary = result.summary()
    out = artifacts_dir("camera")
    (out / "soak.json").write_text(json.dumps({**summary, "rss": result.rss}, indent=1))
    print("camera soak:", json.dumps(summary))
    assert result.returncode == 0, result.stderr_tail
    report = result.report
    assert report["events"] == SOAK_EVENTS - malformed_in(SOAK_EVENTS)
    assert report["malformed"] == malformed_in(SOAK_EVENTS)
    assert result.invalid_lines == 0 and result.valid_lines == report["summaries"]
    assert report["invalid"] == 0 and report["failed"] == 0, report
    assert report["summaries"] == report["windows"] >= SOAK_EVENTS // SOAK_WINDOW
    assert len(result.rss) >= 20, "too few RSS samples to judge"
    assert result.growth <= 0.05, summary
