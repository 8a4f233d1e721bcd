"""What the HTTP layer costs: the same greedy generation through the Python API and over HTTP.

Run:  .venv/bin/python bench/bench_http.py [--bundle DIR | --fixture qwen3moe-tiny] [--runs 50]

One run loads the bundle once and serves that same Model over HTTP with `create_app` + uvicorn on a
free loopback port in a background thread, so both paths drive the very same engine; a keep-alive
httpx client makes the requests. `--subprocess` runs `python -m runtime.server` in its own process
instead (a second copy of the model: on a machine with few cores the two llama.cpp thread pools
then compete). Requests are interleaved direct/HTTP so drift on a busy machine hits both alike.
Printed: median wall time of a whole non-streaming request each way and the difference (target
<= 5 ms), and the time to the first streamed token each way. Greedy outputs must be identical.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from common import free_port, launch_server, resolve_bundle, wait_healthy

PROMPT = "The quick brown fox jumps over the lazy dog. Then it"
MESSAGES = [{"role": "user", "content": "Say something short."}]
N_CTX = 512



def start_server(bundle: Path, threads: int, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "runtime.server", str(bundle), "--host", "127.0.0.1",
           "--port", str(port), "--n-ctx", str(N_CTX), "--threads", str(threads),
           "--log-level", "warning"]
    proc = launch_server(cmd, log_path)
    base = f"http://127.0.0.1:{port}"
    wait_healthy(proc, base, log_path)
    return proc, base


def start_inprocess(model, threads: int):
    import threading

    import uvicorn

    from runtime.options import LoadOptions
    from runtime.server import ServerSettings, create_app

    port = free_port()
    settings = ServerSettings(port=port, log_level="warning", load=LoadOptions(threads=threads))
    server = uvicorn.Server(uvicorn.Config(create_app(model, settings), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)

    def stop() -> None:
        server.should_exit = True
        thread.join(30)

    return base, stop


def first_text_event(lines) -> None:
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            choice = json.loads(line[6:])["choices"]
            if choice and (choice[0].get("text") or choice[0].get("delta", {}).get("content")):
                return
    raise RuntimeError("stream ended without text")


def median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="a packed bundle folder")
    ap.add_argument("--fixture", default="qwen3moe-tiny", help="packed on the fly if no --bundle")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    ap.add_argument("--subprocess", action="store_true",
                    help="serve from a separate `python -m runtime.server` process")
    args = ap.parse_args()

    import runtime

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        bundle = resolve_bundle(args, tmp)
        model = runtime.load(bundle, n_ctx=N_CTX, threads=args.threads)
        if args.subprocess:
            proc, base = start_server(bundle, args.threads, tmp / "server.log")

            def stop() -> None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        else:
            base, stop = start_inprocess(model, args.threads)
        try:
            print(f"server: {'separate process' if args.subprocess else 'in-process thread'}")
            run(model, base, args)
        finally:
            stop()
            model.close()


def run(model, base: str, args: argparse.Namespace) -> None:
    gen = {"max_tokens": args.max_tokens, "temperature": 0.0}
    body = {"model": model.name, "prompt": PROMPT, **gen}
    chat_body = {"model": model.name, "messages": MESSAGES, **gen}
    client = httpx.Client(base_url=base, timeout=120)
    direct_text = model.generate(PROMPT, **gen).text
    http_text = client.post("/v1/completions", json=body).json()["choices"][0]["text"]
    if http_text != direct_text:
        raise SystemExit(f"greedy outputs differ: direct {direct_text!r} vs http {http_text!r}")

    for _ in range(3):  # warm both paths
        model.generate(PROMPT, **gen)
        client.post("/v1/completions", json=body)

    d_req, h_req, d_chat, h_chat, d_ttft, h_ttft, d_all, h_all = ([] for _ in range(8))
    for _ in range(args.runs):
        t0 = time.perf_counter()
        model.generate(PROMPT, **gen)
        d_req.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        r = client.post("/v1/completions", json=body)
        h_req.append(time.perf_counter() - t0)
        r.raise_for_status()

        t0 = time.perf_counter()
        model.chat(MESSAGES, **gen)
        d_chat.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        r = client.post("/v1/chat/completions", json=chat_body)
        h_chat.append(time.perf_counter() - t0)
        r.raise_for_status()

        t0 = time.perf_counter()
        first = None
        for ev in model.stream_events(PROMPT, **gen):
            if ev.text and first is None:
                first = time.perf_counter() - t0
        d_all.append(time.perf_counter() - t0)
        d_ttft.append(first if first is not None else d_all[-1])
        t0 = time.perf_counter()
        with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as s:
            lines = s.iter_lines()
            first_text_event(lines)
            h_ttft.append(time.perf_counter() - t0)
            for _ in lines:
                pass
        h_all.append(time.perf_counter() - t0)

    def row(name: str, d: list[float], h: list[float]) -> None:
        paired = statistics.median(hh - dd for hh, dd in zip(h, d, strict=True)) * 1e3
        print(f"{name:<31} {median_ms(d):>8.2f} {median_ms(h):>8.2f} "
              f"{median_ms(h) - median_ms(d):>+8.2f} {paired:>+8.2f}   "
              f"{min(d) * 1e3:>7.2f} {min(h) * 1e3:>7.2f} {(min(h) - min(d)) * 1e3:>+7.2f}")

    print(f"bundle {model.name}  n_ctx {N_CTX}  threads {args.threads}  "
          f"max_tokens {args.max_tokens}  runs {args.runs}  (ms)")
    print(f"{'':<31} {'median:':>8} {'':>8} {'':>8} {'paired':>8}   {'min:':>7}")
    print(f"{'':<31} {'direct':>8} {'http':>8} {'diff':>8} {'diff':>8}   "
          f"{'direct':>7} {'http':>7} {'diff':>7}")
    row("request, /v1/completions", d_req, h_req)
    row("request, /v1/chat/completions", d_chat, h_chat)
    row("stream, time to first token", d_ttft, h_ttft)
    row("stream, whole response", d_all, h_all)
    overhead = statistics.median(h - d for h, d in zip(h_req, d_req, strict=True)) * 1e3
    print(f"HTTP overhead per request (median of paired differences): {overhead:.2f} ms "
          f"({'within' if overhead <= 5 else 'ABOVE'} the 5 ms target)")
    client.close()


if __name__ == "__main__":
    main()
