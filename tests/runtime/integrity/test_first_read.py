"""Weights verified as they are read, on both engines: a byte flipped in an expert slice (away
from the sampled blocks) fails the request that needs that expert, after earlier requests were
answered as from an intact bundle; a flipped dense byte is found by the background check; a
bundle without checksums still loads and runs as before."""

from __future__ import annotations

import json

import pytest

import runtime
from runtime.errors import ModelCorruptError
from tests.runtime.integrity.damage import BUDGET, damage_dense, damage_expert, pick_expert

pytestmark = pytest.mark.engine

BUILDS = {"gguf": ("Q8_0", {}), "onnx": ("fp32", {"format": "onnx"})}
TOKENS = 12


@pytest.fixture(scope="module", params=sorted(BUILDS))
def trained(request, bundle_factory):
    quant, extra = BUILDS[request.param]
    return request.param, bundle_factory("qwen3moe-trained", quant, **extra)


def _tokens(bundle, prompt, **load):
    with runtime.load(bundle, budget=BUDGET, threads=1, n_ctx=256, **load) as m:
        return m.generate(prompt, max_tokens=TOKENS, temperature=0.0).tokens


def test_a_flipped_expert_byte_fails_the_request_that_needs_it(trained, tmp_path):
    fmt, src = trained
    first, later, (layer, expert), pinned = pick_expert(src, TOKENS)
    assert (layer, expert) not in pinned
    d = damage_expert(src, tmp_path / "bad", layer, expert)
    clean = _tokens(src, first)
    with runtime.load(d.bundle, budget=BUDGET, threads=1, n_ctx=256) as m:
        assert m.generate(first, max_tokens=TOKENS, temperature=0.0).tokens == clean
        with pytest.raises(ModelCorruptError) as e:
            m.generate(later, max_tokens=TOKENS, temperature=0.0)
        message = str(e.value)
        assert str(d.bundle / d.file) in message and "\n" not in message
        assert f"{d.tensor} expert {expert} (layer {layer}, bytes [" in message
        assert "does not match the manifest's checksum" in message
        with pytest.raises(ModelCorruptError):  # it answers nothing more from these weights
            m.generate(first, max_tokens=TOKENS, temperature=0.0)
        stats = m.stats()
        assert stats.verification.state == "corrupt" and d.tensor in stats.verification.fault


def test_a_flipped_dense_byte_is_found_by_the_background_check(trained, tmp_path):
    _, src = trained
    d = damage_dense(src, tmp_path / "bad")
    with runtime.load(d.bundle, budget=BUDGET, threads=1, n_ctx=256) as m:
        assert m._background is not None and m._background.wait(120)
        assert m.integrity.dense == "failed"
        with pytest.raises(ModelCorruptError, match=f"{d.file}: {d.tensor} \\(bytes \\["):
            m.generate("def main():", max_tokens=4, temperature=0.0)


def test_at_a_full_budget_the_background_check_covers_the_experts(trained, tmp_path):
    _, src = trained
    d = damage_expert(src, tmp_path / "bad", *_any_expert(src))
    with runtime.load(d.bundle, budget="100%", threads=1, n_ctx=256) as m:
        assert m._background.wait(120)
        assert m.integrity.fault is not None and d.tensor in str(m.integrity.fault)


def _any_expert(bundle):
    from contract.manifest import read_manifest

    m = read_manifest(bundle)
    return m.build().expert_layers[-1].layer, m.shape.n_experts - 1


def test_a_bundle_without_checksums_loads_with_the_sampled_check_only(trained, tmp_path):
    fmt, src = trained
    first, later, (layer, expert), _ = pick_expert(src, TOKENS)
    d = damage_expert(src, tmp_path / "old", layer, expert)
    manifest = json.loads((d.bundle / "manifest.json").read_text())
    del manifest["checksums"]
    (d.bundle / "manifest.json").write_text(json.dumps(manifest))
    with runtime.load(d.bundle, budget=BUDGET, threads=1, n_ctx=256) as m:
        assert "none in this bundle" in m.stats().verification.checksums
        m.generate(later, max_tokens=TOKENS, temperature=0.0)  # served as before: unseen
        v = m.stats().verification
        assert v.state == "ok" and v.dense_check == "none"


def test_checks_off_serve_a_damaged_expert_as_before(trained, tmp_path):
    """The switch the bench compares against: what edgemoe did before reads were checked."""
    _, src = trained
    first, later, (layer, expert), _ = pick_expert(src, TOKENS)
    d = damage_expert(src, tmp_path / "bad", layer, expert)
    with runtime.load(d.bundle, budget=BUDGET, threads=1, n_ctx=256, check_reads=False) as m:
        m.generate(later, max_tokens=TOKENS, temperature=0.0)
        assert m.stats().verification.state == "ok"

