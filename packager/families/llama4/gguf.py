"""Llama 4 (text) as llama.cpp's `llama4`.

llama.cpp (src/models/llama4.cpp) hard-codes much of Llama 4 rather than reading it: chunked
attention in 8192-token chunks on three layers of every four (the fourth full, without rope),
the no-rope layers' attention temperature (floor 8192, scale 0.1), q/k L2 norms unless the
model has 128 experts, and the router: top-k of the logits, each chosen expert's sigmoid
multiplied into its input (not its output), one shared expert of the experts' width. It reads
the MoE interleave step, the expert width and llama3 rope scaling (as the `rope_freqs` tensor,
one divisor per rotary frequency). So every field those constants stand for is checked against
them, and refused naming the field where transformers would compute something else, when a
GGUF is to be written (`check_graph`, through `Llama4.require_gguf`): the mapping itself names
any variant's tensors for the planner, and the ONNX graph computes those variants as read.
Experts are stored fused, input-major (gate_up_proj [E, hidden, 2F], down_proj [E, F,
hidden]); they are split and transposed into llama.cpp's per-projection stacks.
"""

from __future__ import annotations

import math
import re

import gguf
import numpy as np

from packager.errors import UnsupportedArchitectureError
from packager.families.expert_groups import refuse_field
from packager.families.gguf_adapter import ROPE_KINDS, GGUFAdapter, PlannedTensor, Reader
from packager.families.llama4.config import Llama4Config

# What llama.cpp's llama4 graph fixes for every Llama 4 model.
CHUNK, NO_ROPE_STEP, TEMP_FLOOR, TEMP_SCALE = 8192, 4, 8192, 0.1
_EXPERTS = re.compile(r"^(model\.layers\.(\d+)\.feed_forward\.experts)\.(gate_up_proj|down_proj)$")


class Llama4GGUF(GGUFAdapter):
    config: Llama4Config
    gguf_arch = gguf.MODEL_ARCH.LLAMA4

    def validate(self) -> None:
        c = self.config  # the mapping names MoE layers by the step, as llama.cpp reads them
        if c.moe_layers != c.interleaved_moe_layers:
            raise refuse_field(c, "moe_layers", list(c.moe_layers),
                               f"every {c.interleave_moe_layer_step} layers from layer "
                               f"{c.interleave_moe_layer_step - 1} (interleave_moe_layer_step: "
                               "what llama.cpp reads)")  # fmt: skip

    def check_graph(self) -> None:
        """Refuse, naming the field, what llama.cpp's llama4 graph computes differently."""
        c = self.config
        rope = [c.uses_rope(i) for i in range(c.n_layers)]
        if rope != [(i + 1) % NO_ROPE_STEP != 0 for i in range(c.n_layers)]:
            key = "no_rope_layers" if c.no_rope_layers else "no_rope_layer_interval"
            raise refuse_field(c, key, list(c.no_rope_layers) or c.no_rope_layer_interval,
                               f"rope skipped every {NO_ROPE_STEP}th layer, as llama.cpp's "
                               "llama4 graph does")  # fmt: skip
        if c.attention_chunk_size != CHUNK:
            raise refuse_field(c, "attention_chunk_size", c.attention_chunk_size,
                               f"{CHUNK}: llama.cpp's llama4 graph chunks attention so")
        chunked = [t == "chunked_attention" for t in c.layer_types] if c.layer_types else rope
        if chunked != rope:
            raise refuse_field(c, "layer_types", list(c.layer_types),
                               "chunked attention exactly on the rope layers")
        if c.use_qk_norm != (c.n_experts != 128):
            raise refuse_field(c, "use_qk_norm", c.use_qk_norm,
                               f"{c.n_experts != 128}: llama.cpp applies q/k norms unless the "
                               "model has 128 experts")  # fmt: skip
        if not c.attn_temperature_tuning or (c.floor_scale, c.attn_scale) != (TEMP_FLOOR,
                                                                              TEMP_SCALE):
            raise UnsupportedArchitectureError(
                f"{c.architecture}: attn_temperature_tuning={c.attn_temperature_tuning}, "
                f"floor_scale={c.floor_scale}, attn_scale={c.attn_scale}; llama.cpp's llama4 "
                f"graph always tunes the no-rope layers' temperature with {TEMP_FLOOR} and "
                f"{TEMP_SCALE}"
            )
        if c.attention_bias:
            raise refuse_field(c, "attention_bias", True, "false: llama.cpp's llama4 has none")
        if c.hidden_act != "silu":
            raise refuse_field(c, "hidden_act", c.hidden_act, "silu")

    def _check_rope(self) -> None:
        rope = self.config.rope
        if rope.kind != "llama3":
            return super()._check_rope()
        raw = _llama3(self.config)
        for key in ("factor", "low_freq_factor", "high_freq_factor",
                    "original_max_position_embeddings"):  # fmt: skip
            if not isinstance(raw.get(key), (int, float)) or isinstance(raw.get(key), bool):
                raise UnsupportedArchitectureError(
                    f"config.json: missing or non-numeric '{rope.field_name}.{key}' for "
                    f"{self.architecture} (llama3 rope scaling; kinds: "
                    f"{', '.join((*ROPE_KINDS, 'llama3'))})"
                )
        return None

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        c = self.config
        super().write_hparams(w)
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_rope_dimension_count(c.head_dim)
        w.add_vocab_size(c.vocab_size)
        w.add_interleave_moe_layer_step(c.interleave_moe_layer_step)
        w.add_expert_feed_forward_length(c.require(c.intermediate_size, "intermediate_size"))

    def feed_forward_length(self) -> int:
        c = self.config
        return c.require(c.intermediate_size_mlp, "intermediate_size_mlp")

    def plan(self, shapes: dict[str, tuple[int, ...]], read: Reader) -> list[PlannedTensor]:
        fused = {n: s for n, s in shapes.items() if _EXPERTS.match(n)}
        out = super().plan({n: s for n, s in shapes.items() if n not in fused}, read)
        for name, shape in fused.items():
            out.extend(self._experts(name, shape, read))
        if self.config.rope.kind == "llama3":
            factors = _rope_factors(self.config)
            out.append(PlannedTensor("rope_freqs.weight", factors.shape, lambda: factors))
        return sorted(out, key=lambda t: _natural(t.name))

    def _experts(self, name: str, shape: tuple[int, ...], read: Reader) -> list[PlannedTensor]:
        m = _EXPERTS.match(name)
        assert m is not None
        prefix, kind = m.group(1), m.group(3)
        if kind == "down_proj":  # [E, F, H] -> llama.cpp's [E, H, F]
            e, ff, hidden = shape
            new = self.gguf_name(f"{prefix}.down_proj.weight")
            return [PlannedTensor(new, (e, hidden, ff),
                                  lambda: read(name).transpose(0, 2, 1), is_expert=True)]
        e, hidden, two_ff = shape  # [E, H, 2F]: gate columns first, then up
        ff = two_ff // 2
        gate = self.gguf_name(f"{prefix}.gate_proj.weight")
        up = self.gguf_name(f"{prefix}.up_proj.weight")
        return [
            PlannedTensor(gate, (e, ff, hidden),
                          lambda: read(name)[:, :, :ff].transpose(0, 2, 1), is_expert=True),
            PlannedTensor(up, (e, ff, hidden),
                          lambda: read(name)[:, :, ff:].transpose(0, 2, 1), is_expert=True),
        ]  # fmt: skip

    def keep_f32(self, gguf_name: str) -> bool:
        return super().keep_f32(gguf_name) or gguf_name == "rope_freqs.weight"


def _llama3(c: Llama4Config) -> dict:
    return dict(c.raw.get(c.rope.field_name) or {})


def _rope_factors(c: Llama4Config) -> np.ndarray:
    """Per rotary frequency, default / llama3 frequency, as transformers computes llama3 (and
    llama.cpp's converter writes it): llama.cpp divides each angle by it."""
    inv, new = llama3_frequencies(c)
    return (inv / new).astype(np.float32)


def llama3_frequencies(c: Llama4Config) -> tuple[np.ndarray, np.ndarray]:
    """(default, llama3-scaled) inverse frequencies of each rotary pair, as transformers'
    llama3 rope computes them (float64; the ONNX graph rotates by the second)."""
    p = _llama3(c)
    factor, low = float(p["factor"]), float(p["low_freq_factor"])
    high = float(p["high_freq_factor"])
    orig = float(p["original_max_position_embeddings"])
    dim = c.head_dim
    inv = 1.0 / c.rope.theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / inv
    low_wavelen, high_wavelen = orig / low, orig / high
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (orig / wavelen - low) / (high - low) if high != low else np.zeros_like(inv)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return inv, np.where(medium, smoothed, scaled)


def _natural(name: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
