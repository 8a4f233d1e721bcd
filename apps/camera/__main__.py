"""`python -m apps.camera [--input FILE]`: detector events (JSON lines) in, JSON summaries out.

Reads a motion/object detector's events from stdin or a file, groups them into windows, and asks
the local edgemoe server (OpenAI wire format, `response_format` with a JSON Schema) for one
structured summary per window: event type, objects, count, severity and a one-line text. Every
answer is validated against the schema before it is printed; an invalid one is counted and
dropped. Malformed input lines are counted and skipped: a camera runs unattended. The run's
counts go to stderr as one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from typing import TextIO

from apps.camera.client import Backoff, Client, RequestFailed
from apps.camera.pipeline import CameraConfig, run_camera

DEFAULTS = CameraConfig()
BACKOFF = Backoff()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m apps.camera", description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080/v1", help="The server's /v1 URL.")
    p.add_argument("--api-key", default=None)
    p.add_argument("--model", default=None, help="Model id (default: the server's).")
    p.add_argument("--input", default="-", help="JSON-lines file of events ('-': stdin).")
    p.add_argument("--window", type=int, default=DEFAULTS.window, help="Events per summary.")
    p.add_argument("--flush-after", type=float, default=DEFAULTS.flush_after_s,
                   help="Seconds without events before a partial window is summarised.")
    p.add_argument("--queue", type=int, default=DEFAULTS.queue_events,
                   help="Events held at most while the server works.")
    p.add_argument("--drop-oldest", action="store_true",
                   help="With a full queue drop the oldest event (live feed) instead of "
                        "pausing the input.")
    p.add_argument("--max-tokens", type=int, default=DEFAULTS.max_tokens)
    p.add_argument("--timeout", type=float, default=120.0, help="Seconds per request.")
    p.add_argument("--retries", type=int, default=BACKOFF.max_retries,
                   help="Retries of a busy or unreachable server per window.")
    p.add_argument("--backoff", type=float, default=BACKOFF.base_s,
                   help="First retry delay in seconds (doubles each time, Retry-After at least).")
    p.add_argument("--backoff-cap", type=float, default=BACKOFF.cap_s,
                   help="Longest retry delay in seconds.")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    a = p.parse_args(argv)
    stop = threading.Event()
    try:
        config = CameraConfig(window=a.window, flush_after_s=a.flush_after, queue_events=a.queue,
                              drop_oldest=a.drop_oldest, max_tokens=a.max_tokens, model=a.model)
        backoff = Backoff(base_s=a.backoff, cap_s=a.backoff_cap, max_retries=a.retries)
        client = Client(a.url, a.api_key, a.timeout, backoff, stop)
    except ValueError as e:
        p.error(str(e))
    # SIGTERM (a supervisor stopping the camera) ends the run like the end of input.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stream: TextIO = sys.stdin if a.input == "-" else open(a.input, encoding="utf-8")
    except OSError as e:
        p.error(f"--input: {e}")
    try:
        report = run_camera(stream, sys.stdout, client, config, stop)
    except RequestFailed as e:  # no model to talk to: nothing can be summarised
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()
        if stream is not sys.stdin:
            stream.close()
    print("camera: " + json.dumps(report.as_dict()), file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
