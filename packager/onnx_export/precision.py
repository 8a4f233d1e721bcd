"""Which width and which per-column importance each ONNX weight matrix is quantized with.

Widths: int8 stores every matrix at 8 bits. int4 follows llama.cpp's Q4_K_M recipe, which is
4-bit with deliberate exceptions by tensor role: the output head, `attn_v` and `ffn_down` (dense,
shared or expert) in the layers `use_more_bits` picks, and in 8-expert models `attn_k`, `attn_v`
and `attn_output`, get 5 to 8 bits there. onnxruntime's kernels take 4 or 8 bits, so each of
those takes 8; every other matrix takes 4 (fused routed experts excepted: onnxruntime's QMoE
takes one width per layer, so their `ffn_down` follows gate_up's 4 bits, qmoe.py). (llama.cpp's
fall-backs for rows narrower than its 256-value super-blocks are a limit of its format, not a
choice, and are not copied.) One rule of our own: the dense FFN layers of a mixture (DeepSeek's
first layers) take 8 bits too; they run for every token, unlike an expert, and hold well under
1 % of a real MoE's weights (measured on deepseek2-tiny: they carried ~70 % of the int4 build's
KL).

Importance: llama.cpp's importance matrix (`packager.imatrix`), keyed by GGUF tensor names. The
ONNX export reads checkpoint tensors by their Hugging Face names, so both the role and the
importance are looked up under the GGUF name the family's GGUF adapter gives; stacked experts
use llama.cpp's fixed `blk.N.ffn_{gate,down}_exps` names (gate and up see the same input, so
gate's vector serves the fused gate_up stack). A tensor with no statistics (the LM head,
DeepSeek-V2's kv_b) is quantized unweighted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from packager.errors import PackError

_LAYER = re.compile(r"^(?:model\.layers|blk)\.(\d+)\.")
_EXPERT_GGUF = {"gate_up": "ffn_gate_exps", "down": "ffn_down_exps"}
_DENSE_FFN = re.compile(r"\.ffn_(gate|up|down)\.weight$")  # not _exps, _shexp or _inp


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of layers whose attn_v / ffn_down get more bits in its _M mixes."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def mix_bits(base: int, gguf_name: str, n_layers: int, n_experts: int) -> int:
    """The width (4 or 8) of one matrix, by its GGUF name, when the scheme's width is `base`."""
    if base != 4:
        return base
    m = _LAYER.match(gguf_name)
    layer = int(m.group(1)) if m else -1
    more = layer >= 0 and use_more_bits(layer, n_layers)
    eight = n_experts == 8
    if gguf_name.startswith("output."):
        return 8
    if any(f"{r}.weight" in gguf_name for r in ("attn_v", "attn_qkv", "attn_kv_b")):
        return 8 if more or eight else 4
    if "attn_k.weight" in gguf_name or "attn_output.weight" in gguf_name:
        return 8 if eight else 4
    if _DENSE_FFN.search(gguf_name):
        return 8
    if "ffn_down" in gguf_name:
        return 8 if more else 4
    return 4


@dataclass(frozen=True)
class Precision:
    """Width and importance per matrix, looked up by the names the ONNX export reads."""

    base_bits: int | None
    n_layers: int = 0
    n_experts: int = 0
    gguf_name: Callable[[str], str | None] = lambda _name: None
    table: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        return bool(self.table)

    def dense(self, hf_name: str) -> tuple[int | None, np.ndarray | None]:
        """(bits, one importance value per input column or None) for a checkpoint matrix."""
        if self.base_bits is None:
            return None, None
        key = self.gguf_name(hf_name)
        if key is None:
            return self.base_bits, None
        return self._bits(key), self._vector(key, None)

    def experts(
        self, stack_name: str, n_experts: int, in_dim: int
    ) -> tuple[int | None, np.ndarray | None]:
        """(bits, [n_experts, in_dim] importance or None) for
        `model.layers.N.<moe>.experts.{gate_up|down}`."""
        m = _LAYER.match(stack_name)
        role = stack_name.rsplit(".", 1)[-1]
        if self.base_bits is None or m is None or role not in _EXPERT_GGUF:
            return self.base_bits, None
        key = f"blk.{m.group(1)}.{_EXPERT_GGUF[role]}.weight"
        vec = self._vector(key, n_experts * in_dim)
        return self._bits(key), None if vec is None else vec.reshape(n_experts, in_dim)

    def _bits(self, key: str) -> int:
        assert self.base_bits is not None
        return mix_bits(self.base_bits, key, self.n_layers, self.n_experts)

    def _vector(self, key: str, size: int | None) -> np.ndarray | None:
        vec = self.table.get(key)
        if vec is None:
            return None
        vec = np.asarray(vec, dtype=np.float32).ravel()
        if size is not None and vec.size != size:
            raise PackError(f"importance matrix: {key} has {vec.size} values, expected {size}")
        return vec


def precision_for(
    base_bits: int | None,
    config: dict,
    n_layers: int,
    n_experts: int,
    imatrix: Mapping[str, np.ndarray] | None = None,
) -> Precision:
    """The precision plan of a checkpoint whose config is `config` (GGUF names from the
    family's GGUF adapter), optionally weighted by a GGUF-keyed importance matrix."""
    if base_bits is None:
        return Precision(None)
    from packager.errors import UnsupportedArchitectureError
    from packager.families import family_for

    adapter = family_for(config).gguf

    def gguf_name(hf_name: str) -> str | None:
        try:
            return adapter.gguf_name(hf_name)
        except UnsupportedArchitectureError:
            return None

    return Precision(base_bits, n_layers, n_experts, gguf_name, dict(imatrix or {}))
