"""Server settings and the one option table both front-ends are built from.

Every option is declared once, as a ServerSettings field with its default, help and (where it
differs from the field name) its flag or environment variable; how the bundle is loaded is one
`LoadOptions` (runtime/options.py), whose options every front end shares. `python -m
runtime.server` (argparse) and `edgemoe serve` (Typer) derive their options from `OPTIONS`, so
they cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from runtime.options import (
    LOAD_OPTIONS,
    LoadOptions,
    Option,
    from_options,
    load_options,
    option,
    option_table,
)

MIB = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    """How the HTTP server listens, admits and bounds requests, and how it loads the bundle.

    max_queue: requests allowed to wait behind the one being generated; one more is answered
    429 with Retry-After instead of piling up. request_timeout_s bounds queueing plus generation
    of one request. `load` is handed to `runtime.load` unchanged (its options are the server's
    too: `LOAD_OPTIONS`).
    """

    host: str = option("127.0.0.1", "Bind address (loopback by default).")
    port: int = option(8080, "TCP port (0 picks a free one).")
    api_key: str | None = option(
        None, "Require 'Authorization: Bearer KEY' on every endpoint but /health.",
        env="EDGEMOE_API_KEY",
    )
    model_alias: tuple[str, ...] = option(
        (), "Another name the model answers to (repeatable); the first is the id /v1/models "
        "publishes (default: the bundle name, which is always answered to)."
    )
    any_model: bool = option(
        False, "Answer requests naming any model (as llama-server does); default: 404 for a "
        "name that is neither the bundle's nor an alias."
    )
    max_queue: int = option(8, "Requests allowed to wait; one more is answered 429.")
    max_n: int = option(4, "Most choices one request may ask for (`n`); more is a 400.")
    request_timeout_s: float = option(
        120.0, "Seconds one request may take, queueing included (then 504).", flag="--timeout"
    )
    max_body_bytes: int = option(MIB, "Largest request body accepted (then 413).")
    cors_origins: tuple[str, ...] = option(
        (), "Allow this browser origin (repeatable); no CORS unless given.", flag="--cors-origin"
    )
    shutdown_grace_s: float = option(
        10.0, "Seconds in-flight requests get to finish at shutdown.", flag="--shutdown-grace"
    )
    log_level: str = option("info", "uvicorn log level (critical, error, warning, info, debug).")
    on_model_change: str = option(
        "reload", "When a model file is truncated or rewritten in place while served: 'reload' "
        "it once it is valid again (503 until then) or 'exit' with a message."
    )
    ui: bool = option(
        False, "Also serve the kiosk web page at /ui/ (same origin as the API, so no CORS)."
    )
    follow_pressure: bool = option(
        False, "Shrink the expert budget toward --pressure-floor while memory is short (Linux "
        "PSI, the cgroup's limit) and grow it back gradually; tokens never change."
    )
    pressure_floor: str | None = option(
        None, "The least budget --follow-pressure shrinks to ('10%', '300MB'); default: 12.5% "
        "of expert bytes, or the minimum if more."
    )
    load: LoadOptions = field(default_factory=LoadOptions)  # how the bundle is loaded

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
        if self.pressure_floor is not None:
            from runtime.budget import parse_budget
            from runtime.errors import BudgetError

            try:
                parse_budget(self.pressure_floor)
            except BudgetError:
                raise bad("pressure_floor", "a percentage ('10%'), a size ('300MB') or "
                                            "bytes") from None
        if self.api_key is not None and not self.api_key.strip():
            raise bad("api_key", "a non-empty string or None")
        for name in ("model_alias", "cors_origins"):  # one string is a list of one
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if any(not a.strip() for a in self.model_alias):
            raise bad("model_alias", "non-empty names")


# The server's own options, then every load option.
OPTIONS: tuple[Option, ...] = option_table(ServerSettings) + LOAD_OPTIONS


def settings_from_options(values: Mapping[str, Any]) -> ServerSettings:
    """ServerSettings from parsed options keyed by field name (absent or None: the default).

    Raises ValueError (or the runtime's error for a load option) naming the setting."""
    own: ServerSettings = from_options(ServerSettings, option_table(ServerSettings), values)
    return replace(own, load=load_options(values))
