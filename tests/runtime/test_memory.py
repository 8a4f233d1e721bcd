"""Peak RSS falls with the budget, measured from outside the process (/proc/PID), not from the
runtime's own counters; and those counters agree with the kernel's view of the GGUF mapping."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.engine, pytest.mark.slow]

CHILD = Path(__file__).with_name("rss_child.py")


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _mapping_rss(pid: int, path: Path) -> int:
    total, inside = 0, False
    target = str(path.resolve())
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:
            inside = len(head) >= 6 and head[-1] == target
        elif inside and line.startswith("Rss:"):
            total += int(head[1]) * 1024
    return total


def measure(bundle: Path, budget: str, n_tokens: int = 48, cold: bool = False) -> dict:
    """Run the child; reset its peak after load (llama.cpp populates the whole mapping while
    loading, clean file pages the kernel may reclaim), then read VmHWM after generation."""
    cmd = [sys.executable, str(CHILD), str(bundle), budget, str(n_tokens)] + (
        ["--cold"] if cold else []
    )
    proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2]
    )
    try:
        ready = proc.stdout.readline()
        assert ready.startswith("READY"), ready
        Path(f"/proc/{proc.pid}/clear_refs").write_text("5")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        done = proc.stdout.readline()
        assert done.startswith("DONE"), done
        result = json.loads(done[5:])
        result["peak_rss"] = _status_kib(proc.pid, "VmHWM")
        result["rss"] = _status_kib(proc.pid, "VmRSS")
        result["mapping_rss"] = _mapping_rss(proc.pid, bundle / "model.gguf")
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return result


def test_peak_rss_falls_with_budget(bundle_factory):
    bundle = bundle_factory("qwen3moe-medium", "F16", profile="laptop-16gb")
    full = measure(bundle, "100%")
    quarter = measure(bundle, "25%")
    cold = measure(bundle, "25%", cold=True)
    experts = full["stats"]["expert_bytes_total"]
    print(
        f"expert bytes {experts / 2**20:.0f} MiB; peak RSS 100% {full['peak_rss'] / 2**20:.0f} "
        f"MiB, 25% {quarter['peak_rss'] / 2**20:.0f} MiB, 25% cold {cold['peak_rss'] / 2**20:.0f}"
        f" MiB"
    )
    assert quarter["tokens"] == full["tokens"] == cold["tokens"]
    # 25% releases 75% of the expert bytes; demand at least half of all expert bytes saved,
    # leaving room for pages shared across expert boundaries and prefill's transient surplus.
    assert quarter["peak_rss"] <= full["peak_rss"] - experts // 2
    assert cold["peak_rss"] <= full["peak_rss"] - experts // 2


def test_stats_agree_with_the_kernel(bundle_factory):
    bundle = bundle_factory("qwen3moe-medium", "F16", profile="laptop-16gb")
    r = measure(bundle, "25%")
    s = r["stats"]
    books = s["dense_bytes"] + s["resident_expert_bytes"]
    # The kernel's resident bytes of the GGUF mapping vs. dense + the cache's resident experts:
    # they may differ only by the partial pages at expert boundaries (<= 2 pages per tensor
    # slice) and the header, i.e. a few percent of expert bytes.
    assert abs(r["mapping_rss"] - books) <= 0.05 * s["expert_bytes_total"], (
        r["mapping_rss"],
        books,
    )
    assert abs(s["mapping_rss_bytes"] - r["mapping_rss"]) <= 0.05 * s["expert_bytes_total"]
