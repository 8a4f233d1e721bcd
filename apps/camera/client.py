"""The camera's HTTP client: one kept-alive connection to the local server, retried with backoff.

Standard library only (a camera image has no room for an HTTP stack). A busy server (429) is
waited out for at least its Retry-After, and longer each time in a row, up to a cap; a server
that is restarting or unreachable is retried the same way. Input the server refuses (4xx) is not
retried: the same request would be refused again.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 1 << 20


class RequestFailed(Exception):
    """The request cannot succeed (refused input, or retries used up)."""


class Stopped(Exception):
    """The camera was asked to stop while waiting to retry."""


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: `base_s * 2**n` for the n-th retry in a row, at least the server's
    Retry-After, at most `cap_s`, with up to `jitter` extra so several cameras spread out."""

    base_s: float = 0.5
    cap_s: float = 30.0
    max_retries: int = 8
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not (0 < self.base_s <= self.cap_s):
            raise ValueError(f"backoff needs 0 < base_s <= cap_s, got {self.base_s}, {self.cap_s}")
        if self.max_retries < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("backoff needs max_retries >= 0 and jitter in [0, 1]")

    def delay(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        wait = self.base_s * 2 ** min(attempt, 32)
        if retry_after_s is not None:
            wait = max(wait, retry_after_s)
        wait = min(wait, self.cap_s)
        return wait * (1 + self.jitter * rng.random())


def retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (only the delta-seconds form; this server sends no dates)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 3600 else None


@dataclass
class Tally:
    """What the client went through, for the camera's report."""

    requests: int = 0
    rate_limited: int = 0  # 429 answers
    retries: int = 0
    waited_s: float = 0.0


class Client:
    """POSTs JSON to one server over a reused connection; `stop` interrupts backoff waits."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float, backoff: Backoff,
                 stop: threading.Event | None = None, seed: int | None = None) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"--url must be http(s)://host[:port]/v1, got {base_url!r}")
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port
        self.prefix = parts.path.rstrip("/")
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s = timeout_s
        self.backoff = backoff
        self.stop = stop or threading.Event()
        self.tally = Tally()
        self._rng = random.Random(seed)
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            kind = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self._conn = kind(self.host, self.port, timeout=self.timeout_s)
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _once(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, str],
                                                                         bytes]:
        reused = self._conn is not None
        try:
            return self._exchange(method, path, body)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
        # The server closed an idle kept-alive connection: not a failure, just reconnect.
        return self._exchange(method, path, body)

    def _exchange(self, method: str, path: str, body: bytes | None) -> tuple[int, dict[str, str],
                                                                             bytes]:
        conn = self._connection()
        try:
            conn.request(method, self.prefix + path, body=body, headers=self.headers)
            resp = conn.getresponse()
            data = resp.read(MAX_RESPONSE_BYTES + 1)
            if resp.will_close or len(data) > MAX_RESPONSE_BYTES:
                self.close()
        except (OSError, http.client.HTTPException):
            self.close()  # a fresh connection next time
            raise
        self.tally.requests += 1
        if len(data) > MAX_RESPONSE_BYTES:
            raise RequestFailed(f"{method} {path}: response larger than {MAX_RESPONSE_BYTES} B")
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def call(self, method: str, path: str, payload: dict[str, Any] | None = None) -> Any:
        """The JSON answer of a 2xx response, retrying busy or unreachable servers with
        backoff; raises RequestFailed (refused or out of retries) or Stopped."""
        body = json.dumps(payload).encode() if payload is not None else None
        attempt = 0
        while True:
            try:
                status, headers, data = self._once(method, path, body)
            except (OSError, http.client.HTTPException) as e:
                status, headers, data, problem = 0, {}, b"", f"{type(e).__name__}: {e}"
            else:
                if 200 <= status < 300:
                    try:
                        return json.loads(data)
                    except json.JSONDecodeError as e:
                        raise RequestFailed(f"{method} {path}: answer is not JSON ({e})") from None
                problem = f"HTTP {status}: {_error_message(data)}"
                if status not in RETRY_STATUSES:
                    raise RequestFailed(f"{method} {path}: {problem}")
            if status == 429:
                self.tally.rate_limited += 1
            if attempt >= self.backoff.max_retries:
                raise RequestFailed(f"{method} {path}: {problem} (gave up after {attempt} "
                                    "retries)")
            wait = self.backoff.delay(attempt, retry_after(headers.get("retry-after")), self._rng)
            self.tally.retries += 1
            self.tally.waited_s += wait
            attempt += 1
            if self.stop.wait(wait):
                raise Stopped()


def _error_message(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"]["message"])[:200]
    except (ValueError, KeyError, TypeError):
        return data[:200].decode("utf-8", "replace")
