"""The camera's loop: a reader thread feeds a bounded event queue, the main thread summarises one
window at a time through the server and prints only summaries that validate.

Memory stays flat over an endless stream: lines are read in bounded pieces, events are cut to
fixed sizes, at most `queue_events` wait (then the reader blocks, pushing back on the detector's
pipe, or with `drop_oldest` the oldest is dropped and counted), and the report keeps counters and
the first few error messages only.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from apps.camera.client import Client, RequestFailed, Stopped
from apps.camera.events import Event, MalformedEvent, parse_event, prompt_for, read_lines
from apps.camera.schema import RESPONSE_FORMAT, InvalidSummary, output_line, parse_summary

SYSTEM = ("You watch a security camera's detector log and report what happened as JSON. "
          "Severity is high for people or vehicles at night or in restricted zones.")
KEEP_ERRORS = 5


@dataclass(frozen=True)
class CameraConfig:
    """How events become summaries. window: events per summary; flush_after_s: a partial window
    is summarised once no event came for this long (a quiet live feed still reports)."""

    window: int = 20
    flush_after_s: float = 5.0
    queue_events: int = 256
    drop_oldest: bool = False
    max_tokens: int = 96
    model: str | None = None

    def __post_init__(self) -> None:
        if self.window < 1 or self.queue_events < self.window:
            raise ValueError(f"camera needs 1 <= window <= queue_events, got window="
                             f"{self.window}, queue_events={self.queue_events}")
        if not self.flush_after_s > 0:
            raise ValueError(f"flush_after_s must be > 0, got {self.flush_after_s}")
        if self.max_tokens < 1:  # the server checks the rest; this one would waste a request
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class CameraReport:
    """Counts of one run; the camera prints it as one JSON line on stderr at the end."""

    events: int = 0  # valid events read
    malformed: int = 0  # lines skipped
    dropped_events: int = 0  # dropped from a full queue (drop_oldest)
    windows: int = 0
    summaries: int = 0  # lines printed, each valid against OUTPUT_SCHEMA
    invalid: int = 0  # answers that did not validate: counted, never printed
    failed: int = 0  # windows whose request failed for good
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    first_errors: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if len(self.first_errors) < KEEP_ERRORS:
            self.first_errors.append(message[:300])

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventQueue:
    """A bounded FIFO of events between the reader thread and the summariser."""

    def __init__(self, capacity: int, drop_oldest: bool, stop: threading.Event) -> None:
        self._items: deque[Event] = deque()
        self._capacity = capacity
        self._drop_oldest = drop_oldest
        self._stop = stop
        self._cond = threading.Condition()
        self._closed = False
        self._last_put = time.monotonic()
        self.dropped = 0

    def put(self, event: Event) -> None:
        with self._cond:
            while len(self._items) >= self._capacity:
                if self._drop_oldest:
                    self._items.popleft()
                    self.dropped += 1
                    break
                if self._stop.is_set():
                    return
                self._cond.wait(0.5)  # back-pressure: the reader stops reading
            self._items.append(event)
            self._last_put = time.monotonic()
            self._cond.notify_all()

    def close(self) -> None:
        """No more events will come (end of input)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def take_window(self, size: int, flush_after_s: float) -> list[Event] | None:
        """Up to `size` events: a full window as soon as there is one, a partial one at the end
        of input or after `flush_after_s` without a new event; None when all is done."""
        with self._cond:
            while not self._stop.is_set():
                if len(self._items) >= size or (self._items and self._closed):
                    break
                if not self._items and self._closed:
                    return None
                if self._items:
                    quiet = time.monotonic() - self._last_put
                    if quiet >= flush_after_s:
                        break
                    self._cond.wait(flush_after_s - quiet)
                else:
                    self._cond.wait(0.5)
            if self._stop.is_set():
                return None
            window = [self._items.popleft() for _ in range(min(size, len(self._items)))]
            self._cond.notify_all()  # room again for a blocked reader
            return window


def read_events(stream: TextIO, queue: EventQueue, report: CameraReport,
                stop: threading.Event) -> None:
    """The reader thread: every line becomes an event in the queue or a malformed count."""
    try:
        for n, line in enumerate(read_lines(stream), 1):
            if stop.is_set():
                return
            if line is None:
                report.malformed += 1
                report.note(f"line {n}: longer than the line limit")
                continue
            if not line.strip():
                continue
            try:
                event = parse_event(line)
            except MalformedEvent as e:
                report.malformed += 1
                report.note(f"line {n}: {e}")
                continue
            report.events += 1
            queue.put(event)
    except (OSError, UnicodeDecodeError) as e:
        report.note(f"input: {type(e).__name__}: {e}")
    finally:
        queue.close()


def request_body(model: str, window: list[Event], config: CameraConfig) -> dict[str, Any]:
    """The chat completion request for one window (OpenAI's shape, response_format included);
    greedy, so the same events get the same summary."""
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": prompt_for(window)},
        ],
        "max_tokens": config.max_tokens,
        "temperature": 0.0,
        "response_format": RESPONSE_FORMAT,
    }


def summary_line(window: list[Event], answer: Any) -> str:
    """The output line for a window from the server's answer; raises InvalidSummary."""
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise InvalidSummary("the answer has no choices[0].message.content") from None
    if not isinstance(content, str):
        raise InvalidSummary("the answer's content is not text")
    zones = list(dict.fromkeys(ev.zone for ev in window))
    return output_line({"from": window[0].time, "to": window[-1].time, "events": len(window),
                        "zones": zones, "summary": parse_summary(content)})


def served_model(client: Client) -> str:
    """The server's model id (its bundle name or --model-alias)."""
    try:
        return str(client.call("GET", "/models")["data"][0]["id"])
    except (KeyError, IndexError, TypeError):
        raise RequestFailed("GET /models: no model in the answer") from None


def run_camera(stream: TextIO, out: TextIO, client: Client, config: CameraConfig,
               stop: threading.Event | None = None) -> CameraReport:
    """Summarise the events of `stream` onto `out` until the input ends or `stop` is set.

    Raises RequestFailed only when the server never names its model (nothing can be sent)."""
    stop = stop or client.stop
    report = CameraReport()
    queue = EventQueue(config.queue_events, config.drop_oldest, stop)
    try:
        model = config.model or served_model(client)
        # Reading starts once there is a server to talk to: until then the detector waits.
        threading.Thread(target=read_events, args=(stream, queue, report, stop),
                         name="camera-reader", daemon=True).start()
        while (window := queue.take_window(config.window, config.flush_after_s)) is not None:
            report.windows += 1
            try:
                line = summary_line(window, client.call(
                    "POST", "/chat/completions", request_body(model, window, config)))
            except InvalidSummary as e:
                report.invalid += 1
                report.note(f"window {report.windows}: invalid summary dropped: {e}")
                continue
            except RequestFailed as e:
                report.failed += 1
                report.note(f"window {report.windows}: {e}")
                continue
            out.write(line + "\n")
            out.flush()
            report.summaries += 1
    except Stopped:
        pass
    finally:
        report.dropped_events = queue.dropped
        tally = client.tally
        report.requests, report.rate_limited, report.retries = (
            tally.requests, tally.rate_limited, tally.retries)
    return report
