"""A budget changed while loaded, on real engines: the process's memory, measured from outside
at token boundaries, settles under the new budget within a bounded number of tokens; tokens are
identical to a run at a constant budget on both engines; a model loaded at a full budget with
`resizable=True` can be shrunk; the pressure follower steers a real model down and back up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import runtime
from contract.gguf_layout import open_reader
from runtime.errors import BudgetError
from runtime.experts.pressure import PressureFollower, PressurePolicy, Reading

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[3]
PROMPT = "import os\nimport sys\n\ndef main(argv):\n    "
SETTLE_TOKENS = 2  # the change lands at the next step; its pages go back within that step
SLACK = 256 * 1024  # pages an expert shares with a neighbouring tensor, the fault-around sweep


def _mapping_rss(pid: int, name: str) -> int:
    total, ours = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split(maxsplit=1)[0]
        if not head.endswith(":"):  # a mapping's first line: address range ... path
            ours = line.rstrip().endswith(name)
        elif ours and head == "Rss:":
            total += int(line.split()[1]) * 1024
    return total


def test_rss_settles_under_a_cut_budget_within_two_tokens(bundle_factory):
    bundle = bundle_factory("qwen3moe-trained", "Q8_0")
    header = int(open_reader(bundle / "model.gguf").data_offset)
    p = subprocess.Popen([sys.executable, "-m", "tests.runtime.budget_child", str(bundle), "60%",
                          "24"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         cwd=REPO)
    try:
        ready = json.loads(p.stdout.readline().split(" ", 1)[1])
        rss: dict[int, int] = {}
        cut_at = 8
        while True:
            line = p.stdout.readline()
            if not line.startswith("TOKEN"):
                break
            i = int(line.split()[1])
            rss[i] = _mapping_rss(p.pid, "model.gguf")
            p.stdin.write("budget 20%\n" if i == cut_at else "go\n")
            p.stdin.flush()
        done = json.loads(line.split(" ", 1)[1])
    finally:
        p.kill()
        p.wait()
    new_cap = done["capacity"]
    bound = ready["dense_bytes"] + new_cap + header + SLACK
    assert rss[cut_at] > bound, "the budget before the cut already fit: the test shows nothing"
    assert all(rss[i] <= bound for i in rss if i >= cut_at + SETTLE_TOKENS), (bound, rss)
    assert done["history"][0]["expert_capacity_bytes"] == new_cap < ready["expert_capacity_bytes"]
    assert done["resident"] <= new_cap


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_tokens_are_identical_across_changes_mid_generation(fmt, bundle_factory):
    bundle = (bundle_factory("qwen3moe-trained", "Q8_0") if fmt == "gguf" else
              bundle_factory("qwen3moe-trained", "fp32", format="onnx"))
    with runtime.load(bundle, budget="60%", threads=1, n_ctx=256) as m:
        ref = m.generate(PROMPT, max_tokens=32, temperature=0.0).tokens
    with runtime.load(bundle, budget="60%", threads=1, n_ctx=256) as m:
        got = []
        for ev in m.stream_events(PROMPT, max_tokens=32, temperature=0.0):
            if ev.token is None:
                continue
            got.append(ev.token)
            if len(got) == 8:
                m.set_budget("15%")
                assert m.budget_pending  # a generation runs: it waits for the next step
            if len(got) == 20:
                m.set_budget("45%", reason="grow")
        s = m.stats()
    assert got == ref
    assert [c.reason for c in s.budget_history] == ["api", "grow"]
    assert s.budget_history[0].released > 0 and s.budget_changes == 2
    assert s.resident_expert_bytes <= s.expert_capacity_bytes


def test_below_the_minimum_or_nothing_paged_is_refused(bundle_factory):
    bundle = bundle_factory("qwen3moe-trained", "Q8_0")
    with runtime.load(bundle, budget="100%", threads=1, n_ctx=256) as m:
        with pytest.raises(BudgetError, match="nothing is paged"):
            m.set_budget("50%")
    with runtime.load(bundle, budget="50%", threads=1, n_ctx=256) as m:
        with pytest.raises(BudgetError, match="below the minimum"):
            m.set_budget(1000)


def test_a_resizable_full_budget_shrinks_and_follows_pressure_down_and_back(bundle_factory):
    bundle = bundle_factory("qwen3moe-trained", "Q8_0")
    with runtime.load(bundle, budget="100%", threads=1, n_ctx=256) as m:
        ref = m.generate(PROMPT, max_tokens=16, temperature=0.0).tokens
    short = Reading(None, 100 * 2**20, 99 * 2**20)
    calm = Reading(0.0, 100 * 2**20, 10 * 2**20)
    readings = [short, short, short] + [calm] * 400
    with runtime.load(bundle, budget="100%", threads=1, n_ctx=256, resizable=True) as m:
        full = m.budget.expert_capacity_bytes
        floor = full // 8
        follower = PressureFollower(lambda: m, lambda _m: floor, read=lambda: readings.pop(0),
                                    policy=PressurePolicy())
        for _ in range(3):
            follower.step()
        assert m.budget.expert_capacity_bytes < full // 2
        assert m.generate(PROMPT, max_tokens=16, temperature=0.0).tokens == ref
        low = m.budget.expert_capacity_bytes
        steps = 0
        while m.budget.expert_capacity_bytes < full and steps < 400:
            follower.step()
            steps += 1
        assert m.budget.expert_capacity_bytes == full  # grown back, gradually
        history = m.stats().budget_history
        grows = [c for c in history if c.reason.startswith("pressure: grow")]
        assert len(grows) >= 5 and all(c.expert_capacity_bytes > low for c in grows)
        assert m.generate(PROMPT, max_tokens=16, temperature=0.0).tokens == ref
