"""ONNX builds through the one Backend seam: same Model API, same expert budget, same tokens.

Bundles are packed with `--format onnx` (or `gguf,onnx`) from the real fixture checkpoints and
run by stock onnxruntime through `runtime.load(..., backend="onnx")`.
"""

from __future__ import annotations

import gc
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import runtime
from contract.errors import BundleError, EdgemoeError
from runtime.bundles.open import open_bundle
from tests.conftest import ONNX_FIXTURES

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[3]
PROMPT = "def read_config(path):\n    "


def _tokens(bundle: Path, budget: str, backend: str = "onnx", **kw) -> list[int]:
    with runtime.load(bundle, budget=budget, backend=backend) as m:
        return m.generate(PROMPT, max_tokens=16, **kw).tokens


@pytest.fixture(autouse=True)
def _packed_cache(tmp_path_factory, monkeypatch):
    """onnxruntime's packed experts (runtime/backends/onnx/packed.py) derived into a folder of
    this test session, not the user's cache."""
    monkeypatch.setenv("EDGEMOE_ONNX_CACHE", str(tmp_path_factory.getbasetemp() / "onnx-packed"))


# int8 and int4: the fused QMoE build, through onnxruntime's packed experts derived on first
# load (packed at load at 100 %); fp32: the gather graph
@pytest.mark.parametrize("quant", ["fp32", "int4", "int8"])
@pytest.mark.parametrize("name", ONNX_FIXTURES)
def test_tokens_identical_at_every_budget(name, quant, bundle_factory):
    bundle = bundle_factory(name, quant, format="onnx")
    full = _tokens(bundle, "100%")
    assert len(full) == 16
    assert _tokens(bundle, "50%") == full
    with runtime.load(bundle, budget="25%", backend="onnx") as m:
        assert m.generate(PROMPT, max_tokens=16).tokens == full
        # a fused build pages with one tapped run a step (taps.py), a gathered one in stages
        assert m.engine.paging == ("stages" if quant == "fp32" else "tapped")


@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_quantized_build_pages_onnxruntimes_packed_experts(quant, bundle_factory):
    """A fused build at a partial budget runs on onnxruntime's packed experts, derived into the
    cache (not the bundle): the runtime pages and verifies that file, by its own table. Every
    layer's codes are onnxruntime's packed buffers (int4 too: 1.32 packs 4-bit experts)."""
    import os
    import re

    bundle = bundle_factory("qwen3moe-tiny", quant, format="onnx")
    with runtime.load(bundle, budget="25%", backend="onnx") as m:
        source = m.engine.expert_file()
        assert source is not None and source.path.name == "packed.data"
        assert Path(os.environ["EDGEMOE_ONNX_CACHE"]) in source.path.parents
        assert bundle not in source.path.parents
        assert {x.layer for x in source.layers} == {0, 1, 2}
        codes = [t for x in source.layers for t in x.tensors
                 if re.search(r"\.q\d+(@packed)?$", t.name)]  # fmt: skip
        assert len(codes) == 6 and all(t.name.endswith("@packed") for t in codes)
        if quant == "int4":  # at least one layer stays 4-bit (Q4_K_M widens some down projections)
            assert any(".q4@packed" in t.name for t in codes)
        m.generate(PROMPT, max_tokens=8)
        s = m.stats()
        assert s.verification.experts_verified > 0 and s.verification.faults == 0
        assert 0 < s.mapping_rss_bytes


@pytest.mark.reference
def test_greedy_matches_transformers(bundle_factory, fixture_checkpoint):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = fixture_checkpoint("qwen3moe-trained")
    ids = AutoTokenizer.from_pretrained(ckpt)(PROMPT)["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    with torch.no_grad():
        ref = model.generate(
            torch.tensor([ids]), max_new_tokens=16, do_sample=False, eos_token_id=None,
            pad_token_id=0,
        )[0, len(ids):].tolist()
    bundle = bundle_factory("qwen3moe-trained", "fp32", format="onnx")
    assert _tokens(bundle, "25%") == ref


def test_seeded_sampling_reproducible_across_budgets(bundle_factory):
    bundle = bundle_factory("qwen3moe-tiny", "fp32", format="onnx")
    kw = {"temperature": 0.9, "top_p": 0.95, "seed": 1234}
    assert _tokens(bundle, "100%", **kw) == _tokens(bundle, "25%", **kw)


def test_both_builds_in_one_bundle(bundle_factory):
    bundle = bundle_factory("qwen3moe-tiny", "Q8_0", format="gguf,onnx", reference=True)
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["format"] == "gguf" and [b["format"] for b in m["builds"]] == ["onnx"]
    report = json.loads((bundle / "report.json").read_text())
    assert set(report["onnx"]) >= {"quant", "reference", "eval_tokens", "divergence"}
    assert set(report["onnx"]["divergence"]) == set(report["divergence"])
    # experts: 128-value blocks fitted to the fixture's 32-wide experts; dense matrices 16
    assert report["onnx"]["quant"] == "int8" and report["onnx"]["block_size"] == 32
    assert report["onnx"]["dense_block_size"] == 16
    assert report["onnx"]["scheme"].startswith("asymmetric")
    with runtime.load(bundle, budget="50%", backend="onnx") as onnx_model:
        assert onnx_model.stats().backend == "onnx"
        assert onnx_model.generate(PROMPT, max_tokens=4).usage.completion_tokens == 4
    with runtime.load(bundle, budget="50%") as gguf_model:
        assert gguf_model.stats().backend == "llama.cpp"


def test_gguf_only_bundle_refuses_onnx_backend(tiny_bundle):
    with pytest.raises(EdgemoeError, match="no onnx build"):
        runtime.load(tiny_bundle, backend="onnx")


def _copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "b"
    shutil.copytree(bundle, out)
    return out


def _sync(bundle: Path, name: str) -> None:
    path = bundle / "manifest.json"
    d = json.loads(path.read_text())
    d["files"][name]["bytes"] = (bundle / name).stat().st_size
    path.write_text(json.dumps(d))


def test_damaged_onnx_builds_are_one_clear_error(bundle_factory, tmp_path):
    src = bundle_factory("qwen3moe-tiny", "fp32", format="onnx")
    truncated = _copy(src, tmp_path / "t")
    with open(truncated / "model.onnx.data", "r+b") as f:
        f.truncate((truncated / "model.onnx.data").stat().st_size // 2)
    _sync(truncated, "model.onnx.data")
    with pytest.raises(BundleError, match="start on a page inside model.onnx.data"):
        open_bundle(truncated)
    disagree = _copy(src, tmp_path / "d")
    d = json.loads((disagree / "manifest.json").read_text())
    d["expert_layers"][0]["tensors"][0]["offset"] += 4096
    (disagree / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="manifest says"):
        open_bundle(disagree)
    garbage = _copy(src, tmp_path / "g")
    (garbage / "model.onnx").write_bytes(b"\x08\x07not a protobuf" * 10)
    _sync(garbage, "model.onnx")
    with pytest.raises(BundleError, match="not a readable ONNX model"):
        open_bundle(garbage)
    r = subprocess.run(
        [sys.executable, "-m", "apps.cli.main", "run", str(truncated), "--prompt", "hi"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and "error:" in r.stderr


ONNX_CHILD = """
import json, sys
from pathlib import Path
import numpy, onnx, onnxruntime  # the libraries an ONNX model needs, loaded before it
import runtime
def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024
bundle, budget, text = sys.argv[1], sys.argv[2], Path(sys.argv[3]).read_text()
start = rss()  # the interpreter and the libraries, before any model
with runtime.load(bundle, budget=budget, backend="onnx") as m:
    r = m.generate(text, max_tokens=24)
    s = m.stats()
    source = m.engine.expert_file()  # onnxruntime's packed experts, when it runs them
    path = str(source.path) if source else str(Path(bundle) / "model.onnx.data")
    print(json.dumps({"tokens": r.tokens, "cap": s.expert_capacity_bytes, "start": start,
                      "expert_file": path,
                      "dense": s.dense_bytes, "experts": s.expert_bytes_total,
                      "kv": s.kv_bytes, "prompt": r.usage.prompt_tokens}), flush=True)
    sys.stdin.readline()
"""


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _onnx_child(bundle: Path, budget: str, text_file: Path) -> dict:
    """Generate in a child; read its RSS, peak and the data file's resident bytes from outside."""
    from tests.runtime.test_memory import _mapping_rss

    proc = subprocess.Popen(
        [sys.executable, "-c", ONNX_CHILD, str(bundle), budget, str(text_file)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )
    try:
        out = json.loads(proc.stdout.readline())
        out["rss"] = _status(proc.pid, "VmRSS")
        out["peak"] = _status(proc.pid, "VmHWM")
        out["data_rss"] = _mapping_rss(proc.pid, Path(out["expert_file"]))
        proc.stdin.write("done\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out


# What running in stages adds to the process (one session per stage, their shared arena's
# activations for a prompt batch): measured 7-15 MiB on qwen3moe-medium.
STAGES_ALLOWANCE = 24 * 2**20


def _layer_experts(bundle: Path) -> int:
    """One layer's experts, all of them: what a prompt batch may hold beyond the cache while
    that layer runs (its surplus is released at the next layer's routing, pager.py)."""
    m = json.loads((bundle / "manifest.json").read_text())
    build = next(b for b in [m, *m.get("builds", [])] if b["format"] == "onnx")
    n = m["shape"]["n_experts"]
    return max(sum(t["stride"] for t in x["tensors"]) for x in build["expert_layers"]) * n


@pytest.mark.slow
@pytest.mark.parametrize("quant", ["int8", "int4"])
def test_expert_budget_holds_on_onnx_measured_from_outside(quant, bundle_factory, tmp_path):
    """A ~600-token prompt and 24 tokens on a quantized build whose experts are most of its bytes,
    in two children, measured by the kernel from outside. At 100 % every expert is resident
    (onnxruntime packs them all at load), so that run gives the process's own overhead: its
    peak RSS less the experts. At 25 % the peak must stay under that overhead + the manifest's
    expert capacity + one layer's experts (a prompt batch's surplus, released at the next
    layer's routing) + what running in stages adds; the expert file's resident bytes end within
    dense + capacity; the tokens are those of 100 %."""
    from edgemoe_fixtures.corpus import heldout_text

    bundle = bundle_factory("qwen3moe-medium", quant, format="onnx")
    text = tmp_path / "prompt.txt"
    text.write_text(heldout_text()[:1500])
    full = _onnx_child(bundle, "100%", text)
    quarter = _onnx_child(bundle, "25%", text)
    layer = _layer_experts(bundle)
    overhead = full["peak"] - full["experts"]
    bound = overhead + quarter["cap"] + layer + STAGES_ALLOWANCE
    mib = 2**20
    print(
        f"onnx {quant} {quarter['prompt']}-token prompt: peak RSS 100% {full['peak'] / mib:.0f} "
        f"MiB (experts {full['experts'] / mib:.0f}), 25% {quarter['peak'] / mib:.0f} MiB"
        f" (bound {bound / mib:.0f}: overhead {overhead / mib:.0f} + cap "
        f"{quarter['cap'] / mib:.1f} + layer {layer / mib:.1f} + stages "
        f"{STAGES_ALLOWANCE / mib:.0f}); expert file RSS at 25% {quarter['data_rss'] / mib:.1f} "
        f"MiB of {quarter['experts'] / mib:.0f} MiB experts"
    )
    assert quarter["tokens"] == full["tokens"]
    assert quarter["peak"] <= bound
    # The bound leaves most experts out: a run that kept every one resident would break it.
    assert overhead + quarter["experts"] > bound
    assert quarter["data_rss"] <= quarter["dense"] + quarter["cap"] + 0.05 * quarter["experts"]


@pytest.mark.parametrize("quant", ["fp32", "int4"])  # stages, tapped
def test_a_second_load_of_one_bundle_pages_its_own_mapping(quant, bundle_factory):
    """A server's reload loads the same bundle beside the model it replaces, then closes the
    old one. onnxruntime maps every initializer per session, so the file is mapped twice
    meanwhile: the new model's pager must address its own sessions' regions only, or, once the
    old model's are gone, it asks the kernel to read pages nothing maps (or someone else's)."""
    from runtime.procfs import file_regions

    bundle = bundle_factory("qwen3moe-tiny", quant, format="onnx")
    want = _tokens(bundle, "25%")
    old = runtime.load(bundle, budget="25%", backend="onnx", cold=True)
    old.generate(PROMPT, max_tokens=4)
    new = runtime.load(bundle, budget="25%", backend="onnx", cold=True)
    assert old.residency is not None and new.residency is not None
    assert old.residency.path == new.residency.path
    spans = lambda m: [(a, a + hi - lo) for lo, hi, a in m.residency.mapping.regions]  # noqa: E731
    olds = spans(old)
    assert not [n for n in spans(new) for o in olds if n[0] < o[1] and o[0] < n[1]]
    old.close()
    del old
    gc.collect()  # whatever of the old model a reference cycle kept
    with new:
        mapped: list[list[int]] = []  # the file's regions now, adjacent ones joined (mlock and
        for r in sorted(file_regions(new.residency.path), key=lambda r: r.start):  # mprotect
            if mapped and mapped[-1][1] == r.start:  # split a mapping into several)
                mapped[-1][1] = r.end
            else:
                mapped.append([r.start, r.end])
        assert all(any(s <= a and e <= t for s, t in mapped) for a, e in spans(new))
        assert new.engine.paging in ("stages", "tapped")
        for _ in range(2):  # the second answer reads what the first one's experts displaced
            assert new.generate(PROMPT, max_tokens=16).tokens == want
