"""The planner: quant choice per device, hot set inside the budget, hit rate, suggestions."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import gguf
import pytest

from device_profiles import load_profile
from packager.plan.errors import PlanError
from packager.plan.expert_usage import ExpertUsage
from packager.plan.render import render_plan
from packager.plan.result import DENSE_TENSORS, Plan
from packager.plan.search import make_plan, suggest
from packager.plan.shape import ModelShape, shape_from_tensors

# Pure planner tests; the one `engine` test (its own marker overrides this) runs llama.cpp's
# quantizer on a plan.
pytestmark = pytest.mark.unit


def olmoe_like() -> ModelShape:
    """OLMoE-1B-7B's proportions: 16 layers of 64 experts, top-8, 2048 hidden, 1024 per expert."""
    layers, hidden, inter, experts = 16, 2048, 1024, 64
    dense = 2 * 50304 * hidden + layers * (4 * hidden * hidden + hidden * experts + 2 * hidden)
    per_expert = 3 * hidden * inter
    return ModelShape(
        n_layers=layers, moe_layers=tuple(range(layers)), n_experts=experts, top_k=8,
        hidden_size=hidden, vocab_size=50304, n_kv_heads=16, head_dim_k=128, head_dim_v=128,
        dense_params=dense, expert_params_per_layer=dict.fromkeys(range(layers), per_expert),
        expert_row_len=inter,
    )


def tiny(n_layers: int = 2, n_experts: int = 4, top_k: int = 1) -> ModelShape:
    hidden, inter = 256, 512
    return ModelShape(
        n_layers=n_layers, moe_layers=tuple(range(n_layers)), n_experts=n_experts, top_k=top_k,
        hidden_size=hidden, vocab_size=1000, n_kv_heads=2, head_dim_k=64, head_dim_v=64,
        dense_params=2 * 1000 * hidden + n_layers * 4 * hidden * hidden,
        expert_params_per_layer=dict.fromkeys(range(n_layers), 3 * hidden * inter),
        expert_row_len=inter,
    )


def skewed_usage(shape: ModelShape) -> ExpertUsage:
    """Zipf-like routing: expert e is selected with weight 1/(e+1), rotated per layer."""
    per_layer = {}
    for layer in shape.moe_layers:
        w = [1.0 / (((e + layer) % shape.n_experts) + 1) for e in range(shape.n_experts)]
        per_layer[layer] = tuple(x * shape.top_k / sum(w) for x in w)
    return ExpertUsage(per_layer, n_tokens=1000)


def with_budget(profile_name: str, budget: int, **changes):
    return replace(load_profile(profile_name), model_memory_bytes=budget, **changes)


def test_camera_and_laptop_plans_differ():
    shape = olmoe_like()
    usage = skewed_usage(shape)
    laptop = make_plan(shape, load_profile("laptop-16gb"), usage)
    camera = make_plan(shape, load_profile("camera-arm-2gb"), usage)
    assert laptop.fits and camera.fits
    assert laptop.resident and not camera.resident
    assert laptop.quant_experts != camera.quant_experts
    assert bits_per_weight(laptop.quant_experts) > bits_per_weight(camera.quant_experts)
    assert laptop.hot_experts != camera.hot_experts
    assert sum(map(len, laptop.hot_experts.values())) == 16 * 64
    assert 0 < sum(map(len, camera.hot_experts.values())) < 16 * 64
    assert laptop.expected_hit_rate == 1.0 > camera.expected_hit_rate
    assert laptop.est_decode_tok_s > camera.est_decode_tok_s


def bits_per_weight(name: str) -> float:
    from contract.quant_types import get_quant

    return get_quant(name).bits_per_weight


def test_hot_set_fills_the_budget_exactly():
    shape = olmoe_like()
    plan = make_plan(shape, load_profile("phone-8gb"), skewed_usage(shape))
    assert plan.fits and not plan.resident
    per = plan.expert_bytes_per_layer
    assert plan.hot_bytes == sum(len(v) * per[layer] for layer, v in plan.hot_experts.items())
    assert plan.stream_bytes == shape.top_k * sum(per.values())
    assert plan.total_bytes == plan.dense_bytes + plan.kv_bytes + plan.hot_bytes + plan.stream_bytes
    assert plan.total_bytes <= plan.budget_bytes
    # Greedy: no expert left out would still fit in what remains.
    assert plan.budget_bytes - plan.total_bytes < min(per.values())


def test_hit_rate_by_hand():
    shape = tiny(n_layers=2, n_experts=4, top_k=1)
    usage = ExpertUsage({0: (0.5, 0.3, 0.15, 0.05), 1: (0.25, 0.25, 0.25, 0.25)})
    probe = make_plan(shape, load_profile("laptop-16gb"), usage, quant="Q8_0")
    expert = probe.expert_bytes_per_layer[0]
    assert probe.expert_bytes_per_layer == {0: expert, 1: expert}
    # Room for exactly three hot experts beyond dense + KV + one token's experts (2 layers x 1).
    budget = probe.dense_bytes + probe.kv_bytes + 2 * expert + 3 * expert
    plan = make_plan(shape, with_budget("laptop-16gb", budget), usage, quant="Q8_0")
    # Greedy by share: layer 0's 0.5 and 0.3, then a 0.25 of layer 1 (lowest layer, id first).
    assert plan.hot_experts == {0: (0, 1), 1: (0,)}
    assert plan.hot_bytes == 3 * expert
    assert plan.expected_hit_rate == pytest.approx(((0.5 + 0.3) + 0.25) / 2)
    assert plan.total_bytes == budget


def test_without_usage_hot_set_is_uniform_and_says_so():
    shape = olmoe_like()
    plan = make_plan(shape, load_profile("camera-arm-2gb"))
    counts = {len(v) for v in plan.hot_experts.values()}
    assert len(counts) == 1 and len(plan.hot_experts) == 16
    per_layer = counts.pop()
    assert plan.expected_hit_rate == pytest.approx(per_layer / 64)
    assert any("no usage data" in line for line in plan.rationale)


def test_resident_decode_estimate_follows_the_documented_formula():
    shape = olmoe_like()
    profile = load_profile("laptop-16gb")
    plan = make_plan(shape, profile)
    assert plan.resident
    touched = (plan.dense_bytes + shape.top_k * sum(plan.expert_bytes_per_layer.values())
               + plan.kv_bytes / 2)
    expected = profile.memory_bandwidth_gb_s * 1e9 / touched
    assert plan.est_decode_tok_s == pytest.approx(expected)
    assert plan.est_prefill_tok_s > 0


def test_mixed_precision_spends_leftover_budget_on_dense_weights():
    shape = olmoe_like()
    plan = make_plan(shape, load_profile("laptop-16gb"))
    assert plan.resident
    assert plan.quant_experts == "Q8_0" and plan.quant_dense == "F16"
    assert plan.tensor_types == {DENSE_TENSORS: "f16"}
    assert plan.total_bytes <= plan.budget_bytes


def test_dense_pattern_matches_dense_gguf_tensors_only():
    pattern = re.compile(DENSE_TENSORS)
    names = gguf.TENSOR_NAMES
    t = gguf.MODEL_TENSOR
    dense = [names[t.TOKEN_EMBD], names[t.OUTPUT]] + [
        names[k].format(bid=3) for k in (t.ATTN_Q, t.ATTN_K, t.ATTN_V, t.ATTN_OUT, t.FFN_GATE,
                                         t.FFN_UP, t.FFN_DOWN, t.FFN_GATE_SHEXP, t.FFN_DOWN_SHEXP,
                                         t.ATTN_KV_A_MQA, t.ATTN_Q_B)]
    experts = [names[k].format(bid=3) for k in (t.FFN_GATE_EXP, t.FFN_UP_EXP, t.FFN_DOWN_EXP)]
    assert all(pattern.search(f"{n}.weight") for n in dense), dense
    assert not any(pattern.search(f"{n}.weight") for n in experts)
    assert not pattern.search(names[t.FFN_GATE_INP].format(bid=3) + ".weight")


def test_explicit_quant_is_used_and_unknown_quant_is_refused():
    shape = olmoe_like()
    plan = make_plan(shape, load_profile("laptop-16gb"), quant="q4_0")
    assert plan.quant_experts == plan.quant_dense == "Q4_0"
    assert plan.tensor_types == {}
    with pytest.raises(PlanError, match=r"quant: unknown quant type 'Q9'.*Q4_K_M"):
        make_plan(shape, load_profile("laptop-16gb"), quant="Q9")


def test_no_fit_gives_suggestions_that_fit_when_applied():
    shape = replace(olmoe_like(), dense_params=olmoe_like().dense_params * 4)
    profile = load_profile("camera-arm-2gb")
    plan = make_plan(shape, profile)
    assert not plan.fits
    assert plan.est_decode_tok_s == 0.0
    tips = suggest(shape, profile)
    assert tips and [t.text for t in tips] == list(plan.suggestions)
    kinds = {t.kind for t in tips}
    assert kinds & {"quant", "context"}
    for tip in tips:
        applied = make_plan(shape, profile, **tip.kwargs())
        assert applied.fits, tip.text
        assert applied.total_bytes <= profile.model_memory_bytes
        if tip.kind == "prune":
            assert applied.resident


def test_shorter_context_suggestion():
    shape = tiny(n_layers=8, n_experts=8, top_k=2)
    profile = load_profile("camera-arm-2gb")
    probe = make_plan(shape, profile, quant="Q2_K", context_length=256)
    # Fits at 256 tokens of context, not at 64k.
    stream = shape.top_k * sum(probe.expert_bytes_per_layer.values())
    budget = probe.dense_bytes + stream + 4 * probe.kv_bytes
    profile = with_budget("camera-arm-2gb", budget, context_length=65536,
                          quant_preferences=("Q2_K",), default_quant="Q2_K")
    plan = make_plan(shape, profile)
    assert not plan.fits
    ctx = [t for t in suggest(shape, profile) if t.kind == "context"]
    assert ctx and ctx[0].context_length == 1024
    assert make_plan(shape, profile, **ctx[0].kwargs()).fits


def test_streaming_plan_suggests_pruning_that_makes_it_resident():
    shape = olmoe_like()
    usage = skewed_usage(shape)
    profile = load_profile("camera-arm-2gb")
    prune = [t for t in suggest(shape, profile, usage) if t.kind == "prune"]
    assert prune
    plan = make_plan(shape, profile, usage, **prune[0].kwargs())
    assert plan.resident and plan.expected_hit_rate == 1.0
    assert 0 < plan.prune_fraction < 1
    n_dropped = round(plan.prune_fraction * 64)
    assert all(len(v) == n_dropped for v in plan.pruned_experts.values())
    assert all(len(v) == 64 - n_dropped for v in plan.hot_experts.values())


def test_pruning_drops_the_least_used_experts():
    shape = tiny(n_layers=1, n_experts=4, top_k=1)
    usage = ExpertUsage({0: (0.1, 0.6, 0.05, 0.25)})
    plan = make_plan(shape, load_profile("laptop-16gb"), usage, prune_fraction=0.5)
    assert plan.pruned_experts == {0: (0, 2)}
    assert plan.hot_experts == {0: (1, 3)}
    assert plan.expert_bytes_total == 2 * plan.expert_bytes_per_layer[0]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"prune_fraction": 1.0}, "prune_fraction must be in"),
    ({"prune_fraction": 0.9}, "fewer than top_k"),
    ({"context_length": 0}, "context_length must be positive"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(PlanError, match=message):
        make_plan(tiny(n_experts=4, top_k=2), load_profile("laptop-16gb"), **kwargs)


@pytest.mark.parametrize(("change", "message"), [
    ({"top_k": 9}, r"ModelShape.top_k must be <= n_experts \(4\)"),
    ({"n_layers": 0}, "ModelShape.n_layers must be a positive integer"),
    ({"moe_layers": (5,)}, "ModelShape.moe_layers"),
    ({"expert_params_per_layer": {0: 10, 1: 10}}, "ModelShape.expert_params_per_layer"),
])
def test_bad_shape_names_the_field(change, message):
    with pytest.raises(PlanError, match=message):
        make_plan(replace(tiny(), **change), load_profile("laptop-16gb"))


def test_bad_usage_names_the_layer():
    usage = ExpertUsage({0: (0.5, 0.5)})
    with pytest.raises(PlanError, match=r"ExpertUsage.per_layer\[0\]: expected 4 frequencies"):
        make_plan(tiny(), load_profile("laptop-16gb"), usage)


def test_usage_from_counts_and_round_trip():
    usage = ExpertUsage.from_counts({0: [50, 30, 15, 5]}, n_tokens=100)
    assert usage.per_layer[0] == (0.5, 0.3, 0.15, 0.05)
    assert ExpertUsage.from_dict(json.loads(json.dumps(usage.to_dict()))) == usage


@pytest.mark.parametrize("profile", ["laptop-16gb", "camera-arm-2gb", "phone-8gb"])
def test_plan_round_trips_through_json(profile):
    shape = olmoe_like()
    plan = make_plan(shape, load_profile(profile), skewed_usage(shape))
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again == plan


def test_plan_from_dict_checks_scalar_types():
    d = make_plan(tiny(), load_profile("laptop-16gb")).to_dict()
    d["fits"] = "yes"
    with pytest.raises(PlanError, match=r"plan: field 'fits' must be bool, got 'yes'"):
        Plan.from_dict(d)


def test_plan_from_dict_names_missing_fields():
    d = make_plan(tiny(), load_profile("laptop-16gb")).to_dict()
    del d["hot_experts"]
    with pytest.raises(PlanError, match=r"manifest.json: plan: missing field\(s\) hot_experts"):
        Plan.from_dict(d, where="manifest.json: plan")


def test_shape_from_tensors():
    hidden, inter, experts = 256, 512, 4
    tensors = [
        ("token_embd.weight", (1000, hidden), False),
        ("blk.0.attn_q.weight", (hidden, hidden), False),
        ("blk.0.attn_norm.weight", (hidden,), False),
        ("blk.0.ffn_gate_exps.weight", (experts, inter, hidden), True),
        ("blk.0.ffn_up_exps.weight", (experts, inter, hidden), True),
        ("blk.0.ffn_down_exps.weight", (experts, hidden, inter), True),
    ]
    shape = shape_from_tensors(tensors, n_layers=1, moe_layers=(0,), n_experts=experts, top_k=2,
                               hidden_size=hidden, vocab_size=1000, n_kv_heads=2, head_dim_k=64,
                               head_dim_v=64)
    assert shape.dense_params == 1000 * hidden + hidden * hidden + hidden
    assert shape.expert_params_per_layer == {0: 3 * hidden * inter}
    assert shape.expert_row_len == inter
    assert shape.active_params == shape.dense_params + 2 * 3 * hidden * inter


def test_render_plan_is_a_readable_table():
    shape = olmoe_like()
    text = render_plan(make_plan(shape, load_profile("camera-arm-2gb")))
    assert "camera-arm-2gb" in text and "streams experts" in text
    for label in ("budget", "dense weights", "KV cache", "hot experts", "decode (est.)", "why:"):
        assert label in text
    assert "suggestions:" in text


def _write_tiny_moe_gguf(path, hidden: int, inter: int, experts: int, layers: int, vocab: int):
    """A float32 llama-architecture MoE GGUF, just enough for llama.cpp's quantizer."""
    import numpy as np

    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(inter)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_expert_count(experts)
    w.add_expert_used_count(2)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,),
              "output.weight": (vocab, hidden)}
    for b in range(layers):
        shapes |= {
            f"blk.{b}.attn_norm.weight": (hidden,), f"blk.{b}.ffn_norm.weight": (hidden,),
            f"blk.{b}.attn_q.weight": (hidden, hidden),
            f"blk.{b}.attn_k.weight": (hidden // 2, hidden),
            f"blk.{b}.attn_v.weight": (hidden // 2, hidden),
            f"blk.{b}.attn_output.weight": (hidden, hidden),
            f"blk.{b}.ffn_gate_inp.weight": (experts, hidden),
            f"blk.{b}.ffn_gate_exps.weight": (experts, inter, hidden),
            f"blk.{b}.ffn_up_exps.weight": (experts, inter, hidden),
            f"blk.{b}.ffn_down_exps.weight": (experts, hidden, inter),
        }
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return [(n, s, "_exps" in n) for n, s in shapes.items()]


@pytest.mark.engine
def test_mixed_precision_plan_quantizes_as_planned_in_llama_cpp(tmp_path):
    """The plan's file type + tensor_types, run through llama.cpp's own quantizer, give dense
    tensors the planned type, leave experts to the file type's mix, and sizes near estimates."""
    pytest.importorskip("llama_cpp")
    from contract.gguf_layout import read_layout
    from packager.quantize import QuantizeOptions, quantize

    hidden, inter, experts, layers = 256, 512, 4, 2
    src = tmp_path / "f32.gguf"
    tensors = _write_tiny_moe_gguf(src, hidden, inter, experts, layers, vocab=512)
    shape = shape_from_tensors(tensors, n_layers=layers, moe_layers=(0, 1), n_experts=experts,
                               top_k=2, hidden_size=hidden, vocab_size=512, n_kv_heads=2,
                               head_dim_k=64, head_dim_v=64)
    roomy = with_budget("laptop-16gb", 2**30)
    q8 = make_plan(shape, roomy, quant="Q8_0")
    q4 = make_plan(shape, roomy, quant="Q4_K_M")
    # Room for Q4_K_M experts with Q8_0 dense, not for Q8_0 experts; storage too slow to stream.
    profile = with_budget("laptop-16gb", q4.total_bytes + q8.dense_bytes - q4.dense_bytes,
                          quant_preferences=("Q8_0", "Q4_K_M"), default_quant="Q4_K_M",
                          storage_read_mb_s=0.001)
    plan = make_plan(shape, profile)
    assert (plan.quant_experts, plan.quant_dense) == ("Q4_K_M", "Q8_0")
    assert plan.tensor_types == {DENSE_TENSORS: "q8_0"}

    out = quantize(src, tmp_path / "q.gguf", QuantizeOptions(
        plan.quant_experts, threads=2, tensor_types=plan.tensor_types))
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    for name, _, is_expert in tensors:
        if name.endswith("norm.weight") or "gate_inp" in name:
            assert types[name] == "F32", name
        elif is_expert:
            assert types[name] in ("Q4_K", "Q6_K"), name
        else:
            assert types[name] == "Q8_0", name
    layout = read_layout(out)
    assert layout.dense_bytes == pytest.approx(plan.dense_bytes, rel=0.1)
    for layer in layout.expert_layers:
        assert layer.expert_bytes == pytest.approx(plan.expert_bytes_per_layer[layer.layer],
                                                   rel=0.15)
