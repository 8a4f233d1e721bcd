"""What several bench scripts share: a free loopback port, the bundle they measure, a server
process started and waited for."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


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


def launch_server(cmd: list[str], log_path: Path, *, keep_api_key: bool = False
                  ) -> subprocess.Popen[bytes]:
    """`cmd` (a server command line) started from the repository with its output in `log_path`;
    EDGEMOE_API_KEY is dropped unless asked for, so a bench never needs a key."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if not keep_api_key:
        env.pop("EDGEMOE_API_KEY", None)
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)


def wait_healthy(proc: subprocess.Popen[bytes], base: str, log_path: Path,
                 timeout: float = 120.0) -> str:
    """The model name once `base`/health answers 200; the server is killed and the bench ends
    with its log when it exits or does not answer within `timeout` seconds."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            r = httpx.get(f"{base}/health", timeout=2)
            if r.status_code == 200:
                return str(r.json()["model"])
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"server did not start:\n{log_path.read_text(errors='replace')}")


def add_thread_options(ap: argparse.ArgumentParser, profile: str = "laptop-16gb") -> None:
    """--threads (default: every core the profile allows, as a user gets) and --wait-policy."""
    ap.add_argument("--threads", type=int, default=None,
                    help=f"engine threads; default: every core {profile} allows here "
                         "(1 for the single-thread figures)")
    ap.add_argument("--wait-policy", default=None,
                    help="how engine threads wait (runtime/threads.py); default: edgemoe's")
    ap.set_defaults(thread_profile=profile)


def thread_setup(args: argparse.Namespace) -> str:
    """Resolve --threads and apply --wait-policy before llama.cpp loads (OpenMP reads it once,
    and stock llama.cpp in this process waits the same way); the words for a first line."""
    from device_profiles import load_profile
    from runtime.threads import apply_wait_policy, engine_threads

    profile = load_profile(args.thread_profile)
    if not args.threads:
        args.threads = engine_threads(None, profile.threads, profile.cores)
    policy = apply_wait_policy(args.wait_policy)
    args.wait_policy = None if policy.startswith("environment") else policy
    return f"{args.threads} threads (wait policy {policy})"


def cpu_window() -> tuple[float, float, float]:
    """(every CPU's busy seconds, this process's CPU seconds, monotonic seconds) now; with a
    later call, `others_busy` says how much of a core other processes kept busy between."""
    import resource

    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    r = resource.getrusage(resource.RUSAGE_SELF)
    return ((sum(fields) - fields[3] - fields[4]) / tick, r.ru_utime + r.ru_stime,
            time.monotonic())


def others_busy(since: tuple[float, float, float]) -> float:
    """Cores other processes kept busy on average since `since` (a `cpu_window()`): a
    measurement on a shared machine is only quiet when this is small."""
    now = cpu_window()
    seconds = now[2] - since[2]
    return max(0.0, (now[0] - since[0] - (now[1] - since[1])) / seconds) if seconds > 0 else 0.0
