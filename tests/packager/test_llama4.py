"""Llama 4: config namings (text model and vision+text composite), the GGUF llama.cpp's llama4
graph reads, the variants it computes differently (refused naming the field), the ONNX graph on
variants llama.cpp cannot run (small chunks, the no-rope temperature, top-2 input weighting, every
expert layout) against transformers, and a composite packed as its text model
(packager/composite.py), saying so."""

from __future__ import annotations

import json

import numpy as np
import pytest

from packager.errors import UnsupportedArchitectureError
from packager.families import family_for
from tests.packager.synthetic import CONFIGS, write_checkpoint

pytestmark = pytest.mark.unit


def _l4(**change):
    return {**CONFIGS["llama4"], **change}


def _composite(text: dict) -> dict:
    return {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
            "text_config": {k: v for k, v in text.items() if k != "architectures"},
            "vision_config": {"hidden_size": 32, "num_hidden_layers": 1}}  # fmt: skip


def test_llama4_reads_its_layout_and_a_composites_text_config():
    c = family_for(_l4()).config
    assert (c.moe_layers, c.n_experts, c.top_k, c.router_scoring) == ((1, 3), 4, 1, "sigmoid")
    assert [c.uses_rope(i) for i in range(4)] == [True, True, True, False]
    assert (c.intermediate_size, c.intermediate_size_mlp, c.rope.theta) == (32, 64, 500000.0)
    listed = family_for(_l4(no_rope_layers=[1, 0, 1, 1], moe_layers=[3])).config
    assert listed.moe_layers == (3,) and not listed.uses_rope(1)
    composite = family_for(_composite(_l4()))  # read as its text model (packager/composite.py)
    assert composite.architecture == "Llama4ForCausalLM"
    assert composite.experts.moe_layers == (1, 3) and composite.config.hidden_size == 32


def test_llama4_gguf_carries_what_llama_cpp_reads(tmp_path):
    import gguf

    from packager.gguf_build import write_gguf
    from packager.source import open_checkpoint

    src = write_checkpoint("llama4", tmp_path / "ck")
    reader = gguf.GGUFReader(write_gguf(open_checkpoint(src), tmp_path / "m.gguf", "F16").path)
    field = {k.removeprefix("llama4."): v.contents() for k, v in reader.fields.items()}
    assert (field["interleave_moe_layer_step"], field["expert_feed_forward_length"]) == (2, 32)
    assert (field["feed_forward_length"], field["expert_used_count"]) == (64, 1)
    assert "attention.sliding_window" not in field  # chunked attention: llama.cpp's default
    tensors = {t.name: t for t in reader.tensors}
    assert {"blk.1.ffn_gate_inp.weight", "blk.1.ffn_gate_shexp.weight", "blk.0.ffn_gate.weight",
            "rope_freqs.weight"} <= set(tensors)  # fmt: skip
    gate = tensors["blk.1.ffn_gate_exps.weight"]
    assert list(gate.shape) == [64 // 2, 32, 4] or list(gate.shape) == [32, 32, 4]
    # llama3 scaling: the high frequencies untouched, the lowest divided by the factor
    freqs = np.asarray(tensors["rope_freqs.weight"].data)
    assert freqs[0] == pytest.approx(1.0) and freqs[-1] == pytest.approx(8.0)


def test_fused_experts_are_split_and_transposed_into_llama_cpp_stacks():
    adapter = family_for(_l4()).gguf
    rng = np.random.default_rng(0)
    gate_up = rng.normal(size=(4, 32, 64)).astype(np.float32)  # [E, hidden, 2F]
    down = rng.normal(size=(4, 32, 32)).astype(np.float32)  # [E, F, hidden]
    data = {"model.layers.1.feed_forward.experts.gate_up_proj": gate_up,
            "model.layers.1.feed_forward.experts.down_proj": down}  # fmt: skip
    planned = {t.name: t for t in adapter.plan({n: a.shape for n, a in data.items()}, data.get)
               if t.is_expert}  # fmt: skip
    g, u, d = (planned[f"blk.1.ffn_{x}_exps.weight"] for x in ("gate", "up", "down"))
    np.testing.assert_array_equal(g.build()[2], gate_up[2, :, :32].T)  # expert 2's [F, hidden]
    np.testing.assert_array_equal(u.build()[2], gate_up[2, :, 32:].T)
    np.testing.assert_array_equal(d.build()[2], down[2].T)  # [hidden, F]
    assert g.shape == (4, 32, 32) and d.shape == (4, 32, 32)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"attention_chunk_size": 4096}, "'attention_chunk_size' is 4096"),
        ({"no_rope_layer_interval": 2}, "'no_rope_layer_interval' is 2"),
        ({"no_rope_layers": [1, 0, 1, 1]}, "'no_rope_layers' is [1, 0, 1, 1]"),
        ({"moe_layers": [1]}, "'moe_layers' is [1]"),
        ({"use_qk_norm": False}, "'use_qk_norm' is False"),
        ({"attn_temperature_tuning": False}, "attn_temperature_tuning=False"),
        ({"floor_scale": 4096}, "floor_scale=4096"),
        ({"attention_bias": True}, "'attention_bias' is True"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}},
         "missing or non-numeric 'rope_parameters.low_freq_factor'"),
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}},
         "rope_parameters.rope_type 'dynamic' is not supported"),
    ],
)
def test_llama4_variants_llama_cpp_computes_differently_are_named(change, message):
    with pytest.raises(UnsupportedArchitectureError) as err:
        family_for(_l4(**change)).require_gguf()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_128_expert_model_has_no_qk_norm():
    """llama.cpp skips q/k norms exactly when there are 128 experts (Maverick)."""
    family_for(_l4(num_local_experts=128, use_qk_norm=False)).require_gguf()
    with pytest.raises(UnsupportedArchitectureError, match="'use_qk_norm' is True"):
        family_for(_l4(num_local_experts=128)).require_gguf()


def test_onnx_reads_what_llama_cpp_hard_codes_and_refuses_what_it_cannot_compute(tmp_path):
    from packager.source import open_checkpoint

    ckpt = open_checkpoint(write_checkpoint("llama4", tmp_path / "ck"))
    family_for(ckpt.config).check(ckpt, ("gguf", "onnx"))
    # Fields llama.cpp's graph fixes are read as they are: an ONNX-only pack goes ahead, a GGUF
    # is refused (above).
    variant = family_for(_l4(attention_chunk_size=16, no_rope_layers=[1, 0, 1, 1]))
    variant.check(ckpt, ("onnx",))
    with pytest.raises(UnsupportedArchitectureError, match="'no_rope_layers'"):
        variant.check(ckpt, ("onnx", "gguf"))
    adapter = variant.onnx(ckpt)
    assert [adapter._chunked(i) for i in range(4)] == [True, False, True, True]
    for change, message in (({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
                            ({"layer_types": ["sliding_attention"] * 4}, "layer_types"),
                            ({"attention_chunk_size": 0}, "positive attention_chunk_size")):
        with pytest.raises(UnsupportedArchitectureError, match=message) as err:
            family_for(_l4(**change)).onnx(ckpt)
        assert str(err.value).startswith("Llama4ForCausalLM (ONNX export): ")
        assert "\n" not in str(err.value)


def test_a_composite_is_read_as_its_text_model(tmp_path):
    """The packer sees the language model: its config, its tensors without the prefix, and a
    one-line note; the vision tower's tensors are left out."""
    from packager.source import open_checkpoint

    src = write_checkpoint("llama4", tmp_path / "text")
    weights = dict(np.load(_npz(src, tmp_path)))
    composite = tmp_path / "composite"
    composite.mkdir()
    from safetensors.numpy import save_file

    renamed = {f"language_model.{k}": v for k, v in weights.items()}
    renamed |= {"vision_model.patch_embedding.linear.weight": np.zeros((32, 588), np.float32),
                "multi_modal_projector.linear_1.weight": np.zeros((32, 32), np.float32)}
    save_file(renamed, str(composite / "model.safetensors"), metadata={"format": "pt"})
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (composite / f).write_bytes((src / f).read_bytes())
    (composite / "config.json").write_text(json.dumps(_composite(CONFIGS["llama4"])))
    from packager.composite import composite_note

    ckpt = open_checkpoint(composite)
    assert ckpt.config["architectures"] == ["Llama4ForCausalLM"]
    assert set(ckpt.tensors) == set(weights)
    name = "model.layers.1.feed_forward.router.weight"
    np.testing.assert_array_equal(ckpt.read(name), weights[name])
    assert len(ckpt.left_out) == 2
    note = composite_note(ckpt)
    assert note == ("Llama4ForConditionalGeneration is a vision+text checkpoint: packed its text "
                    "model (Llama4ForCausalLM); the vision tower (2 tensors) is not")


def _npz(src, tmp_path):
    from safetensors.numpy import load_file

    path = tmp_path / "weights.npz"
    np.savez(path, **load_file(src / "model.safetensors"))
    return path


# ----- the fixtures ------------------------------------------------------------------------------
@pytest.mark.engine
@pytest.mark.reference
def test_composite_fixture_packs_its_text_model_and_says_so(fixture_checkpoint, tmp_path):
    """llama4-vision-tiny (a one-layer vision tower beside the text model): the GGUF and the
    ONNX bundle hold the text model only, match the composite's own text forward, and the CLI
    says so."""
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForImageTextToText

    from edgemoe_fixtures.corpus import heldout_text
    from packager.fidelity import gguf_logits, onnx_logits, token_chunks

    ckpt = fixture_checkpoint("llama4-vision-tiny")

    def pack(fmt: str, quant: str):  # the bundle folder
        out = tmp_path / fmt
        proc = subprocess.run([sys.executable, "-m", "apps.cli.main", "pack", str(ckpt), "-o",
                               str(out), "--format", fmt, "--quant", quant, "--no-reference"],
                              capture_output=True, text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        notes = [line for line in proc.stdout.splitlines() if "vision+text checkpoint" in line]
        assert len(notes) == 1 and "packed its text model (Llama4ForCausalLM)" in notes[0]
        report = json.loads((out / "report.json").read_text())
        assert report["text_model"] == notes[0]
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["shape"]["hf_architecture"] == "Llama4ForCausalLM"
        return out

    out, onnx_out = pack("gguf", "F16"), pack("onnx", "fp32")
    import gguf

    names = [t.name for t in gguf.GGUFReader(str(out / "model.gguf")).tensors]
    assert not any("vision" in n or "mm" in n.split(".")[0] for n in names)
    chunks = token_chunks(ckpt, heldout_text(), n_tokens=256, chunk=128)
    model = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = [model(input_ids=torch.tensor([c[:-1]])).logits[0].numpy() for c in chunks]
    cand = gguf_logits(out / "model.gguf", chunks)
    ref, cand = np.concatenate(ref), np.concatenate(cand)
    assert (ref.argmax(-1) == cand.argmax(-1)).mean() >= 0.995
    # Row by row: llama4 routes each token to one expert, so a last-bit difference that moves
    # one token's choice moves that row (1 row of 256, max 0.17, on a CPU without AVX-512).
    rows = np.abs(cand - ref).max(-1)
    assert (rows <= 5e-2).mean() >= 0.99, np.sort(rows)[-5:]
    import onnx

    graph = onnx.load(str(onnx_out / "model.onnx"), load_external_data=False).graph
    assert not any("vision" in t.name or "projector" in t.name for t in graph.initializer)
    np.testing.assert_allclose(np.concatenate(onnx_logits(onnx_out / "model.onnx", chunks)), ref,
                               atol=1e-4)  # fmt: skip


@pytest.mark.engine
@pytest.mark.reference
@pytest.mark.parametrize(
    ("change", "builds"),
    [  # chunks of 8 tokens, a temperature floor of 4, two experts per token: the gathered
        # graphs and QMoE with two slots
        ({"attention_chunk_size": 8, "floor_scale": 4, "num_experts_per_tok": 2},
         (("fp32", "unique"), ("fp32", "pairs"), ("int8", "fused"))),
    ],
)
def test_onnx_computes_chunks_temperature_and_input_weighting_as_transformers(
    change, builds, fixture_checkpoint, tmp_path
):
    """llama4-tiny's weights under configs that exercise what its own config leaves idle
    (8192-token chunks, a temperature floor of 8192, top-1). Every expert layout agrees with
    transformers on one prefill and token by token through the cache across chunk borders."""
    import shutil

    import onnxruntime as ort
    import torch
    from transformers import AutoModelForCausalLM

    from edgemoe_fixtures.corpus import heldout_text
    from packager.fidelity import token_chunks
    from packager.onnx_export import export_onnx

    src = tmp_path / "ck"
    shutil.copytree(fixture_checkpoint("llama4-tiny"), src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(cfg | change))
    ids = token_chunks(src, heldout_text(), n_tokens=40, chunk=40)[0][:-1]
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()

    def run(sess, names, feed_ids, past):
        n_past = next(iter(past.values())).shape[2]
        feeds = {"input_ids": np.array([feed_ids], np.int64),
                 "attention_mask": np.ones((1, n_past + len(feed_ids)), np.int64),
                 "position_ids": np.arange(n_past, n_past + len(feed_ids))[None], **past}
        out = dict(zip(names, sess.run(None, feeds), strict=True))
        nxt = {k.replace("present.", "past_key_values."): v for k, v in out.items()
               if k.startswith("present.")}
        return out, nxt  # fmt: skip

    for quant, mode in builds:
        x = export_onnx(src, tmp_path / f"{quant}-{mode}", quant, expert_mode=mode)
        sess = ort.InferenceSession(str(x.model_file), providers=["CPUExecutionProvider"])
        empty = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
                 for i in sess.get_inputs() if i.name.startswith("past_key_values.")}  # fmt: skip
        whole, _ = run(sess, x.output_names, ids, empty)
        out, past = run(sess, x.output_names, ids[:5], empty)
        steps = [out["logits"][0]]
        for t in ids[5:]:
            out, past = run(sess, x.output_names, [t], past)
            steps.append(out["logits"][0])
        assert whole["routing.1"].shape == (len(ids), 2)
        for got in (whole["logits"][0], np.concatenate(steps)):
            if quant == "fp32":
                np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=f"{quant} {mode}")
            else:  # int8 weights: the same choices, within int8's rounding
                # (2 of 40 tokens' top choice moved on a CPU without AVX-512, AMD Zen 3;
                # 1 or none on the machines the bound was set on)
                agree = (got.argmax(-1) == ref.argmax(-1)).mean()
                assert agree >= 0.95, f"{quant} {mode}: top-1 agreement {agree:.3f}"
                np.testing.assert_allclose(got, ref, atol=0.1, err_msg=f"{quant} {mode}")
