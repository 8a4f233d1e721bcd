"""A camera soak: a synthetic detector feeds `python -m apps.camera` through a pipe while its RSS
is sampled from outside, and every printed line is checked against the output schema.

Shared by tests/apps/test_camera.py (2,000 events) and bench/soak_camera.py (as long as asked).
Only counts are kept while the soak runs, so the harness's own memory stays flat too.
"""

from __future__ import annotations

import json
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs
import psutil

from apps.camera.schema import OUTPUT_SCHEMA

REPO = Path(__file__).resolve().parents[2]
ZONES = ("gate", "driveway", "yard", "loading-bay", "lobby")
LABELS = ("person", "car", "truck", "dog", "cat", "bicycle", "package", "bird")
MALFORMED_EVERY = 250  # one broken line in this many, to keep that path busy too


def synthetic_events(n: int, seed: int = 0) -> Iterator[str]:
    """`n` detector lines (deterministic), every MALFORMED_EVERY-th of them broken."""
    rng = random.Random(seed)
    for i in range(n):
        if i % MALFORMED_EVERY == MALFORMED_EVERY - 1:
            yield '{"time": "broken", "labels": \n'
            continue
        labels = rng.sample(LABELS, rng.randint(1, 3))
        event = {"time": f"{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}",
                 "zone": rng.choice(ZONES), "labels": labels,
                 "confidence": round(rng.uniform(0.3, 0.99), 2)}
        yield json.dumps(event) + "\n"


def malformed_in(n: int) -> int:
    return n // MALFORMED_EVERY


@dataclass
class SoakResult:
    events: int
    seconds: float
    returncode: int
    rss: list[tuple[float, int]]  # (seconds since start, bytes)
    valid_lines: int
    invalid_lines: int
    first_invalid: list[str]
    report: dict[str, Any]
    stderr_tail: str
    warmup_fraction: float = 0.2

    def _after_warmup(self) -> list[tuple[float, int]]:
        skip = max(1, int(len(self.rss) * self.warmup_fraction))
        return self.rss[skip:]

    @property
    def baseline(self) -> float:
        """RSS just after warm-up: the median of the first few samples past it."""
        after = self._after_warmup()
        return float(statistics.median(b for _, b in after[:5]))

    @property
    def peak(self) -> int:
        return max(b for _, b in self._after_warmup())

    @property
    def growth(self) -> float:
        """Peak over baseline after warm-up, as a fraction (0.05 = 5 % more)."""
        return self.peak / self.baseline - 1

    def summary(self) -> dict[str, Any]:
        mib = 1 << 20
        return {
            "events": self.events, "seconds": round(self.seconds, 1),
            "rss_samples": len(self.rss), "rss_first_mib": round(self.rss[0][1] / mib, 2),
            "rss_baseline_mib": round(self.baseline / mib, 2),
            "rss_peak_mib": round(self.peak / mib, 2),
            "rss_growth_pct": round(100 * self.growth, 2),
            "valid_lines": self.valid_lines, "invalid_lines": self.invalid_lines,
            "camera": self.report,
        }


@dataclass
class _Lines:
    valid: int = 0
    invalid: int = 0
    first_invalid: list[str] = field(default_factory=list)


def run_soak(base_url: str, n_events: int, *, window: int = 25, max_tokens: int = 128,
             interval_s: float = 0.5, seed: int = 0, timeout_s: float = 600.0,
             extra_args: tuple[str, ...] = ()) -> SoakResult:
    """Feed `n_events` synthetic events to a camera process talking to `base_url` and watch it."""
    cmd = [sys.executable, "-m", "apps.camera", "--url", f"{base_url}/v1", "--window",
           str(window), "--max-tokens", str(max_tokens), "--flush-after", "2", *extra_args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdin and proc.stdout and proc.stderr
    validator = jsonschema_rs.validator_for(OUTPUT_SCHEMA)
    lines = _Lines()
    stderr: list[str] = []
    rss: list[tuple[float, int]] = []

    def feed() -> None:
        try:
            for line in synthetic_events(n_events, seed):
                proc.stdin.write(line)  # blocks while the camera pushes back
            proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    def read_out() -> None:
        for line in proc.stdout:
            try:
                ok = validator.is_valid(json.loads(line))
            except json.JSONDecodeError:
                ok = False
            if ok:
                lines.valid += 1
            else:
                lines.invalid += 1
                if len(lines.first_invalid) < 3:
                    lines.first_invalid.append(line[:300])

    def read_err() -> None:
        for line in proc.stderr:
            stderr.append(line)
            del stderr[:-50]

    threads = [threading.Thread(target=f, daemon=True) for f in (feed, read_out, read_err)]
    for t in threads:
        t.start()
    watched = psutil.Process(proc.pid)
    deadline = t0 + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            rss.append((time.monotonic() - t0, watched.memory_info().rss))
        except psutil.NoSuchProcess:
            break
        time.sleep(interval_s)
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)
    for t in threads:
        t.join(30)
    report: dict[str, Any] = {}
    for line in stderr:
        if line.startswith("camera: "):
            report = json.loads(line[len("camera: "):])
    return SoakResult(n_events, time.monotonic() - t0, proc.returncode, rss, lines.valid,
                      lines.invalid, lines.first_invalid, report, "".join(stderr[-20:]))
