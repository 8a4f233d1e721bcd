"""A budget changed while loaded, as books: the cache shrinks by releasing its coldest experts
(never a pinned one or one the current step holds), pins are demoted and promoted, the prefetch
width is capped; the pressure policy and the readers of PSI and cgroup files."""

from __future__ import annotations

import pytest

from runtime.errors import BudgetError
from runtime.experts.cache import ExpertCache, ExpertState, Hold
from runtime.experts.prefetcher import PrefetchGovernor, PrefetchSettings
from runtime.experts.pressure import PressurePolicy, Reading, decide, own_cgroups, read_pressure
from tests.runtime.experts.test_cache import RecordingResidency

pytestmark = pytest.mark.unit

SIZES = {0: 100, 1: 100}


def _cache(capacity: int, pinned=None, hold=Hold.ACCESS):
    res = RecordingResidency()
    return ExpertCache(SIZES, 8, capacity, pinned=pinned or {}, policy="lru", residency=res,
                       hold=hold), res


def test_shrinking_releases_the_coldest_first_and_fits_the_books():
    cache, res = _cache(800, pinned={0: (7,)})
    for e in range(5):  # used in order 0..4: 0 is the coldest
        cache.access(1, [e])
    assert cache.resident_bytes == 600
    released = cache.resize(300, {0: (7,)})
    assert released == 3 and cache.resident_bytes == 300 <= cache.capacity_bytes
    assert [cache.state(1, e) for e in range(5)] == [ExpertState.RELEASED] * 3 + [
        ExpertState.RESIDENT] * 2
    assert cache.state(0, 7) is ExpertState.PINNED
    assert [c for c in res.calls if c[0] == "release"] == [("release", 1, e) for e in range(3)]


def test_a_step_held_expert_is_never_released():
    cache, _ = _cache(500, hold=Hold.STEP)
    cache.access(0, [1])
    cache.access(1, [2, 3])  # the same token: 1, 2, 3 are held until it ends
    cache.resize(300, {})
    assert cache.resident_bytes == 300
    assert {cache.state(0, 1), cache.state(1, 2), cache.state(1, 3)} == {ExpertState.RESIDENT}


def test_pins_follow_the_budget():
    cache, res = _cache(500, pinned={0: (0, 1), 1: (0,)})
    cache.access(1, [5])
    cache.resize(400, {0: (0,), 1: (5,)})  # 0:1 demoted, 1:5 promoted (resident already)
    assert cache.state(0, 1) is ExpertState.RESIDENT
    assert cache.state(1, 5) is ExpertState.PINNED and cache.pinned_bytes == 200
    assert ("pin", 1, 5) in res.calls and ("unpin", 0, 1) in res.calls
    cache.resize(200, {0: (0,), 1: (5,)})  # the demoted ones go first when it shrinks
    assert cache.state(0, 1) is ExpertState.RELEASED and cache.resident_bytes == 200
    with pytest.raises(BudgetError, match="pinned experts need 200 bytes but the expert "
                                          "capacity is 100 bytes"):
        cache.resize(100, {0: (0,), 1: (5,)})


def test_growing_keeps_every_resident_and_admits_more():
    cache, _ = _cache(200)
    cache.access(0, [0, 1])
    cache.resize(600, {})
    cache.access(0, [2, 3, 4])
    assert cache.resident_bytes == 500 and cache.stats().evictions == 0


def test_prefetch_width_is_capped_and_restored():
    gov = PrefetchGovernor(PrefetchSettings(width=8), top_k=4, max_width=8)
    gov.width = 8
    assert gov.limit(2) and gov.width == 2 and gov.max_width == 2
    assert not gov.limit(16) and gov.max_width == 8  # room again: may widen, up to the settings


# --- following pressure ------------------------------------------------------------------------
MIB = 2**20
P = PressurePolicy()


def test_short_of_memory_shrinks_by_the_shortfall_or_a_quarter_down_to_the_floor():
    r = Reading(None, 1000 * MIB, 950 * MIB)  # 50 MiB free, the policy wants 100
    new, calm, why = decide(r, 400 * MIB, 50 * MIB, 400 * MIB, 3, P)
    assert new == 300 * MIB and calm == 0 and why.startswith("shrink: 50 MiB free")
    r = Reading(None, 1000 * MIB, 999 * MIB)
    assert decide(r, 100 * MIB, 80 * MIB, 400 * MIB, 0, P)[0] == 80 * MIB  # the floor


def test_stalls_shrink_too():
    new, _, why = decide(Reading(25.0, None, None), 400 * MIB, 0, 400 * MIB, 0, P)
    assert new == 300 * MIB and "stalls 25.0 %" in why


def test_it_grows_back_gradually_after_calm_readings_up_to_the_ceiling():
    calm_reading = Reading(0.0, 1000 * MIB, 100 * MIB)
    capacity, calm, steps = 100 * MIB, 0, []
    for _ in range(200):
        capacity, calm, why = decide(calm_reading, capacity, 0, 400 * MIB, calm, P)
        steps.append(capacity)
    grown = sorted(set(steps))
    assert grown[-1] == 400 * MIB
    assert all(b - a <= 20 * MIB for a, b in zip(grown, grown[1:], strict=False))  # 5 % steps
    assert steps[P.calm_readings - 2] == 100 * MIB  # nothing before enough calm readings


def test_neither_grows_nor_shrinks_in_between():
    r = Reading(5.0, 1000 * MIB, 800 * MIB)  # 20 % free, some stalls: hold
    assert decide(r, 200 * MIB, 0, 400 * MIB, 4, P) == (200 * MIB, 0, "")


def _tree(tmp_path, cgroup_lines: str, files: dict[str, str]):
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(cgroup_lines)
    (proc / "pressure").mkdir()
    (proc / "pressure" / "memory").write_text(
        "some avg10=3.25 avg60=1.00 avg300=0.50 total=1\nfull avg10=0.00 avg60=0 avg300=0 "
        "total=0\n")
    for name, text in files.items():
        (cg / name).parent.mkdir(parents=True, exist_ok=True)
        (cg / name).write_text(text)
    return proc, cg


def test_cgroup_v1_limit_and_held_memory(tmp_path):
    proc, cg = _tree(tmp_path, "12:memory:/kiosk\n0::/\n", {
        "memory/kiosk/memory.limit_in_bytes": "314572800\n",
        "memory/kiosk/memory.stat": "cache 900\nrss 10\ntotal_rss 1000\ntotal_mapped_file 24\n",
    })
    assert own_cgroups(proc) == {"memory": "/kiosk", "": "/"}
    assert read_pressure(proc, cg) == Reading(3.25, 314572800, 1024)


def test_cgroup_v2_limit_held_memory_and_its_own_pressure(tmp_path):
    proc, cg = _tree(tmp_path, "0::/apps/kiosk\n", {
        "apps/kiosk/memory.max": "300000000\n",
        "apps/kiosk/memory.stat": "anon 1000\nfile 5000\nfile_mapped 24\n",
        "apps/kiosk/memory.pressure": "some avg10=12.50 avg60=0 avg300=0 total=9\n",
    })
    assert read_pressure(proc, cg) == Reading(12.5, 300000000, 1024)


def test_no_limit_reads_only_pressure(tmp_path):
    proc, cg = _tree(tmp_path, "12:memory:/\n", {
        "memory/memory.limit_in_bytes": str(2**63 - 4096), "memory/memory.stat": "rss 1\n"})
    assert read_pressure(proc, cg) == Reading(3.25, None, None)
