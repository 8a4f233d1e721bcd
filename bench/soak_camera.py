"""A long camera soak: does `python -m apps.camera` keep flat memory and print only valid JSON?

Run:  .venv/bin/python bench/soak_camera.py [--bundle DIR | --fixture qwen3moe-tiny]
                                             [--events 20000] [--window 50] [--url URL]

Starts `python -m runtime.server` on the bundle (or uses --url), feeds the camera a synthetic
detector stream through a pipe (the same generator as the test suite's 2,000-event soak, in
tests/apps/camera_soak.py), samples the camera process's RSS from outside every --interval
seconds, and checks every printed line against the output schema. Printed: the RSS curve (time,
MiB, as a table and a one-line sparkline), growth after warm-up, and the camera's own counts
(summaries, invalid answers dropped, 429s, retries).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from common import resolve_bundle  # noqa: E402

from tests.apps.camera_soak import SoakResult, run_soak  # noqa: E402

BARS = " .:-=+*#%@"



def print_curve(result: SoakResult, points: int = 24) -> None:
    mib = 1 << 20
    step = max(1, len(result.rss) // points)
    rows = result.rss[::step]
    print(f"{'t (s)':>8}  {'RSS (MiB)':>9}")
    for t, b in rows:
        print(f"{t:8.1f}  {b / mib:9.2f}")
    # The sparkline leaves out start-up (imports) so that drift after warm-up is what shows.
    warm = rows[max(1, int(len(rows) * result.warmup_fraction)):] or rows
    lo, hi = min(b for _, b in warm), max(b for _, b in warm)
    span = max(1, hi - lo)
    line = "".join(BARS[int((b - lo) / span * (len(BARS) - 1))] for _, b in warm)
    print(f"RSS after warm-up {lo / mib:.2f} MiB [{line}] {hi / mib:.2f} MiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="a packed bundle folder")
    ap.add_argument("--fixture", default="qwen3moe-tiny", help="packed on the fly if no --bundle")
    ap.add_argument("--url", help="an edgemoe server already running (its base URL, no /v1)")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between RSS samples")
    ap.add_argument("--timeout", type=float, default=6 * 3600.0)
    ap.add_argument("--json", action="store_true", help="also print the raw result as JSON")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        server = None
        if args.url:
            base = args.url.rstrip("/")
        else:
            from tests.runtime.server.conftest import start_server

            server = start_server(resolve_bundle(args, tmp), tmp, "--n-ctx", "2048")
            base = server.base_url
        try:
            result = run_soak(base, args.events, window=args.window, max_tokens=args.max_tokens,
                              interval_s=args.interval, timeout_s=args.timeout)
        finally:
            if server is not None:
                server.stop()
    summary = result.summary()
    print_curve(result)
    print(f"after warm-up: baseline {summary['rss_baseline_mib']} MiB, peak "
          f"{summary['rss_peak_mib']} MiB, growth {summary['rss_growth_pct']} %")
    cam = result.report
    print(f"events {cam.get('events')} (+{cam.get('malformed')} malformed) in "
          f"{summary['seconds']} s; summaries {cam.get('summaries')}, invalid answers dropped "
          f"{cam.get('invalid')}, failed {cam.get('failed')}, 429s {cam.get('rate_limited')}, "
          f"retries {cam.get('retries')}; printed lines valid {result.valid_lines}, invalid "
          f"{result.invalid_lines}")
    if args.json:
        print(json.dumps({**summary, "rss": result.rss}))
    return 0 if result.returncode == 0 and result.invalid_lines == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
