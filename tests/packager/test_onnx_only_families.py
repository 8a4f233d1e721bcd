"""Phi-MoE, packed as ONNX only: llama.cpp's phimoe graph computes another model (renormalised
softmax weights and RMSNorm where Phi-MoE has sparsemixer and LayerNorm), so `--format gguf`
is refused in one line, and the ONNX build carries the whole pipeline: fidelity, calibration,
pruning, the importance matrix and distillation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from packager.errors import UnsupportedArchitectureError
from packager.families import family_for
from tests.packager.synthetic import CONFIGS, write_checkpoint

pytestmark = pytest.mark.unit

FIXTURE = "phimoe-tiny"


def _phi(**change):
    return {**CONFIGS["phimoe"], **change}


# ----- config, refusals (no model) --------------------------------------------------------------
def test_phimoe_config_reads_its_names_and_defaults():
    c = family_for(_phi()).config
    assert (c.n_experts, c.top_k, c.router_jitter_noise, c.norm_eps) == (4, 2, 0.01, 1e-6)
    assert c.attention_bias and c.lm_head_bias and c.rope.kind == "longrope"
    bare = {k: v for k, v in _phi().items()
            if k not in ("rope_parameters", "router_jitter_noise", "num_local_experts")}
    c = family_for({**bare, "num_experts": 4}).config
    assert (c.n_experts, c.rope.theta, c.router_jitter_noise) == (4, 1e6, 0.01)


def test_gguf_is_refused_in_one_line_and_onnx_is_not(tmp_path):
    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    ckpt = open_checkpoint(write_checkpoint("phimoe", tmp_path / "ck"))
    family = family_for(ckpt.config)
    family.check(ckpt, ("onnx",))
    for attempt in (lambda: family.check(ckpt, ("gguf", "onnx")),
                    lambda: write_gguf(ckpt, tmp_path / "m.gguf", "F16")):  # fmt: skip
        with pytest.raises(UnsupportedArchitectureError) as err:
            attempt()
        line = str(err.value)
        assert "\n" not in line and line.startswith("PhimoeForCausalLM (GGUF): ")
        assert "sparsemixer" in line and "LayerNorm" in line and "--format onnx" in line
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_experts_per_tok": 4}, "num_experts_per_tok=4: sparsemixer always picks two"),
        ({"rope_parameters": {"rope_type": "longrope", "original_max_position_embeddings": 64,
                              "short_factor": [1.0] * 4, "long_mscale": 1.2}},
         "rope_parameters (longrope) lacks or mistypes 'short_mscale'"),
        ({"rope_parameters": {"rope_type": "longrope", "original_max_position_embeddings": 64,
                              "short_factor": [1.0] * 3, "short_mscale": 1.0,
                              "long_mscale": 1.2}}, "short_factor has 3 entries, expected 4"),
        ({"sliding_window": 64}, "sliding_window=64 attention is not exported"),
    ],
)
def test_phimoe_onnx_variants_are_named(change, message, tmp_path):
    from packager.source import open_checkpoint

    ckpt = open_checkpoint(write_checkpoint("phimoe", tmp_path / "ck", **change))
    with pytest.raises(UnsupportedArchitectureError, match=re.escape(message)) as err:
        family_for(ckpt.config).onnx(ckpt)
    assert "\n" not in str(err.value)


# ----- sparsemixer in ONNX vs transformers' own function ------------------------------------
@pytest.mark.engine
@pytest.mark.reference
def test_sparsemixer_graph_matches_transformers_on_close_logits(tmp_path):
    """Logits built so the band around the best (and the second best) holds other experts:
    the weights then differ from 1, which random tiny models rarely show."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    from packager.onnx_export.graph import Graph
    from packager.source import open_checkpoint

    ckpt = open_checkpoint(write_checkpoint("phimoe", tmp_path / "ck"))
    adapter = family_for(ckpt.config).onnx(ckpt)
    g = Graph()
    g.add_input("logits", TensorProto.FLOAT, ["T", 4])
    weights, ids = adapter.route(None, g.scope("/router"), 0, "logits")  # type: ignore[arg-type]
    g.add_output("weights", weights, TensorProto.FLOAT, ["T", 2])
    g.add_output("ids", ids, TensorProto.INT64, ["T", 2])
    model = helper.make_model(g.to_proto("route"), opset_imports=[helper.make_opsetid("", 21)],
                              ir_version=10)  # fmt: skip
    onnx.checker.check_model(model, full_check=True)
    logits = np.array([
        [2.00, 1.99, 1.985, -1.0],   # two others within 2 % of the best
        [1.00, 0.50, 0.495, 0.40],   # the second's band holds the third
        [-0.5, -0.505, -3.0, -0.6],  # negative best: the band is relative to |logit|
        [0.30, -2.0, 0.1, 0.29],
        [0.00, 0.00, -1.0, -1.0],    # ties keep the lower id, as torch's max does
    ], dtype=np.float32)
    rng = np.random.default_rng(0)
    logits = np.concatenate([logits, rng.normal(size=(64, 4)).astype(np.float32) * 0.05])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got_w, got_ids = sess.run(None, {"logits": logits})
    want_w, want_ids = sparsemixer(torch.tensor(logits), jitter_eps=0.01, training=False)
    np.testing.assert_array_equal(got_ids, want_ids.numpy())
    np.testing.assert_allclose(got_w, want_w.numpy(), rtol=1e-6, atol=1e-7)
    assert (got_w[:3] < 0.99).any()  # the crafted rows do exercise the band


# ----- the pipeline on the trained fixture ----------------------------------------------------
@pytest.mark.engine
def test_pack_without_a_format_or_with_gguf_is_one_line_and_writes_nothing(
        fixture_checkpoint, tmp_path):
    from tests.packager.test_bad_input import assert_clean_failure, run_pack

    for extra in ((), ("--format", "gguf,onnx")):
        proc = run_pack(fixture_checkpoint(FIXTURE), tmp_path / "out", *extra)
        assert_clean_failure(proc, tmp_path / "out", "PhimoeForCausalLM (GGUF)", "sparsemixer")
        assert not (tmp_path / "out").exists()


@pytest.mark.engine
@pytest.mark.reference
def test_onnx_bundle_matches_transformers_and_runs_at_every_budget(bundle_factory):
    import runtime

    bundle = bundle_factory(FIXTURE, "fp32", format="onnx", reference=True)
    report = json.loads((bundle / "report.json").read_text())
    d = report["divergence"]
    print(FIXTURE, d["top1_agreement"], d["mean_kl"])
    assert d["top1_agreement"] >= 0.995 and d["mean_kl"] <= 1e-3
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["shape"]["gguf_arch"] == "phimoe" and not (bundle / "model.gguf").exists()
    tokens = []
    for budget in ("100%", "50%", "25%"):
        with runtime.load(bundle, budget=budget, backend="onnx") as m:
            tokens.append(m.generate("def read_config(path):\n    ", max_tokens=16).tokens)
    assert tokens[0] == tokens[1] == tokens[2] and len(tokens[0]) == 16


@pytest.mark.reference
def test_calibration_runs_through_transformers_and_llama_cpp_is_refused(fixture_checkpoint):
    from edgemoe_fixtures.corpus import calibration_text
    from packager.calibrate import calibrate

    usage = calibrate(fixture_checkpoint(FIXTURE), [calibration_text()[:3000]],
                      engine="transformers")  # fmt: skip
    assert sorted(usage.counts) == [0, 1, 2]
    counts = np.array(usage.counts[1])
    assert counts.sum() == 2 * usage.n_tokens and (counts > 0).sum() >= 4
    with pytest.raises(UnsupportedArchitectureError, match=r"\(GGUF\): llama.cpp's phimoe"):
        calibrate(fixture_checkpoint(FIXTURE), ["def f(): pass"], engine="llama.cpp")


@pytest.mark.engine
@pytest.mark.reference
def test_pruned_and_imatrix_onnx_builds_run(bundle_factory):
    import runtime

    pruned = bundle_factory(FIXTURE, "fp32", format="onnx", prune=0.25)
    manifest = json.loads((pruned / "manifest.json").read_text())
    assert manifest["shape"]["n_experts"] == 6
    weighted = bundle_factory(FIXTURE, "int4", format="onnx", use_imatrix=True)
    report = json.loads((weighted / "report.json").read_text())
    assert report["imatrix"]["tensors"] > 0
    for bundle in (pruned, weighted):
        with runtime.load(bundle, budget="50%", backend="onnx") as m:
            assert len(m.generate("x = ", max_tokens=8).tokens) == 8


@pytest.mark.reference
def test_distillation_trains_routers_and_experts_only(fixture_checkpoint, tmp_path):
    from safetensors.numpy import load_file

    from edgemoe_fixtures.corpus import calibration_text
    from packager.distill import distill
    from packager.prune import prune_checkpoint

    teacher = fixture_checkpoint(FIXTURE)
    student = prune_checkpoint(teacher, None, 0.25, tmp_path / "p", "random").out_dir
    result = distill(teacher, student, tmp_path / "d", [calibration_text()], steps=2,
                     eval_every=1, lr=3e-4, seq_len=32, batch_windows=4, threads=1,
                     max_tokens=640, measure=False)
    assert result.best_step > 0
    old, new = load_file(student / "model.safetensors"), load_file(tmp_path / "d" /
                                                                    "model.safetensors")
    changed = {n for n in new if not np.array_equal(new[n], old[n])}
    assert any(".experts." in n for n in changed)
    assert all(".experts." in n or n.endswith("gate.weight") for n in changed), changed
