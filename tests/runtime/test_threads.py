"""How engine threads wait (runtime/threads.py): the policy is chosen once per process, before
llama.cpp's OpenMP loads, and what is in effect is what `stats()` reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runtime.threads import BLAS_VARIABLES, WAIT_POLICIES, WaitPolicyError, check_wait_policy

pytestmark = pytest.mark.unit

# A fresh interpreter per case: OpenMP reads its settings once per process.
_PROBE = """
import json, os, sys
from runtime.threads import apply_wait_policy
first = apply_wait_policy(sys.argv[1] or None)
env = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
import llama_cpp  # OpenMP loads and reads its settings here
second = apply_wait_policy(sys.argv[2] or None)
print(json.dumps({"first": first, "env": env, "second": second}))
"""

_LOADED = """
import json, sys
import runtime
with runtime.load(sys.argv[1], budget="100%", n_ctx=128, threads=2,
                  **({"wait_policy": sys.argv[2]} if sys.argv[2] else {})) as m:
    s = m.stats()
    from threadpoolctl import threadpool_info
    blas = [p["num_threads"] for p in threadpool_info() if p["internal_api"] == "openblas"]
    print(json.dumps({"wait_policy": s.wait_policy, "threads": s.threads, "blas": blas}))
"""


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> dict:
    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", *BLAS_VARIABLES)}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=300, env={**base, **(env or {})})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_unknown_policy_is_one_line_naming_the_known_ones():
    with pytest.raises(WaitPolicyError) as e:
        check_wait_policy("hurry")
    assert "'hurry'" in str(e.value) and "passive" in str(e.value) and "\n" not in str(e.value)
    assert check_wait_policy(None) is None and check_wait_policy("passive") == "passive"


def test_default_is_openmps_own_spin_then_sleep():
    """The default sets nothing: OpenMP waits as it does under stock llama.cpp."""
    r = _run(_PROBE, "", "")
    assert r["first"] == "spin" == r["second"]
    assert r["env"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}


def test_a_named_policy_sets_openmps_variables_before_it_loads():
    r = _run(_PROBE, "passive", "")
    assert r["first"] == "passive" and r["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    r = _run(_PROBE, "spin-10k", "")
    assert r["env"] == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}


def test_the_first_choice_stays_once_openmp_has_loaded():
    """A second engine asking for another policy gets the one OpenMP already read."""
    r = _run(_PROBE, "passive", "active")
    assert r["first"] == r["second"] == "passive"


def test_the_users_own_environment_wins_over_the_default():
    r = _run(_PROBE, "", "", env={"OMP_WAIT_POLICY": "passive"})
    assert r["first"] == "environment (OMP_WAIT_POLICY=passive)"
    assert r["env"]["OMP_WAIT_POLICY"] == "passive"


def test_every_policy_names_only_openmp_variables():
    for policy in WAIT_POLICIES.values():
        assert {k for k, _ in policy.env} <= {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT"}


@pytest.mark.engine
def test_stats_report_the_policy_and_threads_that_ran(tiny_bundle):
    for asked, ran in (("", "spin"), ("passive", "passive")):
        r = _run(_LOADED, str(tiny_bundle), asked)
        assert (r["wait_policy"], r["threads"]) == (ran, 2)


@pytest.mark.engine
def test_numpys_blas_runs_on_one_thread_unless_the_user_sized_it(tiny_bundle):
    """Its idle workers would spin on the cores the engine's threads need; a user's own
    OPENBLAS_NUM_THREADS is left as it is."""
    assert _run(_LOADED, str(tiny_bundle), "")["blas"] == [1]
    assert _run(_LOADED, str(tiny_bundle), "", env={"OPENBLAS_NUM_THREADS": "2"})["blas"] == [2]


# --- onnxruntime's pool: the same policies, per session ---------------------------------------
_ORT_KEYS = ("session.intra_op.allow_spinning", "session.intra_op.spin_duration_us")


def test_onnxruntime_default_spins_briefly_then_sleeps(monkeypatch):
    """Bounded: a finite spin, not onnxruntime's own open-ended default and not sleeping at once."""
    from runtime.threads import onnxruntime_wait

    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(var, raising=False)
    name, entries = onnxruntime_wait(None)
    settings = dict(entries)
    assert name == "spin" and settings[_ORT_KEYS[0]] == "1"
    assert 0 < int(settings[_ORT_KEYS[1]]) <= 1000
    assert dict(onnxruntime_wait("passive")[1]) == {_ORT_KEYS[0]: "0"}
    assert _ORT_KEYS[1] not in dict(onnxruntime_wait("active")[1])


def test_onnxruntime_reads_the_users_openmp_choice_as_they_meant_it(monkeypatch):
    from runtime.threads import onnxruntime_wait

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    name, entries = onnxruntime_wait(None)
    assert name == "environment (OMP_WAIT_POLICY=PASSIVE)"
    assert dict(entries)[_ORT_KEYS[0]] == "0"
    assert onnxruntime_wait("spin")[0] == "spin"  # asked for by name: the name wins
    with pytest.raises(WaitPolicyError):
        onnxruntime_wait("hurry")


def test_every_policy_names_only_onnxruntime_intra_op_settings():
    for policy in WAIT_POLICIES.values():
        assert {k for k, _ in policy.onnxruntime} <= set(_ORT_KEYS)


@pytest.mark.engine
@pytest.mark.parametrize("asked", [None, "passive"])
def test_onnx_sessions_wait_as_the_policy_says(asked, bundle_factory, monkeypatch, tmp_path):
    """The settings reach every onnxruntime session the backend made (tapped or staged at 25 %), and
    stats() names the policy that ran."""
    import runtime
    from runtime.threads import onnxruntime_wait

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("EDGEMOE_ONNX_CACHE", str(tmp_path / "onnx-packed"))
    bundle = bundle_factory("qwen3moe-tiny", "int8", format="onnx")
    want = dict(onnxruntime_wait(asked)[1])
    for budget in ("100%", "25%"):
        with runtime.load(bundle, budget=budget, backend="onnx", threads=2,
                          wait_policy=asked) as m:  # fmt: skip
            engine = m.engine
            sessions = [engine.session] if engine.session else engine._staged.sessions
            for s in sessions:
                so = s.get_session_options()
                assert {k: so.get_session_config_entry(k) for k in want} == want
            m.generate("def f():", max_tokens=2)
            assert m.stats().wait_policy == (asked or "spin") and m.stats().threads == 2
