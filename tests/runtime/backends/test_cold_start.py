"""Cold start at a partial budget reads the dense weights and the hot set, not every expert.

Measured from outside the child process with the kernel's own counters: `/proc/PID/io`
read_bytes (storage reads) around the load, and VmHWM (lifetime peak RSS, load included) against
the peak while generating. The model file is dropped from the page cache first, so storage is
really read. Tokens must equal the stock full-read load's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.experts.residency import drop_file_cache

pytestmark = [pytest.mark.engine, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
CHILD = """
import json, sys
from pathlib import Path

def io():
    d = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(d["read_bytes"])

def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

import runtime
bundle, budget = sys.argv[1], sys.argv[2]
r0 = io()
with runtime.load(bundle, budget=budget) as model:
    loaded_read, load_peak = io() - r0, hwm()
    Path("/proc/self/clear_refs").write_text("5")
    r = model.generate("import os\\nimport sys\\n\\ndef main(argv):\\n    ", max_tokens=32)
    s = model.stats()
    lazy = getattr(model, "lazy_load", None)
    print(json.dumps({
        "tokens": r.tokens, "load_read": loaded_read, "load_peak": load_peak,
        "gen_peak": hwm(), "lifetime_peak": max(load_peak, hwm()),
        "dense": s.dense_bytes, "pinned": s.pinned_bytes, "kv": s.kv_bytes,
        "lazy": bool(lazy and lazy.active),
    }))
"""


def _run(bundle: Path, budget: str) -> dict:
    drop_file_cache(bundle / "model.gguf")
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(bundle), budget],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def medium(bundle_factory) -> Path:
    return bundle_factory("qwen3moe-medium", "Q8_0")


def test_cold_start_reads_only_what_it_keeps(medium):
    size = (medium / "model.gguf").stat().st_size
    full = _run(medium, "100%")
    part = _run(medium, "25%")
    print(f"file {size / 2**20:.0f} MiB; 100%: {full}; 25%: {part}")
    assert part["lazy"] and not full["lazy"]
    assert part["tokens"] == full["tokens"]
    # Reads at load: dense + pinned hot set (+ slack), not the whole file.
    assert part["load_read"] <= part["dense"] + part["pinned"] + 0.1 * size
    assert part["load_read"] < 0.4 * size
    # Lifetime peak (load included) stays near the generation peak.
    assert part["lifetime_peak"] <= part["gen_peak"] + 0.1 * size
    assert part["lifetime_peak"] < full["lifetime_peak"] - 0.4 * size
