"""`python -m apps.kiosk BUNDLE`: serve the bundle with the kiosk page on the same server.

Takes every option of `edgemoe serve` (one option table) plus the page's own settings, turns the
page on, prints the address to point a full-screen browser at, and serves until interrupted.
"""

from __future__ import annotations

import sys

from apps.kiosk.page import KioskPage, page_url
from runtime.errors import EdgemoeError
from runtime.server.__main__ import build_parser, serve_until_stopped
from runtime.server.settings import ServerSettings, settings_from_options

# A kiosk has one screen: a visitor who cannot be served at once is told "busy" (the page
# waits out Retry-After) instead of queueing behind a crowd that is not there.
KIOSK_MAX_QUEUE = 1


def parse_args(argv: list[str] | None = None) -> tuple[str, ServerSettings, KioskPage]:
    p = build_parser()
    p.prog = "python -m apps.kiosk"
    p.description = "Serve a bundle with the full-screen kiosk page at /ui/."
    p.set_defaults(max_queue=KIOSK_MAX_QUEUE)
    page = p.add_argument_group("kiosk page")
    page.add_argument("--idle", type=float, default=KioskPage.idle_s,
                      help="Seconds without a touch before the conversation resets.")
    page.add_argument("--max-input", type=int, default=KioskPage.max_input,
                      help="Characters a question may have.")
    page.add_argument("--max-tokens", type=int, default=KioskPage.max_tokens,
                      help="Tokens per answer.")
    page.add_argument("--turns", type=int, default=KioskPage.turns,
                      help="Question/answer pairs kept as context.")
    page.add_argument("--title", default=None, help="Heading shown on the page.")
    a = p.parse_args(argv)
    try:
        settings = settings_from_options({**vars(a), "ui": True})
        kiosk = KioskPage(a.idle, a.max_input, a.max_tokens, a.turns, a.title)
    except (ValueError, EdgemoeError) as e:
        p.error(str(e))
    if settings.api_key is not None:
        # Every path but /health would need the key, the page included, and a kiosk browser
        # has no way to send it: serve the kiosk on loopback (the default) without a key.
        p.error("the kiosk page cannot send an API key; drop --api-key / EDGEMOE_API_KEY")
    return a.bundle, settings, kiosk


def main(argv: list[str] | None = None) -> int:
    bundle, settings, kiosk = parse_args(argv)

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    port = str(settings.port) if settings.port else "PORT"  # 0: the server's log names it
    url = page_url(f"http://{host}:{port}", kiosk)
    print(f"kiosk: open {url} in a full-screen browser, e.g.\n"
          f"  chromium --kiosk --noerrdialogs --disable-pinch '{url}'", file=sys.stderr,
          flush=True)
    return serve_until_stopped(bundle, settings)


if __name__ == "__main__":
    sys.exit(main())
