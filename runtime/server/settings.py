"""Server settings and the one option table both front-ends are built from.

Every option is declared once, as a ServerSettings field with its default, help and (where it
differs from the field name) its flag or environment variable. `python -m runtime.server`
(argparse) and `edgemoe serve` (Typer) derive their options from `OPTIONS`, so they cannot drift.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from runtime.speculative.switch import DEFAULT_DRAFT_TOKENS, MAX_DRAFT_TOKENS

MIB = 1 << 20


def _option(default: Any, help: str, *, flag: str | None = None, env: str | None = None) -> Any:
    """A ServerSettings field that is also a command-line option."""
    return field(default=default, metadata={"help": help, "flag": flag, "env": env})


@dataclass(frozen=True)
class ServerSettings:
    """How the HTTP server listens, admits and bounds requests, and how it loads the bundle.

    max_queue: requests allowed to wait behind the one being generated; one more is answered
    429 with Retry-After instead of piling up. request_timeout_s bounds queueing plus generation
    of one request. budget/n_ctx/threads are handed to `runtime.load` unchanged.
    """

    host: str = _option("127.0.0.1", "Bind address (loopback by default).")
    port: int = _option(8080, "TCP port (0 picks a free one).")
    api_key: str | None = _option(
        None, "Require 'Authorization: Bearer KEY' on every endpoint but /health.",
        env="EDGEMOE_API_KEY",
    )
    model_alias: str | None = _option(None, "Model id to publish (default: the bundle name).")
    max_queue: int = _option(8, "Requests allowed to wait; one more is answered 429.")
    max_n: int = _option(4, "Most choices one request may ask for (`n`); more is a 400.")
    request_timeout_s: float = _option(
        120.0, "Seconds one request may take, queueing included (then 504).", flag="--timeout"
    )
    max_body_bytes: int = _option(MIB, "Largest request body accepted (then 413).")
    cors_origins: tuple[str, ...] = _option(
        (), "Allow this browser origin (repeatable); no CORS unless given.", flag="--cors-origin"
    )
    shutdown_grace_s: float = _option(
        10.0, "Seconds in-flight requests get to finish at shutdown.", flag="--shutdown-grace"
    )
    log_level: str = _option("info", "uvicorn log level (critical, error, warning, info, debug).")
    on_model_change: str = _option(
        "reload", "When a model file is truncated or rewritten in place while served: 'reload' "
        "it once it is valid again (503 until then) or 'exit' with a message."
    )
    # Passed to runtime.load.
    budget: str | int | None = _option(
        None, "Memory budget: '40%' of expert bytes, '1.5GB' or bytes; default: the profile's."
    )
    n_ctx: int | None = _option(None, "Context window in tokens; default: the profile's.")
    threads: int | None = _option(None, "CPU threads; default: the profile's.")
    backend: str | None = _option(
        None, "Engine: llama.cpp (GGUF build) or onnx (ONNX build); default: the bundle's."
    )
    draft: str | None = _option(
        None, "Speculative decoding: a smaller bundle of the same vocabulary (low-bit or "
        "pruned), its memory within --budget, or 'ngram' (prompt lookup, no model)."
    )
    draft_tokens: int = _option(DEFAULT_DRAFT_TOKENS, "Tokens the draft proposes per step.")
    ui: bool = _option(
        False, "Also serve the kiosk web page at /ui/ (same origin as the API, so no CORS)."
    )

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"server setting {name} must be {rule}, got {getattr(self, name)!r}")

        if not 0 <= self.port <= 65535:
            raise bad("port", "in 0..65535 (0 picks a free port)")
        if self.max_queue < 0:
            raise bad("max_queue", ">= 0")
        if not 1 <= self.max_n <= 128:
            raise bad("max_n", "in 1..128")
        if not self.request_timeout_s > 0:
            raise bad("request_timeout_s", "> 0")
        if self.max_body_bytes < 1024:
            raise bad("max_body_bytes", ">= 1024")
        if self.shutdown_grace_s < 0:
            raise bad("shutdown_grace_s", ">= 0")
        if self.on_model_change not in ("reload", "exit"):
            raise bad("on_model_change", "'reload' or 'exit'")
        if self.api_key is not None and not self.api_key.strip():
            raise bad("api_key", "a non-empty string or None")
        if self.model_alias is not None and not self.model_alias.strip():
            raise bad("model_alias", "a non-empty string or None")
        if isinstance(self.cors_origins, str):
            object.__setattr__(self, "cors_origins", (self.cors_origins,))
        else:
            object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        if self.n_ctx is not None and self.n_ctx < 1:
            raise bad("n_ctx", ">= 1 or None")
        if self.threads is not None and self.threads < 1:
            raise bad("threads", ">= 1 or None")
        if not 1 <= self.draft_tokens <= MAX_DRAFT_TOKENS:
            raise bad("draft_tokens", f"in 1..{MAX_DRAFT_TOKENS}")


@dataclass(frozen=True)
class Option:
    """One ServerSettings field as a command line shows it."""

    name: str  # the ServerSettings field
    flag: str  # "--max-queue"
    type: type  # what one value on the command line parses to: str, int or float
    default: Any
    help: str
    env: str | None = None  # read when the flag is not given
    repeatable: bool = False  # given several times, collected into a tuple


def _value_type(annotation: Any) -> tuple[type, bool]:
    """(type of one command-line value, repeatable) for a field's annotation."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return typing.get_args(annotation)[0], True
    if origin in (typing.Union, types.UnionType):
        # The first non-None member: a budget is typed as text on a command line.
        return next(a for a in typing.get_args(annotation) if a is not type(None)), False
    return annotation, False


def _options() -> tuple[Option, ...]:
    hints = typing.get_type_hints(ServerSettings)
    out = []
    for f in fields(ServerSettings):
        value_type, repeatable = _value_type(hints[f.name])
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        out.append(Option(f.name, flag, value_type, f.default, f.metadata["help"],
                          f.metadata["env"], repeatable))
    return tuple(out)


OPTIONS: tuple[Option, ...] = _options()


def settings_from_options(values: Mapping[str, Any]) -> ServerSettings:
    """ServerSettings from parsed options keyed by field name (absent or None: the default).

    Raises ValueError naming the setting when a value is out of range."""
    given: dict[str, Any] = {}
    for o in OPTIONS:
        value = values.get(o.name)
        if value is None:
            continue
        given[o.name] = tuple(value) if o.repeatable else value
    return ServerSettings(**given)
