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
