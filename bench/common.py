"""What several bench scripts share: a free loopback port and the bundle they measure."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_bundle(args: argparse.Namespace, tmp: Path, quant: str = "F16") -> Path:
    """`--bundle PATH` as given, else the `--fixture` checkpoint packed at `quant` into `tmp`
    (no reference measurement: a bench times the runtime, not the pack)."""
    if args.bundle:
        return Path(args.bundle)
    from edgemoe_fixtures import cached_fixture
    from packager.api import PackOptions, pack

    out = tmp / f"{args.fixture}-{quant}"
    pack(PackOptions(src=str(cached_fixture(args.fixture)), out_dir=out, profile="laptop-16gb",
                     quant=quant, reference=False))
    return out
