"""`python -m runtime.server BUNDLE [...]`: the server without the edgemoe CLI around it."""

from __future__ import annotations

import argparse
import os
import sys

from runtime.server.settings import ServerSettings


def parse_args(argv: list[str] | None = None) -> tuple[str, ServerSettings]:
    p = argparse.ArgumentParser(prog="python -m runtime.server",
                                description="OpenAI-compatible HTTP server for an edgemoe bundle.")
    d = ServerSettings()
    p.add_argument("bundle")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--budget", default=None, help='memory budget, e.g. "40%%" or "1.5GB"')
    p.add_argument("--api-key", default=os.environ.get("EDGEMOE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $EDGEMOE_API_KEY)")
    p.add_argument("--model-alias", default=None)
    p.add_argument("--max-queue", type=int, default=d.max_queue)
    p.add_argument("--timeout", type=float, default=d.request_timeout_s, dest="request_timeout_s")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--cors-origin", action="append", default=[], dest="cors_origins")
    p.add_argument("--n-ctx", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--shutdown-grace", type=float, default=d.shutdown_grace_s)
    p.add_argument("--log-level", default=d.log_level)
    a = p.parse_args(argv)
    try:
        settings = ServerSettings(
            host=a.host, port=a.port, api_key=a.api_key, model_alias=a.model_alias,
            max_queue=a.max_queue, request_timeout_s=a.request_timeout_s,
            max_body_bytes=a.max_body_bytes, cors_origins=tuple(a.cors_origins),
            shutdown_grace_s=a.shutdown_grace, log_level=a.log_level, budget=a.budget,
            n_ctx=a.n_ctx, threads=a.threads,
        )
    except ValueError as e:
        p.error(str(e))
    return a.bundle, settings


def main(argv: list[str] | None = None) -> int:
    bundle, settings = parse_args(argv)
    from runtime.errors import EdgemoeError
    from runtime.server.serve import serve

    try:
        serve(bundle, settings)
    except EdgemoeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
