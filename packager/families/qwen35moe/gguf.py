"""Qwen3.5-MoE as llama.cpp's `qwen35moe`: gated-DeltaNet and gated full-attention layers, each
with routed experts plus a sigmoid-gated shared expert.

Taken from llama.cpp's own tables (src/models/qwen35moe.cpp, llama-arch.cpp, conversion/qwen.py):
- the DeltaNet shape goes into the SSM keys (conv kernel, state size = head dim, group count =
  key heads, time-step rank = value heads, inner size = value width), the layer pattern into
  `attention.recurrent_layers` (gguf 0.19 has no writer method for it), the rotated width into
  `rope.dimension_count` and the M-RoPE sections into `rope.dimension_sections`;
- transformers' zero-centred RMSNorm (x * (1 + w)) becomes llama.cpp's plain one by adding 1 to
  every norm weight except the DeltaNet's gated norm, which is already plain;
- `A_log` is stored as A = -exp(A_log) (`blk.N.ssm_a`, no suffix), `dt_bias` as `ssm_dt.bias`,
  the conv kernel without its singleton axis;
- with fewer key heads than value heads, transformers repeats each key head for a run of
  consecutive value heads (grouped) while ggml broadcasts by tiling, so every tensor indexed by
  value head is reordered from grouped to tiled.
Multi-token-prediction weights (`mtp.*`) are skipped: llama.cpp runs the main model and the
runtime does not draft with them.
"""

from __future__ import annotations

import re

import gguf
import numpy as np

from packager.errors import UnsupportedArchitectureError
from packager.families.gguf_adapter import GGUFAdapter, PlannedTensor, Reader
from packager.families.qwen35moe.config import FULL, LINEAR, QwenHybridConfig

_LINEAR = re.compile(r"^model\.layers\.(\d+)\.linear_attn\.(\w+?)(\.weight)?$")
_MTP = re.compile(r"^(model\.)?mtp\.")
RECURRENT_LAYERS_KEY = "{arch}.attention.recurrent_layers"


class QwenHybridGGUF(GGUFAdapter):
    """What Qwen3.5-MoE and Qwen3-Next share; the DeltaNet input projections differ."""

    config: QwenHybridConfig

    def validate(self) -> None:
        c = self.config
        kinds = c.kinds
        if len(kinds) != c.n_layers or set(kinds) - {LINEAR, FULL}:
            raise UnsupportedArchitectureError(
                f"config.json: 'layer_types' must list {c.n_layers} entries of "
                f"'{LINEAR}' or '{FULL}' for {self.architecture}, got {list(kinds)}"
            )
        if c.key_head_dim != c.value_head_dim:
            self._refuse("linear_value_head_dim", c.value_head_dim,
                         f"linear_key_head_dim ({c.key_head_dim}): llama.cpp's DeltaNet uses one "
                         "head size for keys and values")  # fmt: skip
        if c.n_value_heads % c.n_key_heads:
            self._refuse("linear_num_value_heads", c.n_value_heads,
                         f"a multiple of linear_num_key_heads ({c.n_key_heads})")  # fmt: skip
        if not c.norm_topk_prob:
            self._refuse("norm_topk_prob", False, "true: llama.cpp renormalises the top-k")
        if c.mlp_only_layers or c.decoder_sparse_step != 1:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: dense layers between MoE layers (mlp_only_layers / "
                "decoder_sparse_step) are not supported by llama.cpp"
            )
        if c.hidden_act != "silu":
            self._refuse("hidden_act", c.hidden_act, "silu")
        if c.rope_dim <= 0 or c.rope_dim % 2:
            self._refuse(f"{c.rope.field_name}.partial_rotary_factor",
                         c.rope.partial_rotary_factor, "a factor giving an even, nonzero width")
        if sum(self.rope_sections()) > c.rope_dim // 2:
            self._refuse(f"{c.rope.field_name}.mrope_section", list(c.mrope_section),
                         f"sections summing to at most {c.rope_dim // 2} (half the rotated width)")

    def rope_sections(self) -> list[int]:
        """M-RoPE sections, padded to llama.cpp's four; Qwen3.5's [11, 11, 10] split of the
        half-width when the config leaves them out (text positions make them all equal)."""
        got = list(self.config.mrope_section)
        if not got:
            half = self.config.rope_dim // 2
            third = -(-half // 3)
            got = [third, third, half - 2 * third]
        return (got + [0, 0, 0, 0])[:4]

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        c, moe = self.config, self.moe()
        w.add_context_length(c.context_length)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(self.n_layers)
        if c.intermediate_size:
            w.add_feed_forward_length(c.intermediate_size)
        w.add_head_count(c.n_heads)
        w.add_head_count_kv(c.n_kv_heads)
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_rope_freq_base(c.rope.theta)
        w.add_rope_dimension_count(c.rope_dim)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_expert_count(moe.n_experts)
        w.add_expert_used_count(moe.top_k)
        w.add_expert_feed_forward_length(c.require(c.moe_intermediate_size,
                                                   "moe_intermediate_size"))  # fmt: skip
        if c.shared_expert_intermediate_size:
            w.add_expert_shared_feed_forward_length(c.shared_expert_intermediate_size)
        w.add_ssm_conv_kernel(c.conv_kernel)
        w.add_ssm_state_size(c.key_head_dim)
        w.add_ssm_group_count(c.n_key_heads)
        w.add_ssm_time_step_rank(c.n_value_heads)
        w.add_ssm_inner_size(c.value_dim)
        w.add_full_attention_interval(c.full_attention_interval)
        arch = gguf.MODEL_ARCH_NAMES[self.gguf_arch]
        w.add_array(RECURRENT_LAYERS_KEY.format(arch=arch),
                    [k == LINEAR for k in c.kinds])  # fmt: skip
        self.write_rope_scaling(w)

    def kv_dims(self) -> tuple[int, int, int]:
        return self.config.n_kv_heads, self.config.head_dim, self.config.head_dim

    def kv_layers(self) -> int:
        return len(self.config.attention_layers)

    def recurrent_state_values(self) -> int:
        # llama.cpp's n_embd_r (the conv's last kernel-1 inputs of q, k, v) + n_embd_s (one
        # head_k x head_v delta-rule matrix per value head), per DeltaNet layer.
        c = self.config
        conv = (c.conv_kernel - 1) * (c.value_dim + 2 * c.key_dim)
        return len(c.recurrent_layers) * (conv + c.key_head_dim * c.value_dim)

    # ----- tensors ------------------------------------------------------------------------
    def plan(self, shapes: dict[str, tuple[int, ...]], read: Reader) -> list[PlannedTensor]:
        main = {n: s for n, s in shapes.items() if not _MTP.match(n)}
        if not any(n.startswith("model.layers.") for n in main):
            raise UnsupportedArchitectureError(
                f"{self.architecture}: the checkpoint holds only multi-token-prediction weights "
                f"(mtp.*), not the {self.n_layers} main layers edgemoe packs"
            )
        return super().plan(main, read)

    def expand(self, hf_name: str, shape: tuple[int, ...], read: Reader) -> list[PlannedTensor]:
        if m := _LINEAR.match(hf_name):
            return self.linear(int(m.group(1)), m.group(2), hf_name, shape, read)
        new = self.gguf_name(hf_name)
        if hf_name.endswith("norm.weight"):  # zero-centred: x * (1 + w)
            return [PlannedTensor(new, shape, lambda: read(hf_name) + np.float32(1))]
        return [PlannedTensor(new, shape, lambda: read(hf_name))]

    def linear(self, layer: int, part: str, hf_name: str, shape: tuple[int, ...],
               read: Reader) -> list[PlannedTensor]:
        """One DeltaNet tensor: renamed, and its value-head axis put in ggml's tiled order."""
        c, pre = self.config, f"blk.{layer}"
        v_rows = self.v_order(c.value_head_dim)
        heads = self.v_order(1)
        if part == "A_log":
            return [PlannedTensor(f"{pre}.ssm_a", shape,
                                  lambda: -np.exp(read(hf_name)[heads].astype(np.float32)))]
        if part == "dt_bias":
            return [PlannedTensor(f"{pre}.ssm_dt.bias", shape, lambda: read(hf_name)[heads])]
        if part == "conv1d":
            qk = 2 * c.key_dim
            order = np.concatenate([np.arange(qk), qk + v_rows])
            return [PlannedTensor(f"{pre}.ssm_conv1d.weight", (shape[0], shape[-1]),
                                  lambda: read(hf_name).reshape(shape[0], -1)[order])]
        if part == "in_proj_qkv":
            qk = 2 * c.key_dim
            order = np.concatenate([np.arange(qk), qk + v_rows])
            return [PlannedTensor(f"{pre}.attn_qkv.weight", shape, lambda: read(hf_name)[order])]
        if part == "in_proj_z":
            return [PlannedTensor(f"{pre}.attn_gate.weight", shape,
                                  lambda: read(hf_name)[v_rows])]
        if part in ("in_proj_a", "in_proj_b"):
            new = f"{pre}.ssm_alpha.weight" if part == "in_proj_a" else f"{pre}.ssm_beta.weight"
            return [PlannedTensor(new, shape, lambda: read(hf_name)[heads])]
        if part == "out_proj":
            return [PlannedTensor(f"{pre}.ssm_out.weight", shape,
                                  lambda: read(hf_name)[:, v_rows])]
        if part == "norm":
            return [PlannedTensor(f"{pre}.ssm_norm.weight", shape, lambda: read(hf_name))]
        raise UnsupportedArchitectureError(
            f"{self.architecture}: checkpoint tensor '{hf_name}' has no llama.cpp counterpart"
        )

    def input_order(self, gguf_name: str) -> np.ndarray | None:
        # ssm_out reads the value heads in ggml's tiled order (its columns reordered above).
        if gguf_name.endswith("ssm_out.weight"):
            order = self.v_order(self.config.value_head_dim)
            return None if np.array_equal(order, np.arange(order.size)) else order
        return None

    def v_order(self, width: int) -> np.ndarray:
        """Indices taking value-head-major rows (head h = key head h // r, r value heads per
        key head, `width` rows each) from transformers' grouped order to ggml's tiled one."""
        c = self.config
        r = c.n_value_heads // c.n_key_heads
        idx = np.arange(c.n_value_heads * width).reshape(c.n_key_heads, r, width)
        return idx.transpose(1, 0, 2).reshape(-1)

    def keep_f32(self, gguf_name: str) -> bool:
        # The recurrence's own parameters and its conv kernel stay F32, as llama.cpp's
        # converter keeps them (ssm_conv1d is read by ggml_ssm_conv, which takes F32 only).
        return super().keep_f32(gguf_name) or gguf_name.endswith(
            ("ssm_a", "ssm_dt.bias", "ssm_conv1d.weight", "ssm_norm.weight")
        )


class Qwen35MoeGGUF(QwenHybridGGUF):
    gguf_arch = gguf.MODEL_ARCH.QWEN35MOE

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_rope_dimension_sections(self.rope_sections())
