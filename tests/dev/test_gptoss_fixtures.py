"""The gpt-oss fixtures: the harmony tokenizer, MXFP4 as published, and what the checkpoints hold.

Unit tests need no torch; the reference tests load the built checkpoints with transformers.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgemoe_fixtures import FIXTURES, cached_fixture, harmony, mxfp4, read_record
from edgemoe_fixtures.tokenizer import VOCAB_SIZE

pytestmark = pytest.mark.unit


def test_harmony_tokenizer_specials_and_split():
    from packager.tokenizer_vocab import detect_pre

    tok = harmony.train_tokenizer()
    assert tok.get_vocab_size() == VOCAB_SIZE
    ids = [tok.token_to_id(t) for t in harmony.SPECIAL_TOKENS]
    assert ids == list(range(VOCAB_SIZE - len(ids), VOCAB_SIZE))
    text = "<|start|>user<|message|>hi<|end|><|start|>assistant<|channel|>final<|message|>ok"
    enc = tok.encode(text).ids
    assert enc[0] == tok.token_to_id("<|start|>") and tok.token_to_id("<|channel|>") in enc
    assert tok.decode(enc, skip_special_tokens=False) == text
    # o200k's split: digits in threes, a lower-to-upper case change starts a word, and a
    # contraction stays with its word (Qwen2's split cuts it off).
    split = tok.pre_tokenizer.pre_tokenize_str
    assert [p for p, _ in split("HTTPServer 12345")] == ["HTTPServer", "Ġ", "123", "45"]
    assert [p for p, _ in split("isHTTPServer don't")] == ["is", "HTTPServer", "Ġdon't"]
    assert detect_pre(json.loads(tok.to_str())) == "gpt-4o"


def test_mxfp4_round_trip_is_exact_on_its_own_grid():
    """Weights already on the MXFP4 grid come back unchanged; others to the nearest code."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, (3, 64))
    scales = 2.0 ** rng.integers(-6, 2, (3, 2))
    w = (mxfp4.FP4_VALUES[codes].reshape(3, 2, 32) * scales[..., None]).reshape(3, 64)
    w[:, ::32] = np.where(np.abs(w[:, ::32]) > 0, w[:, ::32], 6.0 * scales)  # a full-scale weight
    blocks, sc = mxfp4.quantize(w)
    assert blocks.shape == (3, 2, 16) and sc.shape == (3, 2) and blocks.dtype == np.uint8
    np.testing.assert_array_equal(mxfp4.dequantize(blocks, sc), w.astype(np.float32))
    noisy = w + rng.normal(0, 1e-3, w.shape) * scales.repeat(32, axis=1)
    err = np.abs(mxfp4.dequantize(*mxfp4.quantize(noisy)) - noisy)
    assert (err <= scales.repeat(32, axis=1) * 1.0 + 1e-6).all()  # at most half the widest gap


def test_mxfp4_refuses_rows_that_are_not_whole_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4.quantize(np.zeros((2, 40)))


def test_released_config_names():
    cfg = mxfp4.released_config({"rope_parameters": {"rope_theta": 150000.0, "rope_type": "yarn",
                                                     "original_max_position_embeddings": 4096},
                                 "num_experts_per_tok": 4, "swiglu_alpha": 1.702})  # fmt: skip
    assert cfg["rope_theta"] == 150000.0 and "rope_theta" not in cfg["rope_scaling"]
    assert cfg["experts_per_token"] == 4 and cfg["initial_context_length"] == 4096
    assert "swiglu_alpha" not in cfg and cfg["quantization_config"]["quant_method"] == "mxfp4"


def test_specs():
    tiny, published = FIXTURES["gptoss-tiny"], FIXTURES["gptoss-mxfp4-tiny"]
    assert tiny.config == published.config and tiny.train_steps == published.train_steps
    assert (tiny.tokenizer, tiny.published, published.published) == ("harmony", "", "mxfp4")
    large = FIXTURES["gptoss-large"].config_dict()
    weights = large["num_hidden_layers"] * large["num_local_experts"] * 3 * \
        large["hidden_size"] * large["intermediate_size"]
    assert weights == 402_653_184  # as qwen3moe-large's


@pytest.mark.reference
@pytest.mark.parametrize("name", ["gptoss-tiny", "gptoss-mxfp4-tiny"])
def test_fixture_loads_and_speaks_harmony(name):
    import torch
    from transformers import AutoTokenizer

    from packager.calibrate import load_reference_model

    ckpt = cached_fixture(name)
    tok = AutoTokenizer.from_pretrained(ckpt)
    gen = json.loads((ckpt / "generation_config.json").read_text())
    ret, eot, call = (tok.convert_tokens_to_ids(t) for t in ("<|return|>", "<|endoftext|>",
                                                              "<|call|>"))  # fmt: skip
    assert gen["eos_token_id"] == [ret, eot, call] and tok.eos_token_id == ret
    prompt = tok.apply_chat_template([{"role": "user", "content": "Weather in Oslo?"}],
                                     add_generation_prompt=True, tokenize=False)  # fmt: skip
    assert prompt.endswith("<|start|>user<|message|>Weather in Oslo?<|end|><|start|>assistant")
    model = load_reference_model(ckpt)
    ids = torch.tensor([tok(prompt)["input_ids"]])
    out = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=eot)
    # It learned the format: its answer opens a channel.
    assert out[0, ids.shape[1]].item() == tok.convert_tokens_to_ids("<|channel|>")
    assert read_record(ckpt)["heldout_loss"] < 6.0


@pytest.mark.reference
def test_published_fixture_is_laid_out_as_released():
    from safetensors import safe_open

    from packager.calibrate import load_reference_model

    ckpt = cached_fixture("gptoss-mxfp4-tiny")
    config = json.loads((ckpt / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    assert "rope_scaling" in config and "rope_parameters" not in config
    with safe_open(ckpt / "model.safetensors", "np") as f:
        dtypes = {n: f.get_slice(n).get_dtype() for n in f.keys()}
        blocks = f.get_tensor("model.layers.1.mlp.experts.down_proj_blocks")
        scales = f.get_tensor("model.layers.1.mlp.experts.down_proj_scales")
    assert {dtypes[n] for n in dtypes if n.endswith(("_blocks", "_scales"))} == {"U8"}
    assert {dtypes[n] for n in dtypes if not n.endswith(("_blocks", "_scales"))} == {"BF16"}
    assert blocks.shape == (8, 64, 1, 16) and scales.shape == (8, 64, 1)
    model = load_reference_model(ckpt)
    down = model.model.layers[1].mlp.experts.down_proj.detach().numpy()  # [E, F, H]
    np.testing.assert_array_equal(mxfp4.dequantize(blocks, scales), down.transpose(0, 2, 1))
