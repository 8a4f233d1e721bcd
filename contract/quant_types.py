"""The llama.cpp file types edgemoe packs to: a named registry plus byte-size estimates.

A *file type* (llama.cpp's `LLAMA_FTYPE_MOSTLY_*`, what `llama-quantize Q4_K_M` takes) is a recipe:
one main ggml tensor type for most weight matrices, with some tensors promoted by llama.cpp's
mixing rules (the `_S`/`_M`/`_L` suffixes). Sizes here are estimates for planning; the real
layout is always read back from the quantized GGUF (`contract.gguf_layout`).

gguf-py (and the numpy and yaml it loads, ~4.6 MiB of a process) is imported where a ggml type
is looked up, not with this module: a device that runs an ONNX build reads the registry's names
through its profile and never needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from contract.errors import QuantTypeError

if TYPE_CHECKING:
    import gguf


def _gguf():  # type: ignore[no-untyped-def]
    import gguf

    return gguf


@dataclass(frozen=True)
class QuantType:
    """One llama.cpp file type.

    `bits_per_weight` is the *effective* figure for an MoE file: the main type's exact bits for
    pure types, and for mixes the main type plus llama.cpp's promotions of `ffn_down` (which
    dominate an MoE file) under the default rules, without an importance matrix.
    """

    name: str  # llama-quantize's spelling, e.g. "Q4_K_M"
    llama_ftype: int  # LLAMA_FTYPE_MOSTLY_* value in llama.h
    ggml_type: str  # gguf.GGMLQuantizationType member name of the main tensor type
    bits_per_weight: float
    needs_imatrix: bool  # llama.cpp refuses to quantize without one
    description: str

    @property
    def ggml(self) -> gguf.GGMLQuantizationType:
        return _gguf().GGMLQuantizationType[self.ggml_type]

    @property
    def row_multiple_256(self) -> bool:
        """The main type's block is 256 wide (K and most IQ types)."""
        return bool(_gguf().GGML_QUANT_SIZES[self.ggml][0] == 256)

    @property
    def ggml_name(self) -> str:
        """The main type as ggml prints it ("q4_K", "iq4_xs"), the spelling tt_overrides use."""
        return ggml_type_name(self.ggml_type)

    @property
    def is_quantized(self) -> bool:
        """False for F32/F16/BF16: llama.cpp ignores per-tensor overrides for those file types."""
        return self.name not in ("F32", "F16", "BF16")

    @property
    def main_bits_per_weight(self) -> float:
        block, size = _gguf().GGML_QUANT_SIZES[self.ggml]
        return 8.0 * size / block


def _q(name: str, ftype: int, main: str, bpw: float, imatrix: bool, desc: str) -> QuantType:
    return QuantType(name, ftype, main, bpw, imatrix, desc)


# Values from llama.h (LLAMA_FTYPE_MOSTLY_*) and llama-quant.cpp's per-file-type rules; the
# tests check them against gguf-py's own LlamaFileType and GGML_QUANT_SIZES.
QUANT_TYPES: dict[str, QuantType] = {
    q.name: q
    for q in (
        _q("F32", 0, "F32", 32.0, False, "full float32; reference only"),
        _q("F16", 1, "F16", 16.0, False, "float16, lossless for most checkpoints"),
        _q("BF16", 32, "BF16", 16.0, False, "bfloat16, the usual training dtype"),
        _q("Q8_0", 7, "Q8_0", 8.5, False, "8-bit, near lossless"),
        _q("Q6_K", 18, "Q6_K", 6.5625, False, "6-bit K-quant, near lossless"),
        _q("Q5_K_M", 17, "Q5_K", 5.68, False, "5-bit K, ffn_down partly Q6_K"),
        _q("Q5_K_S", 16, "Q5_K", 5.5, False, "5-bit K, uniform"),
        _q("Q5_1", 9, "Q5_1", 6.0, False, "5-bit legacy with offset"),
        _q("Q5_0", 8, "Q5_0", 5.5, False, "5-bit legacy"),
        _q("Q4_K_M", 15, "Q4_K", 4.84, False, "4-bit K, ffn_down partly Q6_K; the usual default"),
        _q("Q4_K_S", 14, "Q4_K", 4.54, False, "4-bit K, first ffn_down layers Q5_K"),
        _q("Q4_1", 3, "Q4_1", 5.0, False, "4-bit legacy with offset"),
        _q("Q4_0", 2, "Q4_0", 4.5, False, "4-bit legacy; fastest on ARM (runtime repacking)"),
        _q("IQ4_NL", 25, "IQ4_NL", 4.54, False, "4-bit non-linear, 32-wide blocks"),
        _q("IQ4_XS", 30, "IQ4_XS", 4.30, False, "4.25-bit non-linear"),
        _q("Q3_K_L", 13, "Q3_K", 4.13, False, "3-bit K, ffn_down Q5_K"),
        _q("Q3_K_M", 12, "Q3_K", 3.81, False, "3-bit K, ffn_down mostly Q4_K"),
        _q("Q3_K_S", 11, "Q3_K", 3.4375, False, "3-bit K, uniform"),
        _q("IQ3_M", 27, "IQ3_S", 3.48, False, "3.4-bit non-linear mix"),
        _q("IQ3_S", 26, "IQ3_S", 3.4375, False, "3.4-bit non-linear"),
        _q("IQ3_XXS", 23, "IQ3_XXS", 3.0625, True, "3.06-bit non-linear; needs an imatrix"),
        _q("Q2_K", 10, "Q2_K", 2.9, False, "2-bit K, ffn_down Q3_K; large quality loss"),
        _q("IQ2_XS", 20, "IQ2_XS", 2.3125, True, "2.31-bit; needs an imatrix"),
        _q("IQ2_XXS", 19, "IQ2_XXS", 2.0625, True, "2.06-bit; needs an imatrix"),
    )
}

# The cache types llama.cpp accepts for --cache-type-k / --cache-type-v, with ggml's (values per
# block, bytes per block) for each (the tests check them against gguf-py's GGML_QUANT_SIZES).
_KV_BLOCKS = {
    "f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18),
    "q4_1": (32, 20), "iq4_nl": (32, 18), "q5_0": (32, 22), "q5_1": (32, 24),
}  # fmt: skip
KV_CACHE_TYPES = tuple(_KV_BLOCKS)

# llama-quantize's aliases.
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

# What llama.cpp stores instead when a row is not a multiple of the type's block
# (tensor_type_fallback in llama-quant.cpp); if the fallback does not divide either, F16.
_FALLBACK = {
    "Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0",
    "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL",
    "IQ4_XS": "IQ4_NL",
}


def ggml_type_name(member: str) -> str:
    """gguf's member name ("Q4_K") -> ggml's printed name ("q4_K"): lower case except "_K"."""
    low = member.lower()
    return low[:-2] + "_K" if low.endswith("_k") else low


def get_quant(name: str | QuantType) -> QuantType:
    """Look a file type up by name (case-insensitive; llama-quantize's aliases accepted)."""
    if isinstance(name, QuantType):
        return name
    key = str(name).strip().upper()
    key = ALIASES.get(key, key)
    try:
        return QUANT_TYPES[key]
    except KeyError:
        raise QuantTypeError(
            f"unknown quant type '{name}' (valid: {', '.join(QUANT_TYPES)})"
        ) from None


def stored_type(qtype: str | QuantType, row_len: int) -> gguf.GGMLQuantizationType:
    """The ggml type a tensor with rows of `row_len` really gets: the main type, or llama.cpp's
    fallback when the row is not a multiple of the main type's block."""
    if row_len <= 0:
        raise ValueError(f"row_len must be positive, got {row_len}")
    gguf = _gguf()
    main = get_quant(qtype).ggml
    if row_len % gguf.GGML_QUANT_SIZES[main][0] == 0:
        return main
    fallback = gguf.GGMLQuantizationType[_FALLBACK.get(main.name, main.name)]
    if row_len % gguf.GGML_QUANT_SIZES[fallback][0] == 0:
        return fallback
    return gguf.GGMLQuantizationType.F16


def bytes_for(n_elements: int, row_len: int, qtype: str | QuantType) -> int:
    """Estimated bytes of `n_elements` weights stored in rows of `row_len` under file type `qtype`.

    Exact (ggml block arithmetic) for pure types; for mixes the main type's exact size is scaled
    by bits_per_weight / main bits so llama.cpp's promoted tensors are counted. A fallback type
    (row not a multiple of the block) is counted exactly, without the mix factor.
    """
    if n_elements < 0:
        raise ValueError(f"n_elements must be >= 0, got {n_elements}")
    q = get_quant(qtype)
    stored = stored_type(q, row_len)
    block, size = _gguf().GGML_QUANT_SIZES[stored]
    rows = math.ceil(n_elements / row_len)
    exact = rows * (row_len // block) * size
    if stored != q.ggml:
        return exact
    return math.ceil(exact * q.bits_per_weight / q.main_bits_per_weight)


def kv_bytes_per_element(cache_type: str) -> float:
    """Bytes per KV-cache element for llama.cpp's --cache-type-k/v names (f16, q8_0, ...)."""
    try:
        block, size = _KV_BLOCKS[cache_type.lower()]
    except KeyError:
        raise QuantTypeError(
            f"unknown KV cache type '{cache_type}' (valid: {', '.join(KV_CACHE_TYPES)})"
        ) from None
    return size / block

