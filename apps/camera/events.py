"""Detector events: bounded parsing of JSON lines and the prompt one window of them becomes.

A detector line looks like `{"time": "12:00:01", "zone": "gate", "labels": ["person"],
"confidence": 0.91}`. Every field is cut to a fixed size here, so however long or hostile the
input, an event held in memory (and the prompt built from a window of them) is bounded.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

MAX_LINE_CHARS = 16_384  # longer lines are skipped as malformed, read in pieces
MAX_FIELD_CHARS = 48
MAX_LABELS = 16


class MalformedEvent(ValueError):
    """A line that is not a detector event; the message says why, for the first few."""


@dataclass(frozen=True)
class Event:
    time: str
    zone: str
    labels: tuple[str, ...]
    confidence: float | None = None


def _text(value: Any, name: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise MalformedEvent(f"'{name}' must be a string or number, got {type(value).__name__}")
    text = " ".join(str(value).split())[:MAX_FIELD_CHARS]
    if not text:
        raise MalformedEvent(f"'{name}' is empty")
    return text


def parse_event(line: str) -> Event:
    """One detector line as an Event; raises MalformedEvent naming the problem."""
    try:
        d = json.loads(line)
    except json.JSONDecodeError as e:
        raise MalformedEvent(f"not JSON ({e.msg})") from None
    if not isinstance(d, dict):
        raise MalformedEvent(f"expected a JSON object, got {type(d).__name__}")
    if "time" not in d or "labels" not in d:
        raise MalformedEvent("needs 'time' and 'labels'")
    labels = d["labels"]
    if not isinstance(labels, list) or not labels:
        raise MalformedEvent("'labels' must be a non-empty list")
    conf = d.get("confidence")
    if conf is not None and (isinstance(conf, bool) or not isinstance(conf, int | float)
                             or not math.isfinite(conf)):
        raise MalformedEvent("'confidence' must be a finite number")
    return Event(
        time=_text(d["time"], "time"),
        zone=_text(d.get("zone", "?"), "zone"),
        labels=tuple(_text(x, "labels").lower() for x in labels[:MAX_LABELS]),
        confidence=None if conf is None else min(1.0, max(0.0, float(conf))),
    )


def read_lines(stream: TextIO, limit: int = MAX_LINE_CHARS) -> Iterator[str | None]:
    """The stream's lines, each read at most `limit` characters at a time: an over-long line
    yields None (malformed) and is skipped without ever being held whole."""
    while True:
        line = stream.readline(limit)
        if not line:
            return
        if len(line) >= limit and not line.endswith("\n"):
            while (rest := stream.readline(limit)) and not rest.endswith("\n"):
                pass
            yield None
            continue
        yield line


def prompt_for(window: list[Event]) -> str:
    """A digest of one window, the same size whatever its length: per zone, the labels with
    their counts and the highest confidence, between the first and last time."""
    zones: dict[str, Counter[str]] = {}
    best: dict[str, float] = {}
    for ev in window:
        zones.setdefault(ev.zone, Counter()).update(ev.labels)
        if ev.confidence is not None:
            best[ev.zone] = max(best.get(ev.zone, 0.0), ev.confidence)
    lines = []
    for zone, counts in list(zones.items())[:MAX_LABELS]:
        seen = ", ".join(f"{label} x{n}" for label, n in counts.most_common(MAX_LABELS))
        conf = f" (confidence up to {best[zone]:.2f})" if zone in best else ""
        lines.append(f"- {zone}: {seen}{conf}")
    return (
        f"Camera detections from {window[0].time} to {window[-1].time} "
        f"({len(window)} events):\n" + "\n".join(lines) +
        "\nSummarise them as JSON: event_type, objects, count (objects seen), severity and a "
        "one-line text."
    )
