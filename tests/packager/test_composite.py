"""Vision+text checkpoints (released Qwen3.5): their text model is packed, said in one line, and
is the same model transformers runs; the vision tower is left out (packager/composite.py)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from packager.composite import text_config, text_name
from packager.errors import UnsupportedArchitectureError
from packager.families import family_for, supported_architectures

pytestmark = pytest.mark.unit

COMPOSITE = "Qwen3_5MoeForConditionalGeneration"


def _composite(**text):
    from tests.packager.synthetic import CONFIGS

    inner = {k: v for k, v in CONFIGS["qwen35moe"].items()
             if k not in ("architectures", "eos_token_id")} | text
    return {"architectures": [COMPOSITE], "model_type": "qwen3_5_moe", "eos_token_id": 7,
            "tie_word_embeddings": False, "text_config": inner,
            "vision_config": {"depth": 1, "hidden_size": 32}}


def test_stored_names_map_to_the_text_models_and_the_vision_tower_to_none():
    assert text_name("model.language_model.layers.3.mlp.gate.weight") == \
        "model.layers.3.mlp.gate.weight"
    assert text_name("language_model.model.norm.weight") == "model.norm.weight"  # Llama 4
    assert text_name("language_model.lm_head.weight") == "lm_head.weight"
    assert text_name("lm_head.weight") == "lm_head.weight"
    assert text_name("mtp.fc.weight") == "mtp.fc.weight"  # the family skips it itself
    for vision in ("model.visual.blocks.0.attn.qkv.weight", "vision_model.patch_embedding.weight",
                   "multi_modal_projector.linear_1.weight"):
        assert text_name(vision) is None


def test_the_text_config_is_the_text_models_own():
    raw = _composite()
    text = text_config(raw, "Qwen3_5MoeForCausalLM")
    assert text["architectures"] == ["Qwen3_5MoeForCausalLM"]
    assert text["eos_token_id"] == 7 and text["tie_word_embeddings"] is False  # inherited
    assert text_config(_composite(eos_token_id=9), "X")["eos_token_id"] == 9  # its own wins
    family = family_for(raw)
    assert family.architecture == "Qwen3_5MoeForCausalLM" and family.experts.n_experts == 4
    assert COMPOSITE in supported_architectures()


def test_a_composite_without_its_text_config_is_one_line():
    raw = {k: v for k, v in _composite().items() if k != "text_config"}
    with pytest.raises(UnsupportedArchitectureError, match="'text_config' is missing") as err:
        family_for(raw)
    assert "\n" not in str(err.value)
    with pytest.raises(UnsupportedArchitectureError, match="Qwen3VLMoeForCond.*not supported"):
        family_for(_composite() | {"architectures": ["Qwen3VLMoeForConditionalGeneration"]})


@pytest.mark.engine
@pytest.mark.reference
def test_a_composite_packs_its_text_model_and_says_so(fixture_checkpoint, tmp_path):
    import torch
    from safetensors.numpy import load_file, save_file
    from transformers import AutoModelForCausalLM

    from edgemoe_fixtures.corpus import heldout_text
    from packager.api import PackOptions, pack
    from packager.fidelity import gguf_logits, measure, reference_logits, token_chunks
    from tests.packager.test_bad_input import EDGEMOE

    src = fixture_checkpoint("qwen35moe-vl-tiny")
    out = tmp_path / "vl"
    proc = subprocess.run([*EDGEMOE, "pack", str(src), "-o", str(out), "--quant", "F16",
                           "--format", "gguf", "--no-reference"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = (f"{COMPOSITE} is a vision+text checkpoint: packed its text model "
            "(Qwen3_5MoeForCausalLM); the vision tower (21 tensors) is not")
    assert line in proc.stdout.splitlines()
    assert json.loads((out / "report.json").read_text())["text_model"] == line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["shape"]["hf_architecture"] == "Qwen3_5MoeForCausalLM"

    # The same tensors as the text model alone: cut out here by hand, and as transformers
    # saves the text model it loads from the folder (which keeps the composite's names).
    cfg = json.loads((src / "config.json").read_text())
    alone = {n.replace("model.language_model.", "model."): t
             for n, t in load_file(str(src / "model.safetensors")).items() if "visual" not in n}
    by_hand = _folder(tmp_path / "by-hand", src, cfg["text_config"] | {
        "architectures": ["Qwen3_5MoeForCausalLM"], "eos_token_id": cfg["eos_token_id"]})
    save_file(alone, str(by_hand / "model.safetensors"), metadata={"format": "pt"})
    saved = tmp_path / "saved"
    AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).save_pretrained(saved)
    _folder(saved, src, None)
    ours = _tensors(out / "model.gguf")
    assert not any("visual" in n or n.startswith("v.") for n in ours)
    for text in (by_hand, saved):
        pack(PackOptions(src=str(text), out_dir=tmp_path / f"{text.name}-b", format="gguf",
                         quant="F16", reference=False))  # fmt: skip
        theirs = _tensors(tmp_path / f"{text.name}-b" / "model.gguf")
        assert ours.keys() == theirs.keys()
        assert all(np.array_equal(ours[n], theirs[n]) for n in ours), text.name

    chunks = token_chunks(src, heldout_text(), n_tokens=256, chunk=128)
    d = measure(reference_logits(src, chunks), gguf_logits(out / "model.gguf", chunks), chunks)
    assert d.top1_agreement >= 0.995 and d.mean_kl <= 1e-3, d


def _folder(folder, src, config):
    folder.mkdir(exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).write_bytes((src / f).read_bytes())
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def _tensors(path):
    import gguf

    return {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}


@pytest.mark.reference
def test_pruning_a_composite_writes_its_text_model(fixture_checkpoint, tmp_path):
    from packager.prune import prune_checkpoint
    from packager.source import open_checkpoint

    result = prune_checkpoint(fixture_checkpoint("qwen35moe-vl-tiny"), None, 0.25,
                              tmp_path / "p", "random")
    pruned = open_checkpoint(result.out_dir)
    assert pruned.composite is None and pruned.architecture == "Qwen3_5MoeForCausalLM"
    assert family_for(pruned.config).experts.n_experts == 12
    assert not any("visual" in n or "language_model" in n for n in pruned.tensors)
    assert "model.layers.0.mlp.experts.11.gate_proj.weight" in pruned.tensors
