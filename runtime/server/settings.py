"""Server settings: one frozen dataclass, validated when built, passed to `create_app`/`serve`."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1 << 20


@dataclass(frozen=True)
class ServerSettings:
    """How the HTTP server listens, admits and bounds requests, and how it loads the bundle.

    max_queue: requests allowed to wait behind the one being generated; one more is answered
    429 with Retry-After instead of piling up. request_timeout_s bounds queueing plus generation
    of one request. budget/n_ctx/threads are handed to `runtime.load` unchanged.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    model_alias: str | None = None
    max_queue: int = 8
    request_timeout_s: float = 120.0
    max_body_bytes: int = MIB
    cors_origins: tuple[str, ...] = ()
    shutdown_grace_s: float = 10.0
    log_level: str = "info"
    # Passed to runtime.load.
    budget: str | int | None = None
    n_ctx: int | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"server setting {name} must be {rule}, got {getattr(self, name)!r}")

        if not 0 <= self.port <= 65535:
            raise bad("port", "in 0..65535 (0 picks a free port)")
        if self.max_queue < 0:
            raise bad("max_queue", ">= 0")
        if not self.request_timeout_s > 0:
            raise bad("request_timeout_s", "> 0")
        if self.max_body_bytes < 1024:
            raise bad("max_body_bytes", ">= 1024")
        if self.shutdown_grace_s < 0:
            raise bad("shutdown_grace_s", ">= 0")
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
