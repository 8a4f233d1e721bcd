"""Expert pruning: survivor choice and config (pure), then real pruned checkpoints and bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from edgemoe_fixtures.corpus import calibration_text, heldout_text
from packager.prune import (
    PruneError,
    choose_survivors,
    n_to_remove,
    plan_tensor,
    prune_checkpoint,
    pruned_config,
)
from packager.usage import from_routing
from tests.conftest import PRUNE_FIXTURES

pytestmark = pytest.mark.unit


FIXTURE = "qwen3moe-trained"


def _usage(weights_by_expert: list[float], counts_by_expert: list[int] | None = None):
    """A one-layer (layer 0) top-1 profile with the given router weight per expert."""
    counts = counts_by_expert or [1] * len(weights_by_expert)
    ids, probs = [], []
    for e, (w, c) in enumerate(zip(weights_by_expert, counts, strict=True)):
        for _ in range(c):
            row = np.full(len(counts), (1 - w / c) / (len(counts) - 1))
            row[e] = w / c
            ids.append([e])
            probs.append(row)
    return from_routing({0: np.array(ids)}, {0: np.array(probs)}, source="llama.cpp",
                        text_sha256="0" * 64)


# --- pure -------------------------------------------------------------------------------------
def test_usage_strategy_keeps_experts_with_most_router_weight():
    usage = _usage([0.9, 0.3, 0.8, 0.6])
    assert choose_survivors(usage, [0], 4, 2) == {0: (0, 2)}
    assert choose_survivors(usage, [0], 4, 3) == {0: (0, 2, 3)}


def test_group_limited_routers_keep_as_many_experts_in_every_group():
    """Two groups of two: the best two overall (0 and 1, both in group 0) would put expert 1
    in group 1 once renumbered; each group keeps its own best instead."""
    usage = _usage([0.9, 0.8, 0.3, 0.6])
    assert choose_survivors(usage, [0], 4, 2) == {0: (0, 1)}
    assert choose_survivors(usage, [0], 4, 2, groups=2) == {0: (0, 3)}
    picked = choose_survivors(None, [0, 1], 16, 8, "random", seed=1, groups=4)
    assert all(sorted(e // 4 for e in v) == [0, 0, 1, 1, 2, 2, 3, 3] for v in picked.values())


def test_a_router_row_vector_is_pruned_along_its_expert_axis():
    """ERNIE keeps its selection bias as [1, experts]: the experts run along the second axis."""
    name = "model.layers.1.mlp.moe_statics.e_score_correction_bias"
    assert plan_tensor(name, (1, 8), {1: (2, 5)}, 8, {name}) == (name, (2, 5))
    with pytest.raises(PruneError, match="expected 8 experts"):
        plan_tensor(name, (2, 8), {1: (2, 5)}, 8, {name})


def test_random_strategy_is_seeded_and_per_layer():
    a = choose_survivors(None, [0, 1, 2], 16, 8, "random", seed=3)
    assert a == choose_survivors(None, [0, 1, 2], 16, 8, "random", seed=3)
    assert a != choose_survivors(None, [0, 1, 2], 16, 8, "random", seed=4)
    assert all(len(v) == 8 and len(set(v)) == 8 for v in a.values())


def test_usage_must_match_the_model():
    usage = _usage([0.9, 0.3, 0.8, 0.6])
    with pytest.raises(PruneError, match="4 experts per layer, the checkpoint 8"):
        choose_survivors(usage, [0], 8, 4)
    with pytest.raises(PruneError, match=r"no data for MoE layers \[1\]"):
        choose_survivors(usage, [0, 1], 4, 2)
    with pytest.raises(PruneError, match="needs a usage profile"):
        choose_survivors(None, [0], 4, 2)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 0.01, -0.5])
def test_fraction_must_remove_some_but_not_all(fraction):
    with pytest.raises(PruneError):
        n_to_remove(16, fraction)


def test_config_gets_new_expert_count_and_clamped_top_k():
    from packager.families import family_for
    from tests.packager.synthetic import CONFIGS

    qwen = {**CONFIGS["qwen3moe"], "num_experts": 8, "num_local_experts": 8,
            "num_experts_per_tok": 4}  # fmt: skip
    cfg = pruned_config(family_for(qwen).config, 3)
    assert cfg == {**qwen, "num_experts": 3, "num_local_experts": 3, "num_experts_per_tok": 3}
    deepseek = {**CONFIGS["deepseek2"], "n_routed_experts": 16, "n_group": 4, "topk_group": 2,
                "topk_method": "group_limited_greedy"}  # fmt: skip
    with pytest.raises(PruneError, match="n_group=4"):
        pruned_config(family_for(deepseek).config, 10)
    assert pruned_config(family_for(deepseek).config, 8)["n_routed_experts"] == 8


def test_tensor_plan_renumbers_selects_and_drops():
    kept = {2: (1, 3)}
    router = {"model.layers.2.mlp.gate.weight"}
    plan = lambda n, shape=(4, 8): plan_tensor(n, shape, kept, 4, router)  # noqa: E731
    assert plan("model.layers.2.mlp.experts.3.up_proj.weight") == (
        "model.layers.2.mlp.experts.1.up_proj.weight", None)
    assert plan("model.layers.2.mlp.experts.0.up_proj.weight") is None
    assert plan("model.layers.2.mlp.gate.weight") == ("model.layers.2.mlp.gate.weight", (1, 3))
    assert plan("model.layers.2.mlp.experts.gate_up_proj", (4, 16, 8))[1] == (1, 3)
    assert plan("model.layers.2.self_attn.q_proj.weight") == (
        "model.layers.2.self_attn.q_proj.weight", None)
    with pytest.raises(PruneError, match="expected 4 experts along the first axis"):
        plan("model.layers.2.mlp.gate.weight", (5, 8))


# --- real checkpoints ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ckpt(fixture_checkpoint) -> Path:
    return fixture_checkpoint(FIXTURE)


@pytest.fixture(scope="module")
def usage(ckpt):
    from packager.calibrate import calibrate

    return calibrate(ckpt, [calibration_text()], engine="llama.cpp", chunk_tokens=512,
                     max_tokens=4096)


@pytest.fixture(scope="module")
def pruned(ckpt, usage, tmp_path_factory):
    out = tmp_path_factory.mktemp("prune") / "p25"
    return prune_checkpoint(ckpt, usage, 0.25, out)


def _tensors(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), framework="np") as st:
            out.update({k: st.get_tensor(k) for k in st.keys()})
    return out


@pytest.mark.engine
def test_reported_cost_matches_a_recomputation(ckpt, usage, pruned):
    assert pruned.n_experts_after == 12 and pruned.top_k_after == 2
    for layer in (0, 1, 2, 3):
        kept = pruned.kept[layer]
        gone = sorted(set(range(16)) - set(kept))
        assert list(pruned.removed[layer]) == gone
        counts = np.array(usage.counts[layer])
        assert pruned.removed_selections[layer] == pytest.approx(counts[gone].sum() / counts.sum())
        # The four removed experts carried the least router weight in this layer.
        weights = np.array(usage.weight_sum[layer])
        assert weights[gone].max() <= weights[list(kept)].min()
    before, after = _tensors(ckpt), _tensors(pruned.out_dir)
    assert sum(a.size for a in before.values()) == pruned.params_before
    assert sum(a.size for a in after.values()) == pruned.params_after
    # Per layer, 4 experts x 3 matrices of 256x256, and 4 router rows of 256.
    assert pruned.params_before - pruned.params_after == 4 * (4 * 3 * 256 * 256 + 4 * 256)
    cfg = json.loads((pruned.out_dir / "config.json").read_text())
    orig = json.loads((ckpt / "config.json").read_text())
    keys = [k for k in ("num_experts", "num_local_experts", "n_routed_experts") if k in orig]
    assert keys and all(cfg[k] == 12 for k in keys)
    assert cfg["num_experts_per_tok"] == 2
    assert {k: v for k, v in cfg.items() if k not in keys} == {
        k: v for k, v in orig.items() if k not in keys}
    record = json.loads((pruned.out_dir / "edgemoe_prune.json").read_text())
    assert record["kept"]["0"] == list(pruned.kept[0])
    tokenizer = (pruned.out_dir / "tokenizer.json").read_bytes()
    assert tokenizer == (ckpt / "tokenizer.json").read_bytes()


@pytest.mark.engine
def test_survivors_are_copied_bit_exactly(ckpt, pruned):
    before, after = _tensors(ckpt), _tensors(pruned.out_dir)
    kept = pruned.kept[1]
    for new, old in enumerate(kept):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            a = after[f"model.layers.1.mlp.experts.{new}.{proj}.weight"]
            b = before[f"model.layers.1.mlp.experts.{old}.{proj}.weight"]
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(after["model.layers.1.mlp.gate.weight"],
                                  before["model.layers.1.mlp.gate.weight"][list(kept)])


@pytest.mark.engine
def test_pruned_bundle_loads_in_stock_llama_cpp(pruned, tmp_path):
    import gguf
    import llama_cpp

    from packager.api import PackOptions, pack

    bundle = tmp_path / "bundle"
    pack(PackOptions(src=str(pruned.out_dir), out_dir=bundle, quant="Q8_0", reference=False))
    reader = gguf.GGUFReader(bundle / "model.gguf")
    assert reader.fields["qwen3moe.expert_count"].contents() == 12
    assert reader.fields["qwen3moe.expert_used_count"].contents() == 2
    shapes = {t.name: [int(x) for x in t.shape] for t in reader.tensors}
    assert shapes["blk.0.ffn_gate_exps.weight"][2] == 12  # ggml order: [n_embd, n_ff, n_expert]
    llm = llama_cpp.Llama(str(bundle / "model.gguf"), n_ctx=128, n_threads=2, verbose=False)
    try:
        out = llm.create_completion("def main(", max_tokens=12, temperature=0.0)
    finally:
        llm.close()
    assert out["usage"]["completion_tokens"] >= 1
    assert out["choices"][0]["text"].strip()


@pytest.fixture(scope="module")
def evaluator(ckpt):
    from packager.prune import PruneEvaluator

    return PruneEvaluator(ckpt, heldout_text(), n_tokens=512, chunk=128)


@pytest.mark.reference
@pytest.mark.engine
def test_prune_report_agrees_with_the_pruned_gguf(ckpt, usage, evaluator, tmp_path):
    """transformers(pruned) vs a llama.cpp F32 GGUF of the same pruned checkpoint.

    At 50% usage-guided pruning costs something measurable (at 25% it removes only experts
    the held-out text never routes to, and the KL is zero).
    """
    from packager.fidelity import gguf_logits, measure
    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    half = prune_checkpoint(ckpt, usage, 0.5, tmp_path / "p50")
    report = evaluator.report(half.out_dir)
    gguf_path = write_gguf(open_checkpoint(half.out_dir), tmp_path / "p.gguf", "F32").path
    chunks = evaluator.chunks
    recomputed = measure(evaluator.reference, gguf_logits(gguf_path, chunks), chunks)
    print(report, recomputed)
    assert report["n_tokens"] == recomputed.n_tokens
    assert report["mean_kl"] > 1e-4
    assert report["mean_kl"] == pytest.approx(recomputed.mean_kl, rel=0.05)
    assert report["top1_agreement"] == pytest.approx(recomputed.top1_agreement, abs=0.02)
    assert report["ppl_pruned"] == pytest.approx(recomputed.ppl_candidate, rel=0.01)


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_usage_guided_beats_random_pruning(fraction, ckpt, usage, evaluator, tmp_path):
    def kl(strategy: str, seed: int) -> float:
        out = tmp_path / f"{strategy}-{seed}"
        prune_checkpoint(ckpt, usage, fraction, out, strategy, seed)
        return evaluator.report(out)["mean_kl"]

    guided = kl("usage", 0)
    random = [kl("random", seed) for seed in (0, 1, 2)]
    print(f"prune {fraction:.0%}: guided KL {guided:.4f}, random {np.round(random, 4).tolist()}")
    assert guided < float(np.mean(random))


@pytest.mark.engine
@pytest.mark.parametrize("name", PRUNE_FIXTURES)
def test_every_family_prunes_to_a_loadable_gguf(name, fixture_checkpoint, tmp_path):
    import gguf
    import llama_cpp

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    result = prune_checkpoint(fixture_checkpoint(name), None, 0.25, tmp_path / "p", "random")
    kept = result.n_experts_before * 3 // 4
    assert result.n_experts_after == kept
    path = write_gguf(open_checkpoint(result.out_dir), tmp_path / "p.gguf", "F16").path
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    assert reader.fields[f"{arch}.expert_count"].contents() == kept
    llm = llama_cpp.Llama(str(path), n_ctx=64, n_threads=2, verbose=False)
    try:
        assert llm.create_completion("x = ", max_tokens=4, temperature=0.0)["choices"]
    finally:
        llm.close()
