"""The quant registry agrees with gguf-py's (and, when built, llama.cpp's) own constants."""

from __future__ import annotations

import math

import gguf
import pytest
from gguf.quants import quant_shape_to_byte_shape

from contract.quant_types import (
    KV_CACHE_TYPES,
    QUANT_TYPES,
    QuantTypeError,
    bytes_for,
    get_quant,
    kv_bytes_per_element,
    stored_type,
)

pytestmark = pytest.mark.unit

REQUIRED = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0",
            "Q3_K_M", "Q3_K_S", "Q2_K", "IQ4_XS", "IQ3_XXS")
PURE = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_S", "Q5_0", "Q5_1", "Q4_0", "Q4_1", "Q3_K_S",
        "IQ3_S", "IQ3_XXS", "IQ2_XS", "IQ2_XXS")


def _library_bytes(rows: int, row_len: int, qtype: gguf.GGMLQuantizationType) -> int:
    return math.prod(quant_shape_to_byte_shape((rows, row_len), qtype))


def test_required_types_present():
    assert set(REQUIRED) <= set(QUANT_TYPES)


@pytest.mark.parametrize("name", list(QUANT_TYPES))
def test_ftype_matches_gguf(name):
    key = "ALL_F32" if name == "F32" else f"MOSTLY_{name}"
    assert QUANT_TYPES[name].llama_ftype == int(gguf.LlamaFileType[key])


@pytest.mark.parametrize("name", list(QUANT_TYPES))
def test_ftype_matches_llama_cpp(name):
    llama_cpp = pytest.importorskip("llama_cpp")
    attr = "LLAMA_FTYPE_ALL_F32" if name == "F32" else f"LLAMA_FTYPE_MOSTLY_{name}"
    assert QUANT_TYPES[name].llama_ftype == int(getattr(llama_cpp, attr))


@pytest.mark.parametrize("name", list(QUANT_TYPES))
def test_main_type_and_block_flag_match_gguf(name):
    q = QUANT_TYPES[name]
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[q.ggml_type]]
    assert q.row_multiple_256 == (block == 256)
    assert q.main_bits_per_weight == pytest.approx(8 * size / block)


@pytest.mark.parametrize("name", list(QUANT_TYPES))
def test_bits_per_weight_is_main_type_or_a_bounded_mix(name):
    q = QUANT_TYPES[name]
    if name in PURE:
        assert q.bits_per_weight == pytest.approx(q.main_bits_per_weight)
    else:  # mixes promote some tensors: more bits than the main type, less than Q6_K's
        assert q.main_bits_per_weight < q.bits_per_weight < 6.5625


def test_known_main_types():
    assert get_quant("Q4_K_M").ggml_type == "Q4_K"
    assert get_quant("Q5_K_S").ggml_type == "Q5_K"
    assert get_quant("IQ3_M").ggml_type == "IQ3_S"
    assert get_quant("Q4_K_M").ggml_name == "q4_K"
    assert get_quant("IQ4_XS").ggml_name == "iq4_xs"
    assert get_quant("BF16").ggml_name == "bf16"


def test_imatrix_requirements():
    needs = {n for n, q in QUANT_TYPES.items() if q.needs_imatrix}
    assert {"IQ3_XXS", "IQ2_XS", "IQ2_XXS"} <= needs
    assert not needs & {"Q2_K", "Q3_K_M", "Q4_K_M", "IQ4_XS", "Q4_0", "Q8_0"}


@pytest.mark.parametrize("name", PURE)
def test_bytes_for_pure_types_is_exact(name):
    q = QUANT_TYPES[name]
    rows, row_len = 12, 2048
    expected = _library_bytes(rows, row_len, gguf.GGMLQuantizationType[q.ggml_type])
    assert bytes_for(rows * row_len, row_len, name) == expected


def test_bytes_for_mix_lies_between_main_type_and_q6_k():
    rows, row_len = 64, 4096
    q4k = _library_bytes(rows, row_len, gguf.GGMLQuantizationType.Q4_K)
    q6k = _library_bytes(rows, row_len, gguf.GGMLQuantizationType.Q6_K)
    assert q4k < bytes_for(rows * row_len, row_len, "Q4_K_M") < q6k


def test_fallback_for_rows_not_multiple_of_256():
    # Qwen1.5-MoE's expert down projection has rows of 1408 = 5.5 x 256.
    assert stored_type("Q4_K_M", 1408) == gguf.GGMLQuantizationType.Q5_0
    assert stored_type("Q6_K", 1408) == gguf.GGMLQuantizationType.Q8_0
    assert stored_type("Q2_K", 1408) == gguf.GGMLQuantizationType.Q4_0
    assert stored_type("IQ4_XS", 1408) == gguf.GGMLQuantizationType.IQ4_NL
    assert stored_type("Q4_0", 1408) == gguf.GGMLQuantizationType.Q4_0
    assert bytes_for(8 * 1408, 1408, "Q4_K_M") == _library_bytes(
        8, 1408, gguf.GGMLQuantizationType.Q5_0)


def test_rows_not_multiple_of_32_become_f16():
    assert stored_type("Q4_0", 100) == gguf.GGMLQuantizationType.F16
    assert bytes_for(300, 100, "Q4_K_M") == 600


def test_get_quant_is_case_insensitive_with_aliases():
    assert get_quant("q4_k_m") is QUANT_TYPES["Q4_K_M"]
    assert get_quant("Q4_K").name == "Q4_K_M"
    assert get_quant(QUANT_TYPES["Q8_0"]) is QUANT_TYPES["Q8_0"]


def test_unknown_quant_lists_valid_names():
    with pytest.raises(QuantTypeError) as e:
        get_quant("Q9_X")
    assert "Q9_X" in str(e.value)
    for name in REQUIRED:
        assert name in str(e.value)


def test_kv_cache_element_sizes():
    assert kv_bytes_per_element("f16") == 2
    assert kv_bytes_per_element("q8_0") == pytest.approx(34 / 32)
    with pytest.raises(QuantTypeError, match="f16"):
        kv_bytes_per_element("f8")


@pytest.mark.parametrize("name", KV_CACHE_TYPES)
def test_kv_cache_sizes_are_ggmls(name):
    """The KV sizes are kept here (no gguf import to plan an ONNX load); gguf-py's table rules."""
    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]]
    assert kv_bytes_per_element(name) == size / block


@pytest.mark.parametrize("name", list(QUANT_TYPES))
def test_names_accepted_by_the_packager_quantizer(name):
    pytest.importorskip("llama_cpp")
    from packager.quantize import llama_ftype

    assert llama_ftype(name) == QUANT_TYPES[name].llama_ftype
