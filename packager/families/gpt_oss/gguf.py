"""gpt-oss as llama.cpp's `gpt-oss` (LLM_ARCH_OPENAI_MOE, src/models/openai-moe.cpp).

llama.cpp's graph: RMSNorm, attention with q/k/v/o biases and per-head sinks
(`blk.N.attn_sinks.weight`), sliding-window attention on the layers the pattern marks
(`attention.sliding_window`, `attention.sliding_window_pattern`: written per layer from
`layer_types`), then `post_attention_norm` and the MoE: a biased router whose top-k logits are
softmaxed (LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX_WEIGHT, hard-coded), expert biases, and
`ggml_swiglu_oai` with alpha 1.702 and limit 7.0 hard-coded (configs that differ are refused).
The checkpoint's experts are fused and transposed (`gate_up_proj` [experts, hidden,
2 * intermediate], gate and up interleaved along the last axis; `down_proj` [experts,
intermediate, hidden]), or, as released, MXFP4 blocks and scales, which are written as GGML
MXFP4 bytes unchanged (`mxfp4.py`) whatever the build type: quantized builds keep them
(`fixed_types`). YaRN is written as llama.cpp's converter writes it; llama.cpp always truncates
YaRN's correction range, which the release's `truncate: false` does not (a small difference,
README's family table includes it; refusing it would refuse the released model).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import gguf
import numpy as np

from packager.errors import UnsupportedArchitectureError
from packager.families.gguf_adapter import GGUFAdapter, PlannedTensor, Reader, natural_key
from packager.families.gpt_oss import mxfp4
from packager.families.gpt_oss.config import DEFAULT_ALPHA, DEFAULT_LIMIT, SLIDING, GptOssConfig

_EXPERTS = re.compile(
    r"^(model\.layers\.(\d+)\.mlp\.experts)\.(gate_up_proj|down_proj)"
    r"(_bias|_blocks|_scales|\.weight|\.bias)?$"
)
# Expert tensors whose bytes are already GGML MXFP4 in an MXFP4 build (llama.cpp's names).
MXFP4_EXPERTS = r"\.ffn_(gate|up|down)_exps\.weight$"


class GptOssGGUF(GGUFAdapter):
    gguf_arch = gguf.MODEL_ARCH.GPT_OSS
    probs_are_logits = True
    config: GptOssConfig

    def validate(self) -> None:
        c = self.config
        for key, got, fixed in (("swiglu_alpha", c.swiglu_alpha, DEFAULT_ALPHA),
                                ("swiglu_limit", c.swiglu_limit, DEFAULT_LIMIT)):
            if abs(got - fixed) > 1e-6:
                raise UnsupportedArchitectureError(
                    f"config.json: '{key}' is {got} for {self.architecture}; llama.cpp's "
                    f"gpt-oss graph computes the clamped SwiGLU with {key}={fixed} only"
                )
        if not c.attention_bias:
            raise UnsupportedArchitectureError(
                f"config.json: 'attention_bias' is false for {self.architecture}; llama.cpp's "
                "gpt-oss graph needs the q/k/v/o biases"
            )
        if c.quant_method not in (None, "mxfp4"):
            raise UnsupportedArchitectureError(
                f"config.json: quantization_config.quant_method '{c.quant_method}' is not "
                f"supported for {self.architecture} (supported: mxfp4, or none)"
            )
        kinds = set(c.layer_types) - {SLIDING, "full_attention"}
        if len(c.layer_types) != c.n_layers or kinds:
            raise UnsupportedArchitectureError(
                f"config.json: 'layer_types' must list sliding_attention or full_attention for "
                f"each of the {c.n_layers} layers for {self.architecture}"
            )
        if any(c.sliding()) and not c.sliding_window:
            raise UnsupportedArchitectureError(
                f"config.json: missing 'sliding_window' for {self.architecture} (layer_types "
                "has sliding_attention layers)"
            )
        c.expert_width  # noqa: B018  (refuses a config without intermediate_size)

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        c = self.config
        w.add_context_length(c.context_length)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(self.n_layers)
        w.add_feed_forward_length(c.expert_width)
        w.add_expert_feed_forward_length(c.expert_width)
        w.add_head_count(c.n_heads)
        w.add_head_count_kv(c.n_kv_heads)
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_rope_freq_base(c.rope.theta)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_expert_count(c.n_experts)
        w.add_expert_used_count(c.top_k)
        w.add_sliding_window(int(c.sliding_window or 0))
        w.add_sliding_window_pattern(c.sliding())
        self.write_rope_scaling(w)

    def keep_f32(self, gguf_name: str) -> bool:
        # ggml adds the expert biases with ggml_add_id, which takes F32 only.
        return gguf_name.endswith(".bias") or super().keep_f32(gguf_name)

    def fixed_types(self) -> dict[str, str]:
        return {MXFP4_EXPERTS: "MXFP4"} if self.config.mxfp4 else {}

    def gguf_name(self, hf_name: str) -> str:
        if hf_name.endswith(".self_attn.sinks"):
            hf_name += ".weight"  # the name map knows sinks as a bare parameter
        return super().gguf_name(hf_name)

    def plan(self, shapes: dict[str, tuple[int, ...]], read: Reader) -> list[PlannedTensor]:
        experts = {n: s for n, s in shapes.items() if _EXPERTS.match(n)}
        rest = {n: s for n, s in shapes.items() if n not in experts}
        planned = super().plan(rest, read)
        if "lm_head.weight" not in shapes and "model.embed_tokens.weight" in shapes:
            # Tied embeddings: llama.cpp's gpt-oss graph needs its own output matrix.
            name, shape = "model.embed_tokens.weight", shapes["model.embed_tokens.weight"]
            planned.append(PlannedTensor("output.weight", shape, lambda: read(name)))
        planned += self._experts(experts, read)
        return sorted(planned, key=lambda t: natural_key(t.name))

    # ----- experts --------------------------------------------------------------------------
    def _experts(self, shapes: dict[str, tuple[int, ...]], read: Reader) -> list[PlannedTensor]:
        c = self.config
        layers: dict[int, dict[str, str]] = {}
        for name in shapes:
            m = _EXPERTS.match(name)
            assert m is not None
            layers.setdefault(int(m.group(2)), {})[m.group(3) + (m.group(4) or "")] = name
        out: list[PlannedTensor] = []
        for layer in sorted(layers):
            found = layers[layer]
            packed = any(k.endswith(("_blocks", "_scales")) for k in found)
            if packed != c.mxfp4:
                raise UnsupportedArchitectureError(
                    f"layer {layer} experts: the checkpoint stores "
                    f"{'MXFP4 blocks' if packed else 'float weights'} but config.json "
                    f"{'declares no' if packed else 'declares'} quantization_config "
                    "{quant_method: mxfp4}"
                )
            out += self._layer(layer, found, shapes, read)
        return out

    def _layer(self, layer: int, found: dict[str, str], shapes: dict[str, tuple[int, ...]],
               read: Reader) -> list[PlannedTensor]:
        c = self.config
        e, h, ff = c.n_experts, c.hidden_size, c.expert_width
        blk = f"blk.{layer}"
        weight = "_blocks" if c.mxfp4 else ""
        want = [f"gate_up_proj{weight}", "gate_up_proj_bias", f"down_proj{weight}",
                "down_proj_bias"]  # fmt: skip
        missing = [k for k in want if not any(f.startswith(k) for f in found)]
        if missing:
            raise UnsupportedArchitectureError(
                f"layer {layer} experts: the checkpoint has no {', '.join(missing)}"
            )

        def tensor(key: str) -> str:
            return next(n for k, n in found.items() if k.startswith(key))

        gub, db = tensor("gate_up_proj_bias"), tensor("down_proj_bias")
        self._expect(gub, shapes[gub], (e, 2 * ff))
        self._expect(db, shapes[db], (e, h))
        out = [
            PlannedTensor(f"{blk}.ffn_gate_exps.bias", (e, ff), lambda: read(gub)[:, 0::2]),
            PlannedTensor(f"{blk}.ffn_up_exps.bias", (e, ff), lambda: read(gub)[:, 1::2]),
            PlannedTensor(f"{blk}.ffn_down_exps.bias", (e, h), lambda: read(db)),
        ]
        if c.mxfp4:
            return out + self._packed(blk, found, shapes, read)
        gu, d = tensor("gate_up_proj"), tensor("down_proj")
        self._expect(gu, shapes[gu], (e, h, 2 * ff))
        self._expect(d, shapes[d], (e, ff, h))
        # [experts, in, out] -> llama.cpp's [experts, out, in]; gate/up interleave on `out`.
        return out + [
            PlannedTensor(f"{blk}.ffn_gate_exps.weight", (e, ff, h),
                          lambda: read(gu)[:, :, 0::2].transpose(0, 2, 1), is_expert=True),
            PlannedTensor(f"{blk}.ffn_up_exps.weight", (e, ff, h),
                          lambda: read(gu)[:, :, 1::2].transpose(0, 2, 1), is_expert=True),
            PlannedTensor(f"{blk}.ffn_down_exps.weight", (e, h, ff),
                          lambda: read(d).transpose(0, 2, 1), is_expert=True),
        ]  # fmt: skip

    def _packed(self, blk: str, found: dict[str, str], shapes: dict[str, tuple[int, ...]],
                read: Reader) -> list[PlannedTensor]:
        c = self.config
        e, h, ff = c.n_experts, c.hidden_size, c.expert_width
        out = []
        for proj, rows, n_in in (("gate_up_proj", 2 * ff, h), ("down_proj", h, ff)):
            blocks, scales = found.get(f"{proj}_blocks"), found.get(f"{proj}_scales")
            if blocks is None or scales is None:
                raise UnsupportedArchitectureError(
                    f"{blocks or scales}: MXFP4 {'scales' if blocks else 'blocks'} missing"
                )
            mxfp4.check_pair(blocks, shapes[blocks], shapes[scales], (e, rows), n_in)
            out += self._mxfp4(blk, proj, blocks, scales, read, (e, rows, n_in))
        return out

    def _mxfp4(self, blk: str, proj: str, blocks: str, scales: str, read: Reader,
               shape: tuple[int, int, int]) -> list[PlannedTensor]:
        e, rows, n_in = shape
        kind = gguf.GGMLQuantizationType.MXFP4

        def ggml(part: slice) -> Callable[[], np.ndarray]:
            return lambda: mxfp4.to_ggml(read(blocks)[:, part], read(scales)[:, part])

        if proj == "down_proj":
            return [PlannedTensor(f"{blk}.ffn_down_exps.weight", (e, rows, n_in),
                                  ggml(slice(None)), is_expert=True, storage=kind)]
        half = rows // 2
        return [
            PlannedTensor(f"{blk}.ffn_gate_exps.weight", (e, half, n_in),
                          ggml(slice(0, None, 2)), is_expert=True, storage=kind),
            PlannedTensor(f"{blk}.ffn_up_exps.weight", (e, half, n_in),
                          ggml(slice(1, None, 2)), is_expert=True, storage=kind),
        ]  # fmt: skip

    def _expect(self, name: str, got: tuple[int, ...], want: tuple[int, ...]) -> None:
        if tuple(got) != want:
            raise UnsupportedArchitectureError(
                f"{name}: shape {list(got)}, expected {list(want)} from config.json"
            )
