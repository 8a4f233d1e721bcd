"""`python -m runtime.server BUNDLE [...]`: the server without the edgemoe CLI around it.

Its options are `runtime.server.settings.OPTIONS`, the table `edgemoe serve` is built from too.
"""

from __future__ import annotations

import argparse
import os
import sys

from runtime.server.settings import OPTIONS, ServerSettings, settings_from_options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m runtime.server",
                                description="OpenAI-compatible HTTP server for an edgemoe bundle.")
    p.add_argument("bundle", help="Bundle directory to serve.")
    for o in OPTIONS:
        text = o.help.replace("%", "%%")  # argparse formats help with %
        if o.env:
            text += f" (default: ${o.env})"
        elif o.default not in (None, ()):
            text += " (default: %(default)s)"
        if o.repeatable:
            p.add_argument(o.flag, dest=o.name, type=o.type, action="append", help=text)
        elif o.switch:  # present means on
            p.add_argument(o.flag, dest=o.name, action="store_true", help=text)
        elif o.either_way:  # --x / --no-x; neither: the runtime decides
            p.add_argument(o.flag, dest=o.name, action=argparse.BooleanOptionalAction,
                           default=None, help=text)
        else:
            default = os.environ.get(o.env) if o.env else None
            p.add_argument(o.flag, dest=o.name, type=o.type,
                           default=o.default if default is None else default, help=text)
    return p


def parse_args(argv: list[str] | None = None) -> tuple[str, ServerSettings]:
    p = build_parser()
    a = p.parse_args(argv)
    from runtime.errors import EdgemoeError

    try:
        settings = settings_from_options(vars(a))
    except (ValueError, EdgemoeError) as e:
        p.error(str(e))
    return a.bundle, settings


def main(argv: list[str] | None = None) -> int:
    return serve_until_stopped(*parse_args(argv))


def serve_until_stopped(bundle: str, settings: ServerSettings) -> int:
    """Serve; a deliberate error is one `error:` line and exit status 1, never a traceback."""
    from runtime.errors import EdgemoeError
    from runtime.server import serve

    try:
        serve(bundle, settings)
    except EdgemoeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
