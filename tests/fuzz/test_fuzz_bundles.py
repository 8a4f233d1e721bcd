"""Fuzzing a real bundle's manifest.json and model.gguf through every entry point a device uses.

Each case runs open_bundle, then load(budget="25%") + a 2-token generate and stream, and the
CLI's inspect / verify / run, each in a forked child, so a llama.cpp crash is observed as a
signal and a hang as a kill (tests.fuzz.worker). `edgemoe run` is skipped for a bundle the API
already loaded and generated from (quick mode); bench/fuzz_bundles.py runs everything.
"""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.cases import targeted_mutation
from tests.fuzz.draw import HypothesisDraw
from tests.fuzz.inprocess import HYPOTHESIS_SETTINGS, expect_clean, in_temp_file
from tests.fuzz.known import KnownIssue
from tests.fuzz.outcomes import Outcome
from tests.fuzz.trees import damage_text, mutate_tree, to_json


@pytest.mark.engine
def test_manifest_mutations_fail_cleanly(fuzz):
    fuzz.check("manifest", cases=30)


@pytest.mark.engine
def test_gguf_mutations_fail_cleanly(fuzz):
    fuzz.check("gguf", cases=30)


@pytest.mark.engine
@pytest.mark.slow
def test_real_cli_agrees_with_the_forked_cli(fuzz):
    """The fork server runs `apps.cli.main.main()` in a forked child instead of a fresh
    `python -m apps.cli.main`; the same cases through the real interpreter must end the same."""
    forked = fuzz.campaign("manifest", cases=3, quick=False)
    real = fuzz.campaign("manifest", cases=3, quick=False, real_cli=True)
    assert forked.tally.by_step == real.tally.by_step
    assert not any(o in forked.tally.by_kind["manifest"] for o in (Outcome.CRASH, Outcome.HANG))


@pytest.mark.engine
def test_manifest_validation_property(tiny_bundle):
    """In-process and shrinkable: manifest parsing and the manifest-vs-GGUF comparison."""
    from contract.consistency import check_against_layout
    from contract.gguf_layout import read_layout
    from contract.manifest import read_manifest

    pristine = json.loads((tiny_bundle / "manifest.json").read_text())
    model = tiny_bundle / pristine["model_file"]
    layout = read_layout(model)
    seen: set[KnownIssue] = set()

    def check_dir(path) -> None:
        manifest = read_manifest(path.parent)
        check_against_layout(manifest, layout, model)

    @settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow,
              HealthCheck.data_too_large], **HYPOTHESIS_SETTINGS)
    @given(data=st.data())
    def check(data):
        draw = HypothesisDraw(data)
        doc = copy.deepcopy(pristine)
        for _ in range(draw.integer(1, 3)):
            if isinstance(doc, dict) and draw.chance(0.4):
                targeted_mutation(doc, draw)
            else:
                doc, _what = mutate_tree(doc, draw)
        blob = to_json(doc).encode("utf-8", "surrogatepass")
        if draw.chance(0.15):
            blob, _what = damage_text(blob, draw)
        expect_clean("api", lambda: in_temp_file("manifest.json", blob, check_dir), seen)

    check()
    if seen:
        pytest.xfail("known failures in others' code: "
                     + "; ".join(f"{k.key} ({k.owner})" for k in sorted(seen, key=str)))
