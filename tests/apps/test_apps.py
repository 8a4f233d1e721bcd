"""The example deployments, driven like a person would: stdin in, answers out, real engines."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

import runtime
from apps.camera.__main__ import parse_events, prompt_for, windows
from apps.kiosk.__main__ import SORRY, KioskSession, KioskTally, run_kiosk
from runtime.generation import SamplingParams
from tests.runtime.server.conftest import start_server

pytestmark = pytest.mark.unit


def test_kiosk_session_trims_and_forgets():
    s = KioskSession(max_input_chars=10, max_turns=2, idle_reset_s=60)
    msgs = s.messages_for("x" * 50, now=0.0)
    assert msgs[-1]["content"] == "x" * 10 and msgs[0]["role"] == "system"
    for i in range(5):
        s.remember(f"a{i}")
        s.messages_for(f"q{i}", now=1.0 + i)
    assert len(s.history) <= 3
    s.remember("a")
    assert [m["content"] for m in s.messages_for("late", now=1000.0)][1:] == ["late"]


def test_camera_skips_malformed_lines_and_windows_events():
    errors: list[str] = []
    lines = [
        '{"time": "t1", "zone": "gate", "labels": ["person"]}',
        "not json",
        '{"zone": "x"}',
        '{"time": "t2", "labels": ["car", "person"]}',
    ]
    events = list(parse_events(lines, errors))
    assert [e.time for e in events] == ["t1", "t2"] and len(errors) == 2
    assert [len(w) for w in windows(events * 3, 4)] == [4, 2]
    assert "t2 ?: car, person" in prompt_for(events)


SHORT = SamplingParams(max_tokens=8, temperature=0.3)


@pytest.mark.engine
def test_kiosk_answers_every_question(tiny_bundle):
    out = io.StringIO()
    with runtime.load(tiny_bundle) as model:
        tally = run_kiosk(
            model,
            KioskSession(),
            io.StringIO("hello\n\nwhere is the exit?\nthanks\n"),
            out,
            SHORT,
        )
    assert tally == KioskTally(answered=3, failed=0)
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 4  # greeting + 3 answers
    assert SORRY not in lines, lines


@pytest.mark.engine
def test_kiosk_apologises_for_a_failed_answer_and_goes_on(tiny_bundle):
    """A question too long for the context window fails; the visitor sees SORRY, the tally
    counts a failure (not an answer), and the next question is answered."""
    out = io.StringIO()
    questions = "word " * 400 + "\nthanks\n"
    with runtime.load(tiny_bundle, n_ctx=128) as model:
        tally = run_kiosk(model, KioskSession(max_input_chars=5000), io.StringIO(questions),
                          out, SHORT)
    assert tally == KioskTally(answered=1, failed=1)
    lines = out.getvalue().strip().splitlines()
    assert lines[1] == SORRY and lines[2] != SORRY


@pytest.mark.engine
@pytest.mark.endpoint
def test_camera_summarises_through_a_real_server(tiny_bundle, tmp_path):
    server = start_server(tiny_bundle, tmp_path)
    try:
        events = (
            "\n".join(
                json.dumps({"time": f"t{i}", "zone": "gate", "labels": ["person"]})
                for i in range(4)
            )
            + "\nbroken line\n"
        )
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "apps.camera",
                "--url",
                f"{server.base_url}/v1",
                "--window",
                "2",
                "--max-tokens",
                "8",
            ],
            input=events,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop()
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [(r["from"], r["to"]) for r in rows] == [("t0", "t1"), ("t2", "t3")]
    assert "skipped 1 malformed" in proc.stderr
