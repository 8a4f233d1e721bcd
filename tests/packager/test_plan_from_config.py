"""Planning from a config alone: the estimate against a real checkpoint's tensor shapes, the
published configurations against their model cards, plans at a runtime expert budget, and the
`edgemoe plan` / `edgemoe fits` commands."""

from __future__ import annotations

import json
import math

import pytest

from packager.plan.errors import PlanError
from packager.plan.from_config import estimate
from packager.plan.known import find_known, known_models
from tests.packager.synthetic import CONFIGS, write_checkpoint

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("family", ["qwen3moe", "qwen2moe", "mixtral", "deepseek2", "mimo2"])
def test_config_estimate_matches_the_checkpoints_tensor_shapes(family, tmp_path):
    """Experts exactly; the dense rest within a few percent (norms and small extras aside)."""
    from packager.planning import model_shape
    from packager.source import open_checkpoint

    real = model_shape(open_checkpoint(write_checkpoint(family, tmp_path / family)))
    est = estimate(CONFIGS[family]).shape
    assert est.expert_params_per_layer == real.expert_params_per_layer
    assert (est.moe_layers, est.n_experts, est.top_k) == (real.moe_layers, real.n_experts,
                                                          real.top_k)
    assert est.dense_params == pytest.approx(real.dense_params, rel=0.06)
    assert est.n_kv_heads * (est.head_dim_k + est.head_dim_v) == \
        real.n_kv_heads * (real.head_dim_k + real.head_dim_v)


@pytest.mark.parametrize("model", known_models(), ids=lambda m: m.name)
def test_known_configs_agree_with_their_model_cards(model):
    """The transcribed config fields alone give the card's total within 5 %, so the sizes the
    table prints rest on the right shapes (the card's total fixes the dense part where exact)."""
    fields_only = estimate(model.config)
    assert fields_only.total_params == pytest.approx(model.total_params, rel=0.05)
    assert find_known(model.hub_id) is find_known(model.name.upper()) is model


@pytest.mark.parametrize("model", known_models(), ids=lambda m: m.name)
def test_every_known_value_is_sourced_or_marked_unverified(model):
    """Each value names an address that confirmed it, or is listed as unverified (and then
    printed in README's table); no source claims a field the file does not have."""
    inner = model.config.get("text_config", {})
    fields = {"total_params", "active_params"} | (set(model.config) - {"text_config"}) \
        | set(inner)
    confirmed = {f for s in model.source for f in s.confirms}
    assert all(s.url.startswith("https://") for s in model.source)
    assert confirmed | set(model.unverified) <= fields
    assert fields - confirmed == set(model.unverified)


def test_bad_configs_are_one_line():
    with pytest.raises(PlanError, match="no expert count"):
        estimate({"num_hidden_layers": 2, "hidden_size": 8, "vocab_size": 10,
                  "intermediate_size": 16})
    with pytest.raises(PlanError, match="field 'num_experts_per_tok' must be an integer"):
        estimate({**CONFIGS["qwen3moe"], "num_experts_per_tok": "two"})


def test_gpt_oss_20b_on_phone_8gb_at_q4_k_m_with_a_25_percent_budget():
    """The question the planner answers without weights: no, 25 % of its experts alone
    outgrow the phone's 3 GiB; the numbers are the runtime's own budget split."""
    from contract.quant_types import get_quant
    from device_profiles import load_profile
    from packager.plan.sizes import kv_cache_bytes, sizes_for
    from packager.planning import plan_for

    plan = plan_for("gpt-oss-20b", "phone-8gb", quant="Q4_K_M", budget="25%")
    shape, q = find_known("gpt-oss-20b").estimate().shape, get_quant("Q4_K_M")
    s = sizes_for(shape, q, q, shape.n_experts, kv_cache_bytes(shape, 2048, "f16"))
    assert plan.budget_bytes == s.dense + s.kv + int(s.experts_total * 0.25)
    assert plan.budget_bytes > load_profile("phone-8gb").model_memory_bytes
    assert not plan.fits and "does NOT fit phone-8gb" in plan.rationale[1]
    assert plan.rationale[0].startswith("model: gpt-oss-20b (openai/gpt-oss-20b)")
    small = plan_for("OLMoE-1B-7B", "phone-8gb", quant="Q4_K_M", budget="25%")
    assert small.fits and not small.resident and 0 < small.expected_hit_rate < 1
    assert small.hot_bytes + small.stream_bytes <= small.budget_bytes - small.dense_bytes
    low = plan_for("OLMoE-1B-7B", "phone-8gb", quant="Q4_K_M", budget="1%")
    assert not low.fits and "below the minimum" in low.rationale[1]


def test_config_file_folder_and_hub_cache_give_one_plan(tmp_path):
    from edgemoe_fixtures import make_hub_cache
    from packager.planning import plan_for

    cfg = {**CONFIGS["qwen3moe"], "hidden_size": 2048, "moe_intermediate_size": 768,
           "num_experts": 128, "num_experts_per_tok": 8, "num_hidden_layers": 48,
           "vocab_size": 151936, "head_dim": 128, "num_attention_heads": 32}  # fmt: skip
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "config.json").write_text(json.dumps(cfg))
    by_file = plan_for(tmp_path / "only" / "config.json", "laptop-16gb")
    by_folder = plan_for(tmp_path / "only", "laptop-16gb")
    make_hub_cache(tmp_path / "only", tmp_path / "hub", "org/config-only")
    by_hub = plan_for("org/config-only", "laptop-16gb", cache_dir=tmp_path / "hub")
    assert by_file.to_dict() | {"rationale": []} == by_folder.to_dict() | {"rationale": []} \
        == by_hub.to_dict() | {"rationale": []}
    assert "config.json from the Hub cache, no weights" in by_hub.rationale[0]
    with pytest.raises(PlanError, match="not a checkpoint folder.*known model \\(.*gpt-oss-20b"):
        plan_for("nobody/nothing", "laptop-16gb", cache_dir=tmp_path / "hub")


def test_a_checkpoint_of_an_unpackable_mixture_is_still_sized(tmp_path):
    from packager.planning import plan_for

    src = write_checkpoint("qwen3moe", tmp_path / "ck")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(cfg | {"architectures": ["GrokForCausalLM"]}))
    plan = plan_for(src, "laptop-16gb")
    assert "not supported" in plan.rationale[0] and "sized from its config" in plan.rationale[0]


def test_fit_table_rows_and_cells():
    from device_profiles import load_profile
    from packager.plan.fit_table import fit_rows, param_count, render_markdown

    profiles = [load_profile("phone-8gb"), load_profile("laptop-16gb")]
    models = [find_known("OLMoE-1B-7B"), find_known("MiMo-V2-Flash")]
    rows = fit_rows(models, profiles)
    assert rows[0].sizes["Q8_0"] > rows[0].sizes["Q4_K_M"] > rows[0].sizes["Q2_K"]
    assert rows[0].plans["laptop-16gb"].resident
    assert not rows[1].plans["phone-8gb"].fits  # 309B does not fit 3 GiB at any quant
    table = render_markdown(rows, profiles)
    assert "| MiMo-V2-Flash | 309B / 15B | 256, 8 |" in table
    assert "| MiMo-V2-Flash | no |" in table
    models_table = table.split("\n\n")[0]
    lines = {line.split(" | ")[0]: line for line in models_table.splitlines()}
    assert lines["| OLMoE-1B-7B"].endswith(" | none |")  # every value confirmed
    assert lines["| MiMo-V2-Flash"].endswith(" | layer_types |")
    assert (param_count(1.0e12), param_count(999.4e9), param_count(20.91e9)) == \
        ("1T", "999B", "20.9B")
    assert math.isfinite(rows[0].plans["phone-8gb"].est_decode_tok_s)


def test_cli_plan_and_fits(tmp_path):
    from typer.testing import CliRunner

    from apps.cli.main import app

    runner = CliRunner()
    got = runner.invoke(app, ["plan", "gpt-oss-20b", "--profile", "phone-8gb", "--quant",
                              "Q4_K_M", "--budget", "25%"])  # fmt: skip
    assert got.exit_code == 0 and "phone-8gb: does NOT fit" in got.output
    got = runner.invoke(app, ["plan", "no-such-model"])
    assert got.exit_code == 1 and got.output.count("\n") == 1 and "known model" in got.output
    got = runner.invoke(app, ["fits", "gpt-oss-20b", "--profile", "laptop-16gb", "--markdown"])
    assert got.exit_code == 0 and "| gpt-oss-20b | 20.9B / 3.6B | 32, 4 |" in got.output
    got = runner.invoke(app, ["fits", "--list"])
    assert got.exit_code == 0 and "openai/gpt-oss-120b" in got.output
