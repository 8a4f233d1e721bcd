"""The kiosk page's settings and address: what a kiosk browser is pointed at.

The page (`static/`, shipped as package data) reads its settings from its URL, so one server can
drive screens with different idle periods or limits; this module is the one place that writes
that URL, for the launcher and the tests alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

STATIC_DIR = Path(__file__).resolve().parent / "static"
UI_PATH = "/ui/"  # where runtime.server mounts the page when settings.ui is on


@dataclass(frozen=True)
class KioskPage:
    """What one kiosk screen does. Defaults are the page's own (kiosk.js), so a bare /ui/ and
    KioskPage() behave alike.

    idle_s: seconds without a touch or key before the visitor's conversation is wiped.
    max_input: characters a question may have. max_tokens: tokens per answer.
    turns: question/answer pairs sent back as context.
    """

    idle_s: float = 120.0
    max_input: int = 500
    max_tokens: int = 128
    turns: int = 6
    title: str | None = None

    def __post_init__(self) -> None:
        # The same ranges kiosk.js clamps to, refused here rather than silently clamped.
        for name, low, high in (("idle_s", 1, 86400), ("max_input", 1, 4000),
                                ("max_tokens", 1, 4096), ("turns", 1, 50)):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"kiosk setting {name} must be in [{low}, {high}], got {value!r}")

    def query(self) -> str:
        """The URL query string kiosk.js reads; only settings that differ from the defaults."""
        default = KioskPage()
        pairs = {
            "idle": (self.idle_s, default.idle_s),
            "maxlen": (self.max_input, default.max_input),
            "tokens": (self.max_tokens, default.max_tokens),
            "turns": (self.turns, default.turns),
            "title": (self.title, default.title),
        }
        given = {k: f"{v:g}" if isinstance(v, float) else v
                 for k, (v, d) in pairs.items() if v != d}
        return urlencode(given)


def page_url(base_url: str, page: KioskPage | None = None) -> str:
    """The address of the kiosk page on the server at `base_url` (e.g. http://127.0.0.1:8080)."""
    query = (page or KioskPage()).query()
    return base_url.rstrip("/") + UI_PATH + (f"?{query}" if query else "")
