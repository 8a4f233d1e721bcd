"""What a model file truncated in place while served does to `edgemoe serve`, with and without a
kernel lease, and what the per-request file check costs.

Run:  .venv/bin/python bench/bench_faults.py [--bundle DIR | --fixture qwen3moe-tiny]
          [--trials 10] [--unleased-trials 5]

Leased (the server owns the file): one server, `--trials` rounds of: a long stream running, the
model file truncated in place (`os.truncate`, as a careless `cp` or `>` would), the file written
back. Per round: how long the truncating writer was held, what the client saw, whether the
server lived, and how long until /health said 200 again (the reload verifies the hashes).
Unleased (CAP_LEASE dropped via setpriv, the files owned by nobody; root only): a fresh server
per round, same truncation; counted: deaths by SIGBUS (with faulthandler's report on the log)
against clean 503s. Last: microseconds per `FileGuard.changed()` (the check before each
generation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from common import free_port, launch_server, resolve_bundle, wait_healthy


def start(bundle: Path, log: Path, unleased: bool) -> tuple[subprocess.Popen[bytes], str, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "runtime.server", str(bundle), "--port", str(port),
           "--n-ctx", "2048", "--threads", "1", "--budget", "50%", "--log-level", "info"]
    if unleased:
        cmd = ["setpriv", "--inh-caps=-lease", "--bounding-set=-lease", *cmd]
    proc = launch_server(cmd, log, keep_api_key=True)
    base = f"http://127.0.0.1:{port}"
    return proc, base, wait_healthy(proc, base, log)


def stream(base: str, model: str, out: list[str]) -> None:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": 1500, "temperature": 0,
            "stream": True}
    try:
        with httpx.Client(timeout=120) as c, c.stream("POST", f"{base}/v1/completions",
                                                      json=body) as r:
            if r.status_code != 200:
                out.append(f"status {r.status_code}: {r.read()[:200]!r}")
                return
            out.extend(line for line in r.iter_lines() if line)
    except httpx.HTTPError as e:
        out.append(f"transport error: {type(e).__name__}")


def outcome(lines: list[str]) -> str:
    for line in reversed(lines):
        if line.startswith('data: {"error"'):
            return json.loads(line[6:])["error"]["code"]
        if line.startswith(("status ", "transport error")):
            return line
    return "finished" if lines and lines[-1] == "data: [DONE]" else "cut"


def truncate_mid_stream(base: str, model: str, model_file: Path) -> tuple[float, str]:
    lines: list[str] = []
    t = threading.Thread(target=stream, args=(base, model, lines), daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while len(lines) < 3 and t.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    t0 = time.monotonic()
    os.truncate(model_file, 0)
    held = time.monotonic() - t0
    t.join(60)
    return held, outcome(lines)


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def leased_rounds(bundle: Path, tmp: Path, trials: int) -> dict:
    served = tmp / "leased"
    shutil.copytree(bundle, served)
    model_file, good = served / "model.gguf", (served / "model.gguf").read_bytes()
    proc, base, model = start(served, tmp / "leased.log", unleased=False)
    held, recover, outcomes, fd_counts = [], [], [], [fds(proc.pid)]
    try:
        for _ in range(trials):
            h, what = truncate_mid_stream(base, model, model_file)
            held.append(h)
            outcomes.append(what if proc.poll() is None else f"died ({proc.returncode})")
            if proc.poll() is not None:
                break
            t0 = time.monotonic()
            model_file.write_bytes(good)
            while httpx.get(f"{base}/health", timeout=10).status_code != 200:
                if time.monotonic() - t0 > 60:
                    raise SystemExit("no recovery within 60 s")
                time.sleep(0.05)
            recover.append(time.monotonic() - t0)
            fd_counts.append(fds(proc.pid))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return {"held_s": held, "recover_s": recover, "outcomes": outcomes, "fds": fd_counts,
            "alive_throughout": all(not o.startswith("died") for o in outcomes)}


def unleased_rounds(bundle: Path, tmp: Path, trials: int) -> dict:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return {"skipped": "needs root and setpriv"}
    results = []
    for i in range(trials):
        served = tmp / f"unleased-{i}"
        shutil.copytree(bundle, served)
        for f in served.iterdir():
            os.chown(f, 65534, 65534)
        log = tmp / f"unleased-{i}.log"
        proc, base, model = start(served, log, unleased=True)
        _, what = truncate_mid_stream(base, model, served / "model.gguf")
        try:
            code = proc.wait(15)
        except subprocess.TimeoutExpired:
            code = None
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        text = log.read_text(errors="replace")
        results.append({"client_saw": what, "exit": code,
                        "faulthandler_report": "Fatal Python error: Bus error" in text})
    return {"rounds": results,
            "sigbus_deaths": sum(r["exit"] == -signal.SIGBUS for r in results),
            "all_deaths_reported": all(r["faulthandler_report"] for r in results
                                       if r["exit"] is not None)}


def check_cost(bundle: Path, n: int = 100_000) -> float:
    from runtime.server.lease import FileGuard

    old = signal.signal(signal.SIGIO, lambda *_: None)
    guard = FileGuard.open([bundle / "model.gguf"], lease=True)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            guard.changed()
        return (time.perf_counter() - t0) / n * 1e6
    finally:
        guard.close()
        signal.signal(signal.SIGIO, old)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle")
    p.add_argument("--fixture", default="qwen3moe-tiny")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--unleased-trials", type=int, default=5)
    p.add_argument("--json")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="faults-") as tmp_name:
        tmp = Path(tmp_name)
        bundle = resolve_bundle(args, tmp)
        leased = leased_rounds(bundle, tmp, args.trials)
        unleased = unleased_rounds(bundle, tmp, args.unleased_trials)
        cost_us = check_cost(bundle)
    med = statistics.median
    print(f"leased, {len(leased['held_s'])} truncations mid-stream: server alive throughout: "
          f"{leased['alive_throughout']}")
    print(f"  writer held: median {1000 * med(leased['held_s']):.0f} ms, max "
          f"{1000 * max(leased['held_s']):.0f} ms")
    if leased["recover_s"]:
        print(f"  back to 200 after the file was restored: median "
              f"{med(leased['recover_s']):.2f} s, max {max(leased['recover_s']):.2f} s")
    print(f"  client saw: {sorted(set(leased['outcomes']))}; server fds per round: "
          f"{leased['fds']}")
    if "skipped" in unleased:
        print(f"unleased: skipped ({unleased['skipped']})")
    else:
        print(f"unleased, {len(unleased['rounds'])} truncations mid-stream: "
              f"{unleased['sigbus_deaths']} SIGBUS deaths, every death reported on the log: "
              f"{unleased['all_deaths_reported']}")
        for r in unleased["rounds"]:
            print(f"  exit {r['exit']}, client saw {r['client_saw']}")
    print(f"per-request file check (FileGuard.changed, leased): {cost_us:.2f} us")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"leased": leased, "unleased": unleased, "check_us": cost_us}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
