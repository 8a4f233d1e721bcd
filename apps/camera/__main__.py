"""`python -m apps.camera --url http://127.0.0.1:8080/v1`: summarise detector events offline.

Reads JSON lines from a motion/object detector on stdin (`{"time": ..., "zone": ..., "labels":
[...]}`), groups them into windows, and asks the local edgemoe server (OpenAI wire format) for a
one-line summary per window. Malformed lines are skipped and counted, never fatal: a camera runs
unattended.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from runtime.generation import SamplingParams


@dataclass(frozen=True)
class Event:
    time: str
    zone: str
    labels: tuple[str, ...]


def parse_events(lines: Iterable[str], errors: list[str]) -> Iterator[Event]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            yield Event(str(d["time"]), str(d.get("zone", "?")), tuple(map(str, d["labels"])))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            errors.append(f"line {n}: {type(e).__name__}: {e}")


def windows(events: Iterable[Event], size: int) -> Iterator[list[Event]]:
    batch: list[Event] = []
    for ev in events:
        batch.append(ev)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def prompt_for(batch: list[Event]) -> str:
    lines = [f"{e.time} {e.zone}: {', '.join(e.labels)}" for e in batch]
    return "Camera log:\n" + "\n".join(lines) + "\nOne-line summary:"


def _call(url: str, api_key: str | None, timeout: float, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    if api_key:
        req.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def served_model(url: str, api_key: str | None, timeout: float) -> str:
    """The server's model id (its bundle name or --model-alias)."""
    return _call(url.rstrip("/") + "/models", api_key, timeout)["data"][0]["id"]


def summary_sampling(max_tokens: int) -> SamplingParams:
    """Greedy, one line: the same events always get the same summary."""
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, stop=("\n",))


def complete(
    url: str, model: str, prompt: str, params: SamplingParams, api_key: str | None,
    timeout: float,
) -> str:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k,
        "seed": params.seed,
        "stop": list(params.stop),
    }
    out = _call(url.rstrip("/") + "/completions", api_key, timeout, body)
    return out["choices"][0]["text"].strip()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m apps.camera")
    ap.add_argument("--url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--model", default=None, help="model id (default: the server's first)")
    ap.add_argument("--window", type=int, default=5, help="events per summary")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args(argv)
    params = summary_sampling(args.max_tokens)  # a bad --max-tokens fails before any request
    errors: list[str] = []
    model = args.model or served_model(args.url, args.api_key, args.timeout)
    for batch in windows(parse_events(sys.stdin, errors), args.window):
        summary = complete(
            args.url, model, prompt_for(batch), params, args.api_key, args.timeout
        )
        print(
            json.dumps({"from": batch[0].time, "to": batch[-1].time, "summary": summary}),
            flush=True,
        )
    if errors:
        print(
            f"camera: skipped {len(errors)} malformed event line(s): {errors[0]}", file=sys.stderr
        )


if __name__ == "__main__":
    main()
