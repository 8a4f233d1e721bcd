"""Fuzzing the small input files: device profiles (TOML), routing traces and usage profiles.

The campaigns run the real loaders (and `edgemoe profiles show`, and a policy replay of each
trace against the bundle) in forked children; the hypothesis tests drive the same mutators
in-process so that a failure shrinks to a minimal file.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.draw import HypothesisDraw
from tests.fuzz.inprocess import HYPOTHESIS_SETTINGS, expect_clean, in_temp_file
from tests.fuzz.known import KnownIssue
from tests.fuzz.seeds import ROOT, synthetic_usage
from tests.fuzz.trees import damage_text, mutate_tree, to_json, to_toml

PROFILES = sorted((ROOT / "device_profiles").glob("*.toml"))


@pytest.mark.engine
def test_profile_files_fail_cleanly(fuzz):
    fuzz.check("profile", cases=60)


@pytest.mark.engine
def test_trace_files_fail_cleanly(fuzz):
    fuzz.check("trace", cases=60)


@pytest.mark.engine
def test_usage_files_fail_cleanly(fuzz):
    fuzz.check("usage", cases=60)


# --- in-process properties (shrinkable) ------------------------------------------------------
def _mutated(doc, draw: HypothesisDraw, toml: bool) -> bytes:
    for _ in range(draw.integer(1, 3)):
        doc, _what = mutate_tree(doc, draw, toml=toml)
    data = (to_toml(doc) if toml else to_json(doc)).encode("utf-8", "surrogatepass")
    if draw.chance(0.2):
        data, _what = damage_text(data, draw)
    return data


_SETTINGS = settings(max_examples=120, suppress_health_check=[HealthCheck.too_slow,
                     HealthCheck.data_too_large], **HYPOTHESIS_SETTINGS)


def _xfail_if(seen: set[KnownIssue]) -> None:
    if seen:
        pytest.xfail("known failures in others' code: "
                     + "; ".join(f"{k.key} ({k.owner})" for k in sorted(seen, key=str)))


@pytest.mark.unit
def test_profile_loader_property():
    from device_profiles import load_profile_file, render_profile

    seen: set[KnownIssue] = set()
    texts = [tomllib.loads(p.read_text(encoding="utf-8")) for p in PROFILES]

    @_SETTINGS
    @given(data=st.data())
    def check(data):
        draw = HypothesisDraw(data)
        blob = _mutated(copy.deepcopy(draw.choice(texts)), draw, toml=True)

        def load(path: Path) -> None:
            render_profile(load_profile_file(path))

        expect_clean("profile", lambda: in_temp_file("p.toml", blob, load), seen)

    check()
    _xfail_if(seen)


@pytest.mark.unit
def test_trace_loader_property():
    from runtime.experts.routing_trace import RoutingTrace, synthetic_trace

    seen: set[KnownIssue] = set()
    seed = synthetic_trace(12, 8, (0, 1, 2), 2, seed=0).to_dict()

    @_SETTINGS
    @given(data=st.data())
    def check(data):
        blob = _mutated(copy.deepcopy(seed), HypothesisDraw(data), toml=False)

        def load(path: Path) -> None:
            trace = RoutingTrace.load(path)
            trace.summary()
            trace.usage_frequencies()

        expect_clean("trace", lambda: in_temp_file("t.json", blob, load), seen)

    check()
    _xfail_if(seen)


@pytest.mark.unit
def test_usage_loader_property():
    from packager.planning import load_usage
    from packager.usage import UsageProfile

    seen: set[KnownIssue] = set()
    seed = synthetic_usage(8, 2, (0, 1, 2), n_tokens=16)

    @_SETTINGS
    @given(data=st.data())
    def check(data):
        blob = _mutated(copy.deepcopy(seed), HypothesisDraw(data), toml=False)

        def load(path: Path) -> None:
            p = UsageProfile.load(path)
            p.frequencies()
            p.to_planner_usage()

        expect_clean("usage", lambda: in_temp_file("u.json", blob, load), seen)
        expect_clean("usage:planner", lambda: in_temp_file("u.json", blob, load_usage), seen)

    check()
    _xfail_if(seen)
