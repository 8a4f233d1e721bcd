"""edgemoe_fixtures: the locally built checkpoints every other test stands on.

Unit tests cover the corpus, tokenizer, spec hashing and Hub-cache layout without torch; the
reference tests load each built checkpoint with transformers and check what it computes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgemoe_fixtures import (
    FIXTURES,
    TINY_FIXTURES,
    FixtureError,
    build_fixture,
    build_fixtures,
    cached_fixture,
    corpus,
    make_hub_cache,
    spec_hash,
)
from edgemoe_fixtures.build import MARKER, read_record
from edgemoe_fixtures.hub_cache import file_etag, repo_folder_name
from edgemoe_fixtures.specs import FixtureSpec
from edgemoe_fixtures.tokenizer import (
    CHAT_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    IM_START,
    QWEN2_PATTERN,
    VOCAB_SIZE,
    special_ids,
    train_tokenizer,
)

pytestmark = pytest.mark.unit


MOE_TINY = (
    "qwen3moe-tiny", "qwen2moe-tiny", "mixtral-tiny", "olmoe-tiny", "deepseek2-tiny",
    "deepseek3-tiny", "qwen35moe-tiny", "glm4moe-tiny", "lfm2moe-tiny", "ernie45moe-tiny",
    "deepseek4-tiny", "mimo2-tiny", "phimoe-tiny", "qwen3next-tiny", "granitehybrid-tiny",
    "qwen35moe-vl-tiny",
    "llama4-tiny", "llama4-vision-tiny",
)  # fmt: skip
# gpt-oss fixtures: their own tokenizer (tests/dev/test_gptoss_fixtures.py checks them).
HARMONY_TINY = ("gptoss-tiny", "gptoss-mxfp4-tiny")
EXPERT_KEY = {
    "qwen3moe-tiny": "model.layers.0.mlp.experts.7.gate_proj.weight",
    "qwen2moe-tiny": "model.layers.0.mlp.experts.7.gate_proj.weight",
    "mixtral-tiny": "model.layers.0.block_sparse_moe.experts.7.w1.weight",
    "olmoe-tiny": "model.layers.0.mlp.experts.7.gate_proj.weight",
    "deepseek2-tiny": "model.layers.1.mlp.experts.7.gate_proj.weight",  # layer 0 is dense
    "deepseek3-tiny": "model.layers.1.mlp.experts.15.gate_proj.weight",
    "qwen35moe-tiny": "model.layers.0.mlp.experts.15.gate_proj.weight",
    "glm4moe-tiny": "model.layers.1.mlp.experts.7.gate_proj.weight",  # layer 0 is dense
    "lfm2moe-tiny": "model.layers.1.feed_forward.experts.15.w1.weight",  # layer 0 is dense
    "ernie45moe-tiny": "model.layers.1.mlp.experts.7.gate_proj.weight",  # layer 0 is dense
    "deepseek4-tiny": "model.layers.0.ffn.experts.7.w1.weight",  # saved in the released naming
    "mimo2-tiny": "model.layers.1.mlp.experts.7.gate_proj.weight",  # layer 0 is dense
    "phimoe-tiny": "model.layers.0.block_sparse_moe.experts.7.w1.weight",
    "qwen3next-tiny": "model.layers.0.mlp.experts.15.gate_proj.weight",
    # Granite saves its experts stacked (gate and up rows fused), as its released checkpoints.
    "granitehybrid-tiny": "model.layers.0.block_sparse_moe.input_linear.weight",
    # The released Qwen3.5 layout: the text model under model.language_model.
    "qwen35moe-vl-tiny": "model.language_model.layers.0.mlp.experts.15.gate_proj.weight",
    "llama4-tiny": "model.layers.1.feed_forward.experts.gate_up_proj",  # fused, input-major
    "llama4-vision-tiny": "language_model.model.layers.1.feed_forward.experts.gate_up_proj",
}


def _run_python(code: str, **env: str) -> str:
    """Run ``code`` in a fresh interpreter (e.g. so HF_HUB_OFFLINE is read at import time)."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def _weight_keys(ckpt: Path) -> dict[str, str]:
    """tensor name -> file, read from safetensors headers (no torch)."""
    from safetensors import safe_open

    keys = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        with safe_open(f, "np") as st:
            keys.update(dict.fromkeys(st.keys(), f.name))
    return keys


# --- registry and spec hash -------------------------------------------------------------------


def test_registry_has_the_promised_fixtures():
    assert set(FIXTURES) == {
        "qwen3moe-tiny", "qwen2moe-tiny", "mixtral-tiny", "olmoe-tiny", "deepseek2-tiny",
        "deepseek3-tiny", "dense-tiny", "qwen3moe-medium", "qwen3moe-trained", "qwen3moe-large",
        "qwen35moe-tiny", "glm4moe-tiny", "lfm2moe-tiny", "ernie45moe-tiny",
        "deepseek4-tiny", "mimo2-tiny", "phimoe-tiny", "qwen3next-tiny", "granitehybrid-tiny",
        "qwen35moe-vl-tiny", *HARMONY_TINY, "gptoss-large", "llama4-tiny", "llama4-vision-tiny",
        "qwen35moe-large", "qwen3moe-xl",
    }  # fmt: skip
    assert set(TINY_FIXTURES) == {*MOE_TINY, "dense-tiny", *HARMONY_TINY}
    assert all(spec.is_moe for n, spec in FIXTURES.items() if n != "dense-tiny")
    assert not FIXTURES["dense-tiny"].is_moe


def test_building_with_no_names_builds_all_but_the_benches_large_ones(tmp_path, monkeypatch):
    """`edgemoe fixtures build DIR` writes small checkpoints, not the benches' gigabytes."""
    import edgemoe_fixtures.build as build

    built: list[str] = []
    monkeypatch.setattr(build, "build_fixture", lambda n, out, log=None: built.append(n) or out)
    build.build_fixtures(None, tmp_path, quiet=True)
    assert set(built) == set(FIXTURES) - {"qwen3moe-large", "gptoss-large", "qwen35moe-large",
                                          "qwen3moe-xl"}
    assert {*TINY_FIXTURES, "qwen3moe-medium", "qwen3moe-trained"} <= set(built)


def test_xl_fixture_is_the_large_one_with_experts_six_times_as_wide():
    """The storage benches' model (issue 20): the large fixture's function (so its trained
    routing) with 5 MB experts, 2.6 GB of them at Q8_0."""
    xl, large = FIXTURES["qwen3moe-xl"], FIXTURES["qwen3moe-large"]
    assert xl.widened_from == "qwen3moe-large" and xl.train_steps == 0
    mine, theirs = xl.config_dict(), large.config_dict()
    assert mine.pop("moe_intermediate_size") == 6 * theirs.pop("moe_intermediate_size")
    assert mine == theirs
    c = xl.config_dict()
    per_expert = 3 * c["hidden_size"] * c["moe_intermediate_size"] * 34 // 32
    assert per_expert > 4_900_000
    assert c["num_hidden_layers"] * c["num_experts"] * per_expert > 2_500_000_000
    assert spec_hash(xl) != spec_hash(large)


def test_large_fixture_has_400_mb_of_q8_0_experts():
    """Offloading is judged on a model whose experts are >= 400 MB (issue 10): Q8_0 stores a
    block of 32 weights in 34 bytes."""
    c = FIXTURES["qwen3moe-large"].config_dict()
    weights = (c["num_hidden_layers"] * c["num_experts"] * 3 * c["hidden_size"]
               * c["moe_intermediate_size"])
    assert weights * 34 // 32 >= 400_000_000


def test_spec_hash_tracks_every_field_but_the_description():
    spec = FIXTURES["qwen3moe-tiny"]
    assert spec_hash(spec) == spec_hash(dataclasses.replace(spec))
    assert spec_hash(spec) != spec_hash(dataclasses.replace(spec, train_steps=spec.train_steps + 1))
    assert spec_hash(spec) != spec_hash(dataclasses.replace(spec, config=(*spec.config, ("x", 1))))
    assert spec_hash(spec) == spec_hash(dataclasses.replace(spec, description="other words"))
    assert len({spec_hash(s) for s in FIXTURES.values()}) == len(FIXTURES)


def test_unknown_fixture_names_the_known_ones(tmp_path):
    with pytest.raises(FixtureError, match=r"unknown fixture 'qwen9'.*qwen3moe-tiny"):
        build_fixture("qwen9", tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --- corpus -----------------------------------------------------------------------------------


def test_corpus_sizes_and_disjoint_sources():
    train, held, calib = corpus.training_text(), corpus.heldout_text(), corpus.calibration_text()
    assert 150_000 < len(train) <= corpus.TRAINING_CAP
    assert 10_000 < len(held) <= corpus.HELDOUT_CAP
    assert 10_000 < len(calib) <= corpus.CALIBRATION_CAP
    lists = [corpus.TRAINING_MODULES, corpus.HELDOUT_MODULES, corpus.CALIBRATION_MODULES]
    assert sum(map(len, lists)) == len(set().union(*lists))
    # Disjoint files means disjoint text: no held-out or calibration paragraph is in training.
    for text in (held, calib):
        paragraphs = [p for p in text.split("\n\n") if len(p) > 200]
        assert paragraphs and not any(p in train for p in paragraphs)


def test_calibration_text_is_prose():
    calib = corpus.calibration_text()
    letters = sum(c.isalpha() or c.isspace() for c in calib) / len(calib)
    assert letters > 0.85
    assert "def " not in calib.split("\n\n")[0]


def test_corpus_does_not_depend_on_hash_seed():
    code = "from edgemoe_fixtures.corpus import corpus_digest; print(corpus_digest())"
    assert _run_python(code, PYTHONHASHSEED="1") == corpus.corpus_digest()


# --- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_round_trips_text():
    tok = train_tokenizer()
    samples = [
        corpus.heldout_text()[:3000],
        corpus.calibration_text()[:3000],
        "Grüße, naïve café — 東京 🙂\r\n\ttabs  and   spaces\n\n\nx = f'{y!r:>10}'",
    ]
    for text in samples:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_tokenizer_specials_and_size():
    tok = train_tokenizer()
    assert tok.get_vocab_size() == VOCAB_SIZE
    ids = special_ids(tok)
    assert (ids.endoftext, ids.im_start, ids.im_end) == tuple(range(VOCAB_SIZE - 3, VOCAB_SIZE))
    chat = f"{IM_START}user\nhi{IM_END}\n{ENDOFTEXT}"
    enc = tok.encode(chat).ids
    assert enc[0] == ids.im_start and ids.im_end in enc and enc[-1] == ids.endoftext
    # No BOS, no EOS: llama.cpp must not add one either (add_bos_token=false).
    assert tok.encode("hello").ids[0] not in (ids.endoftext, ids.im_start)


def test_tokenizer_splits_like_qwen2():
    tok = train_tokenizer()
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("Don't  stop 123 ab\n\n  x")]
    # Qwen2: one digit per piece, contractions split off, whitespace runs kept before words.
    assert pieces == ["Don", "'t", "Ġ", "Ġstop", "Ġ", "1", "2", "3", "Ġab", "ĊĊ", "Ġ", "Ġx"]
    data = json.loads(tok.to_str())
    assert data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] == QWEN2_PATTERN
    assert data["normalizer"]["type"] == "NFC"


def test_tokenizer_is_recognised_as_qwen2_by_the_gguf_converter():
    from packager.tokenizer_vocab import detect_pre

    assert detect_pre(json.loads(train_tokenizer().to_str())) == "qwen2"


def test_tokenizer_training_is_deterministic_across_processes():
    code = (
        "import hashlib; from edgemoe_fixtures.tokenizer import train_tokenizer; "
        "print(hashlib.sha256(train_tokenizer().to_str().encode()).hexdigest())"
    )
    a = _run_python(code, PYTHONHASHSEED="1")
    b = _run_python(code, PYTHONHASHSEED="2")
    assert a == b == hashlib.sha256(train_tokenizer().to_str().encode()).hexdigest()


# --- Hub cache layout -------------------------------------------------------------------------


@pytest.fixture
def small_checkpoint(tmp_path) -> Path:
    """A folder with a JSON file, an LFS-style weights file and a nested file."""
    ckpt = tmp_path / "ckpt"
    (ckpt / "sub").mkdir(parents=True)
    (ckpt / "config.json").write_text('{"model_type": "x"}\n')
    (ckpt / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    (ckpt / "sub" / "extra.txt").write_text("nested\n")
    (ckpt / ".hidden").write_text("not part of the checkpoint")
    return ckpt


def test_etags_are_what_the_hub_reports(small_checkpoint):
    weights = small_checkpoint / "model.safetensors"
    assert file_etag(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    config = small_checkpoint / "config.json"
    if shutil.which("git"):
        git = subprocess.run(["git", "hash-object", str(config)], capture_output=True, text=True)
        assert file_etag(config) == git.stdout.strip()
    data = config.read_bytes()
    assert file_etag(config) == hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_hub_cache_layout(small_checkpoint, tmp_path):
    cache = tmp_path / "hub"
    commit = make_hub_cache(small_checkpoint, cache, "org/name")
    repo = cache / repo_folder_name("org/name")
    assert repo.name == "models--org--name"
    assert len(commit) == 40 and int(commit, 16) >= 0
    assert (repo / "refs" / "main").read_text() == commit
    snap = repo / "snapshots" / commit
    link = snap / "sub" / "extra.txt"
    assert link.is_symlink() and os.readlink(link).startswith("../../../blobs/")
    assert os.readlink(snap / "config.json") == "../../blobs/" + file_etag(
        small_checkpoint / "config.json"
    )
    assert not (snap / ".hidden").exists()
    assert {p.name for p in (repo / "blobs").iterdir()} == {
        file_etag(small_checkpoint / n)
        for n in ("config.json", "model.safetensors", "sub/extra.txt")
    }
    # Same files, same commit: laying it out twice is idempotent.
    assert make_hub_cache(small_checkpoint, cache, "org/name") == commit


def test_hub_cache_resolves_offline_with_huggingface_hub(small_checkpoint, tmp_path):
    cache = tmp_path / "hub"
    commit = make_hub_cache(small_checkpoint, cache, "org/name")
    pinned = make_hub_cache(small_checkpoint, cache, "org/name", revision="ab" * 20)
    make_hub_cache(small_checkpoint, cache, "org/name", revision="v1")
    code = (
        "import sys; from huggingface_hub import snapshot_download as s\n"
        f"for rev in ('main', 'v1', '{pinned}'):\n"
        f"    print(s('org/name', cache_dir=sys.argv[1] if len(sys.argv) > 1 else {str(cache)!r},"
        " revision=rev, local_files_only=True))"
    )
    paths = _run_python(code, HF_HUB_OFFLINE="1").splitlines()
    snaps = cache / "models--org--name" / "snapshots"
    assert paths == [str(snaps / commit), str(snaps / commit), str(snaps / pinned)]
    assert (Path(paths[0]) / "sub" / "extra.txt").read_text() == "nested\n"
    assert (Path(paths[2]) / "model.safetensors").read_bytes() == (
        small_checkpoint / "model.safetensors"
    ).read_bytes()


def test_hub_cache_rejects_bad_repo_ids(small_checkpoint, tmp_path):
    for bad in ("", "a/b/c", "/name", "org/"):
        with pytest.raises(FixtureError, match="repo_id"):
            make_hub_cache(small_checkpoint, tmp_path / "hub", bad)


# --- built checkpoints (transformers) ---------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("name", [n for n in TINY_FIXTURES if n not in HARMONY_TINY])
def test_tiny_fixture_loads_and_generates(name):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = cached_fixture(name)
    spec = FIXTURES[name]
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (ckpt / f).is_file(), f
    config = json.loads((ckpt / "config.json").read_text())
    assert config["architectures"] == [spec.architecture]
    config = config.get("text_config") or config  # a composite's language model has the ids
    assert config["vocab_size"] == VOCAB_SIZE and config.get("bos_token_id") is None
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert len(tok) == VOCAB_SIZE and tok.bos_token is None
    ids = special_ids(train_tokenizer())
    assert config["eos_token_id"] == ids.endoftext == tok.eos_token_id
    gen_cfg = json.loads((ckpt / "generation_config.json").read_text())
    assert gen_cfg["eos_token_id"] == [ids.im_end, ids.endoftext]
    tcfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert tcfg["chat_template"] == CHAT_TEMPLATE and tcfg["add_bos_token"] is False

    if spec.is_composite:  # AutoModelForCausalLM would load its text model alone
        import transformers

        model_type = getattr(transformers, spec.architecture)
    else:
        model_type = AutoModelForCausalLM
    model = model_type.from_pretrained(ckpt, dtype=torch.float32)
    assert type(model).__name__ == spec.architecture
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "def add(a, b):"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    assert prompt[0, 0].item() == ids.im_start
    out = model.generate(prompt, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > prompt.shape[1]
    # Trained: clearly better than the uniform guess ln(1024) = 6.93 on text it never saw.
    assert read_record(ckpt)["heldout_loss"] < 6.0


@pytest.mark.reference
@pytest.mark.parametrize("name", MOE_TINY)
def test_experts_are_saved_one_tensor_per_expert(name):
    """As released checkpoints store them: one tensor per expert, except Llama 4, whose
    released weights are fused per layer (and transformers saves them so)."""
    keys = _weight_keys(cached_fixture(name))
    assert EXPERT_KEY[name] in keys
    fused = any(k.endswith(("experts.gate_up_proj", "experts.down_proj")) for k in keys)
    assert fused == name.startswith("llama4")


@pytest.mark.reference
def test_mixtral_fixture_is_sharded_with_a_resolving_index():
    ckpt = cached_fixture("mixtral-tiny")
    shards = sorted(p.name for p in ckpt.glob("model-*.safetensors"))
    assert len(shards) >= 3 and not (ckpt / "model.safetensors").exists()
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == _weight_keys(ckpt)
    assert sorted(set(index["weight_map"].values())) == shards


@pytest.mark.reference
def test_deepseek2_fixture_has_mla_and_a_dense_first_layer():
    keys = _weight_keys(cached_fixture("deepseek2-tiny"))
    assert "model.layers.0.mlp.gate_proj.weight" in keys  # first_k_dense_replace = 1
    assert "model.layers.1.mlp.shared_experts.gate_proj.weight" in keys
    assert "model.layers.1.self_attn.q_a_proj.weight" in keys  # q_lora_rank set
    assert "model.layers.1.self_attn.kv_a_proj_with_mqa.weight" in keys


@pytest.mark.reference
def test_deepseek3_fixture_has_a_nonzero_selection_bias_and_groups():
    from safetensors import safe_open

    ckpt = cached_fixture("deepseek3-tiny")
    config = json.loads((ckpt / "config.json").read_text())
    assert (config["n_group"], config["topk_group"], config["n_routed_experts"]) == (4, 2, 16)
    assert config["routed_scaling_factor"] == 2.5 and config["first_k_dense_replace"] == 1
    with safe_open(str(ckpt / "model.safetensors"), "np") as f:
        bias = f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias")
    assert bias.shape == (16,) and 0.05 < float(abs(bias).mean()) < 0.2


@pytest.mark.reference
def test_glm4moe_fixture_switches_on_every_router_feature():
    from safetensors import safe_open

    ckpt = cached_fixture("glm4moe-tiny")
    c = json.loads((ckpt / "config.json").read_text())
    assert (c["n_group"], c["topk_group"], c["n_routed_experts"], c["n_shared_experts"]) == (
        2, 1, 8, 1)
    assert c["routed_scaling_factor"] == 2.5 and c["first_k_dense_replace"] == 1
    assert c["use_qk_norm"] and c["attention_bias"] and c["norm_topk_prob"]
    assert c["rope_parameters"]["partial_rotary_factor"] == 0.5
    with safe_open(str(ckpt / "model.safetensors"), "np") as f:
        bias = f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias")
        assert "model.layers.1.self_attn.q_norm.weight" in f.keys()
    assert bias.shape == (8,) and 0.05 < float(abs(bias).mean()) < 0.2


@pytest.mark.reference
def test_ernie45moe_fixture_has_its_own_names_and_a_selection_bias():
    from safetensors import safe_open

    ckpt = cached_fixture("ernie45moe-tiny")
    c = json.loads((ckpt / "config.json").read_text())
    assert (c["moe_num_experts"], c["moe_k"], c["moe_num_shared_experts"]) == (8, 2, 2)
    assert (c["moe_layer_start_index"], c["moe_layer_interval"]) == (1, 1)
    assert c["tie_word_embeddings"] and "num_experts" not in c
    with safe_open(str(ckpt / "model.safetensors"), "np") as f:
        bias = f.get_tensor("model.layers.1.mlp.moe_statics.e_score_correction_bias")
        assert "lm_head.weight" not in f.keys()
    assert bias.shape == (1, 8) and 0.02 < float(abs(bias).mean()) < 0.1


@pytest.mark.reference
def test_deepseek4_fixture_has_a_hash_table_and_every_attention_kind():
    from safetensors import safe_open

    ckpt = cached_fixture("deepseek4-tiny")
    config = json.loads((ckpt / "config.json").read_text())
    assert config["mlp_layer_types"][0] == "hash_moe" and config["hc_mult"] == 4
    assert set(config["layer_types"]) == {"sliding_attention", "compressed_sparse_attention",
                                          "heavily_compressed_attention"}
    with safe_open(str(ckpt / "model.safetensors"), "np") as f:
        table = f.get_tensor("model.layers.0.ffn.gate.tid2eid")
        bias = f.get_tensor("model.layers.1.ffn.gate.bias")
    assert table.shape == (VOCAB_SIZE, 2) and (table[:, 0] != table[:, 1]).all()
    assert set(np.unique(table)) == set(range(8))  # every expert is some token's
    assert 0.05 < float(abs(bias).mean()) < 0.2


@pytest.mark.reference
def test_mimo2_fixture_has_both_attention_kinds_sinks_and_groups():
    from safetensors import safe_open

    ckpt = cached_fixture("mimo2-tiny")
    c = json.loads((ckpt / "config.json").read_text())
    assert c["layer_types"][:2] == ["full_attention", "sliding_attention"]
    assert (c["n_group"], c["topk_group"], c["head_dim"], c["v_head_dim"]) == (2, 1, 48, 32)
    with safe_open(str(ckpt / "model.safetensors"), "np") as f:
        k_full = f.get_slice("model.layers.0.self_attn.k_proj.weight").get_shape()
        k_swa = f.get_slice("model.layers.1.self_attn.k_proj.weight").get_shape()
        sinks = f.get_tensor("model.layers.1.self_attn.attention_sink_bias")
        bias = f.get_tensor("model.layers.1.mlp.gate.e_score_correction_bias")
    assert (k_full[0], k_swa[0]) == (48, 96)  # sliding layers: twice the KV heads
    assert sinks.shape == (4,) and float(abs(sinks).max()) > 0
    assert 0.05 < float(abs(bias).mean()) < 0.2


@pytest.mark.reference
def test_cached_fixture_is_reused_and_incomplete_folders_are_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEMOE_FIXTURE_CACHE", str(tmp_path / "cache"))
    first = cached_fixture("dense-tiny")
    assert first == tmp_path / "cache" / f"dense-tiny-{spec_hash(FIXTURES['dense-tiny'])}"
    stamp = (first / MARKER).stat().st_mtime_ns
    assert cached_fixture("dense-tiny") == first
    assert (first / MARKER).stat().st_mtime_ns == stamp
    # A folder without its marker is an interrupted build, never a finished one.
    (first / MARKER).unlink()
    (first / "model.safetensors").write_bytes(b"truncated")
    again = cached_fixture("dense-tiny")
    assert again == first and read_record(again)["name"] == "dense-tiny"
    assert (again / "model.safetensors").stat().st_size > 1000
    assert not [p for p in (tmp_path / "cache").iterdir() if ".building-" in p.name]


@pytest.mark.reference
@pytest.mark.slow
def test_builds_are_byte_identical(tmp_path):
    a = build_fixture("qwen3moe-tiny", tmp_path / "a")
    b = build_fixture("qwen3moe-tiny", tmp_path / "b")
    for f in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    cached = cached_fixture("qwen3moe-tiny")
    assert (a / "model.safetensors").read_bytes() == (cached / "model.safetensors").read_bytes()


@pytest.mark.reference
def test_build_fixture_replaces_an_existing_folder(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"old")
    assert build_fixture("dense-tiny", out) == out
    assert not (out / "stale.bin").exists() and read_record(out)["name"] == "dense-tiny"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


@pytest.mark.reference
def test_build_fixtures_puts_each_under_its_name_and_checks_names_first(tmp_path):
    with pytest.raises(FixtureError, match="unknown fixture 'typo'"):
        build_fixtures(["dense-tiny", "typo"], tmp_path, quiet=True)
    assert list(tmp_path.iterdir()) == []  # nothing was built before the typo was caught
    assert build_fixtures(["dense-tiny"], tmp_path, quiet=True) == [tmp_path / "dense-tiny"]
    assert read_record(tmp_path / "dense-tiny")["name"] == "dense-tiny"


@pytest.mark.reference
def test_hub_cache_of_a_fixture_loads_offline_with_transformers(tmp_path):
    ckpt = cached_fixture("qwen3moe-tiny")
    cache = tmp_path / "hub"
    commit = make_hub_cache(ckpt, cache, "edgemoe-test/qwen3moe-tiny")
    code = (
        "import torch; from transformers import AutoModelForCausalLM\n"
        "from huggingface_hub import snapshot_download\n"
        f"path = snapshot_download('edgemoe-test/qwen3moe-tiny', cache_dir={str(cache)!r},"
        " local_files_only=True)\n"
        f"m = AutoModelForCausalLM.from_pretrained('edgemoe-test/qwen3moe-tiny',"
        f" cache_dir={str(cache)!r})\n"
        "print(path); print(type(m).__name__)"
    )
    path, arch = _run_python(code, HF_HUB_OFFLINE="1").splitlines()[-2:]
    assert Path(path).name == commit and arch == "Qwen3MoeForCausalLM"
    blob = Path(path) / "model.safetensors"
    assert blob.resolve().name == hashlib.sha256(blob.read_bytes()).hexdigest()


# --- the big ones -----------------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.slow
def test_medium_fixture_has_hundreds_of_megabytes_of_experts():
    from safetensors import safe_open

    ckpt = cached_fixture("qwen3moe-medium")
    expert_bytes = 0
    with safe_open(ckpt / "model.safetensors", "np") as st:
        for k in st.keys():
            if ".mlp.experts." in k:
                expert_bytes += 4 * math.prod(st.get_slice(k).get_shape())
    assert expert_bytes >= 300 * 10**6
    config = json.loads((ckpt / "config.json").read_text())
    assert config["num_local_experts"] == 32 and config["num_experts_per_tok"] == 4


def _expert_usage(model, ids) -> list[list[int]]:
    """Per layer, how many times each expert is among a token's top-k on ``ids``."""
    import torch

    k = model.config.num_experts_per_tok
    total = 0
    with torch.no_grad():
        for window in ids[: (ids.numel() // 256) * 256].view(-1, 256):
            out = model(input_ids=window[None], output_router_logits=True)
            logits = torch.stack(out.router_logits)  # [layers, tokens, experts]
            chosen = logits.topk(k, dim=-1).indices
            total = total + torch.nn.functional.one_hot(chosen, logits.shape[-1]).sum((1, 2))
    return total.tolist()


def _balance(counts: list[int]) -> tuple[float, float]:
    """(routing entropy / log(n_experts), share of the busiest quarter of the experts)."""
    total = sum(counts)
    p = [c / total for c in counts if c]
    entropy = -sum(x * math.log(x) for x in p) / math.log(len(counts))
    return entropy, sum(sorted(counts, reverse=True)[: len(counts) // 4]) / total


@pytest.mark.reference
@pytest.mark.slow
def test_trained_fixture_routes_skewed_like_a_real_moe():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    ckpt = cached_fixture("qwen3moe-trained")
    record = read_record(ckpt)
    assert record["train_steps"] == FIXTURES["qwen3moe-trained"].train_steps
    assert record["heldout_loss"] < 4.8  # uniform would be ln(1024) = 6.93
    ids = torch.tensor(train_tokenizer().encode(corpus.heldout_text()).ids)

    trained = _expert_usage(AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32), ids)
    torch.manual_seed(0)
    untrained = _expert_usage(
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(ckpt)), ids
    )
    # Measured: trained entropy 0.65-0.77 and top-quarter share 0.67-0.78 per layer; the same
    # architecture at random init routes at entropy 0.90-0.98, share 0.37-0.55 (uniform: 1, 0.25).
    for layer, counts in enumerate(trained):
        entropy, top_share = _balance(counts)
        assert entropy < 0.85 and top_share > 0.6, (layer, counts)
    trained_h, untrained_h = ([_balance(c)[0] for c in u] for u in (trained, untrained))
    assert max(trained_h) < min(untrained_h)


def _wider(name: str, factor: int, **extra) -> FixtureSpec:
    """`name`'s spec with experts `factor` times as wide, built by widening it."""
    from edgemoe_fixtures.specs import get_spec

    spec = get_spec(name)
    config = dict(spec.config)
    config["moe_intermediate_size"] *= factor
    config.update(extra)
    return dataclasses.replace(spec, name=f"{name}-wide", config=tuple(sorted(config.items())),
                               train_steps=0, widened_from=name)


@pytest.mark.reference
def test_a_widened_fixture_computes_its_parent_with_experts_k_times_as_wide():
    """qwen3moe-xl's recipe on the tiny fixture: the same logits (so the same routing and
    tokens), three times the expert weights; a hash of its own that follows the parent's."""
    import torch
    from transformers import AutoModelForCausalLM

    from edgemoe_fixtures.build import _make_model, _tokenizer
    from edgemoe_fixtures.widen import widen_into

    parent = AutoModelForCausalLM.from_pretrained(cached_fixture("qwen3moe-tiny"),
                                                  dtype=torch.float32)
    spec = _wider("qwen3moe-tiny", 3)
    model = _make_model(spec, _tokenizer(spec)[1])
    assert widen_into(model, parent, spec) == 3
    experts = {k: v.numel() for k, v in model.state_dict().items() if ".experts." in k}
    theirs = {k: v.numel() for k, v in parent.state_dict().items() if ".experts." in k}
    assert experts.keys() == theirs.keys() and all(experts[k] == 3 * theirs[k] for k in theirs)
    ids = torch.tensor([[5, 99, 310, 7, 512, 64, 3, 1000]])
    with torch.no_grad():
        want, got = parent(input_ids=ids).logits, model(input_ids=ids).logits
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())
    assert spec_hash(spec) != spec_hash(dataclasses.replace(spec, widened_from=""))


@pytest.mark.reference
@pytest.mark.parametrize(("factor", "extra", "says"), [
    (2, {"num_experts": 16}, "cannot widen"),  # a router of another shape
    (1, {}, "no expert is wider"),
])
def test_widening_refuses_a_config_that_is_not_its_parents_with_wider_experts(factor, extra,
                                                                             says):
    import torch
    from transformers import AutoModelForCausalLM

    from edgemoe_fixtures.build import _make_model, _tokenizer
    from edgemoe_fixtures.widen import widen_into

    parent = AutoModelForCausalLM.from_pretrained(cached_fixture("qwen3moe-tiny"),
                                                  dtype=torch.float32)
    spec = _wider("qwen3moe-tiny", factor, **extra)
    with pytest.raises(FixtureError, match=says):
        widen_into(_make_model(spec, _tokenizer(spec)[1]), parent, spec)
