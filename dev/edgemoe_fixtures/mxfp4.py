"""gpt-oss's published expert layout: MXFP4 `*_blocks` + `*_scales` (uint8), the rest in BF16.

The released checkpoints store each expert projection as OCP microscaling FP4: blocks of 32
weights along the input dimension share one E8M0 scale (a power of two, byte = exponent + 127)
and each weight is an E2M1 code (0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6), two codes a byte, the
lower nibble first. The tensors are laid out as transformers dequantizes them: for
`gate_up_proj` (a [experts, hidden, 2 * intermediate] parameter) `gate_up_proj_blocks` is
[experts, 2 * intermediate, hidden / 32, 16] and `gate_up_proj_scales` [experts,
2 * intermediate, hidden / 32]; `down_proj` likewise with the dimensions of [experts, hidden,
intermediate]. config.json carries `quantization_config` {quant_method: mxfp4} and the released
field names (`rope_scaling` with `rope_theta` beside it, `experts_per_token`,
`initial_context_length`), so the fixture is read as a user's download would be.

Quantization here is deterministic round-to-nearest with the smallest scale that needs no
clipping; the reference for fidelity is what transformers computes from these bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedModel

BLOCK = 32
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0] * 2) * np.repeat([1.0, -1.0], 8)
NOT_CONVERTED = (
    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head",
)  # fmt: skip
_EXPERTS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., n] weights (n a multiple of 32) -> (blocks [..., n/32, 16], scales [..., n/32])."""
    *lead, n = w.shape
    if n % BLOCK:
        raise ValueError(f"MXFP4 needs a multiple of {BLOCK} along the last dimension, got {n}")
    x = np.asarray(w, dtype=np.float64).reshape(*lead, n // BLOCK, BLOCK)
    amax = np.abs(x).max(axis=-1)
    with np.errstate(divide="ignore"):
        exp = np.where(amax > 0, np.ceil(np.log2(amax / 6.0)), -127.0)
    exp = np.clip(exp, -127, 127)
    scaled = np.abs(x) / np.exp2(exp)[..., None]
    magnitude = np.abs(scaled[..., None] - FP4_VALUES[:8]).argmin(axis=-1)  # ties: the smaller
    codes = (magnitude | np.where(x < 0, 8, 0)).astype(np.uint8)
    blocks = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return blocks.astype(np.uint8), (exp + 127).astype(np.uint8)


def dequantize(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The weights MXFP4 `blocks`/`scales` stand for, [..., n] float32 (exact)."""
    codes = np.stack([blocks & 0x0F, blocks >> 4], axis=-1).reshape(*blocks.shape[:-1], -1)
    values = FP4_VALUES[codes] * np.exp2(scales.astype(np.float64) - 127.0)[..., None]
    return values.reshape(*blocks.shape[:-2], -1).astype(np.float32)


def published_tensors(model: PreTrainedModel) -> dict[str, Any]:
    """The model's tensors as the released checkpoints store them (torch tensors)."""
    import torch

    out: dict[str, Any] = {}
    for name, value in model.state_dict().items():
        if name.endswith(_EXPERTS):
            # [experts, in, out] parameter -> [experts, out, in]: blocks run along the input.
            w = value.detach().to(torch.float32).transpose(1, 2).contiguous().numpy()
            blocks, scales = quantize(w)
            out[f"{name}_blocks"] = torch.from_numpy(blocks)
            out[f"{name}_scales"] = torch.from_numpy(scales)
        else:
            out[name] = value.detach().to(torch.bfloat16).contiguous()
    return out


def save_published(model: PreTrainedModel, out_dir: Path) -> None:
    """Write the model as the released gpt-oss checkpoints are: MXFP4 experts, BF16 elsewhere."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(published_tensors(model), str(out_dir / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    model.generation_config.save_pretrained(out_dir)
    config = {**model.config.to_dict(), "architectures": [type(model).__name__]}
    (out_dir / "config.json").write_text(
        json.dumps(released_config(config), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )


def released_config(config: dict[str, Any]) -> dict[str, Any]:
    """transformers' saved config renamed as OpenAI's release names it."""
    out = {k: v for k, v in config.items() if k not in ("rope_parameters", "dtype")}
    rope = dict(config.get("rope_parameters") or {})
    out["rope_theta"] = rope.pop("rope_theta", 150000.0)
    out["rope_scaling"] = rope
    out["experts_per_token"] = config["num_experts_per_tok"]
    out["initial_context_length"] = rope.get("original_max_position_embeddings", 4096)
    if out.get("swiglu_alpha") == 1.702:
        del out["swiglu_alpha"]  # the release leaves it to transformers' default
    out["torch_dtype"] = "bfloat16"
    out["quantization_config"] = {"quant_method": "mxfp4",
                                  "modules_to_not_convert": list(NOT_CONVERTED)}  # fmt: skip
    return out
