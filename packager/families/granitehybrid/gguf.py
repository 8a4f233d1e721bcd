"""Granite-4.0-H as llama.cpp's `granitehybrid` (src/models/granite-hybrid.cpp, the Mamba2 layer
in mamba-base.cpp; conversion/granite.py's GraniteHybridModel for what its converter writes).

- Mamba2 layers are the ones whose `attention.head_count_kv` entry is 0; their shape goes into
  the SSM keys (conv kernel, state size, group count, inner size = expand x hidden, time-step
  rank = Mamba heads). `in_proj` keeps transformers' [z, x B C, dt] row order, which is the
  graph's; A = -exp(A_log) and D are stored as [heads, 1], the gated norm as [groups, d_inner /
  groups] (grouped RMS norm), the conv kernel without its singleton axis.
- The four multipliers are llama.cpp's Granite scales: `embedding_scale` (embedding_multiplier),
  `attention.scale` (attention_multiplier, the softmax scale in place of 1/sqrt(head)),
  `residual_scale` (residual_multiplier, on both branches) and `logit_scale` (logits_scaling,
  logits divided by it).
- Routed experts are stored fused (`block_sparse_moe.input_linear`: gate rows then up rows per
  expert) and split into `ffn_gate_exps` / `ffn_up_exps`; the router softmaxes its top-k logits,
  which is llama.cpp's softmax gating with the top-k renormalised. The shared MLP
  (`shared_mlp.input_linear`, gate then up) becomes `ffn_{gate,up,down}_shexp`.
- Rotary is on exactly when `position_embedding_type` is "rope" (`rope.scaling.finetuned`, which
  this graph reads as its rope switch; released Granite-4.0-H checkpoints use none). The graph's
  rotary pairs adjacent dimensions, so q/k rows are interleaved as for llama.
What its graph cannot compute is refused naming the field: another Mamba expansion than 2 (it
asserts d_inner = 2 x hidden), biased Mamba projections, a clamped time step, attention biases.
A checkpoint without Mamba conv biases gets zero ones (the graph always adds one).
llama.cpp keeps no per-token snapshots of this architecture's recurrent state, so the runtime
turns speculative decoding off for it.
"""

from __future__ import annotations

import re

import gguf
import numpy as np

from packager.errors import UnsupportedArchitectureError
from packager.families.gguf_adapter import GGUFAdapter, PlannedTensor, Reader
from packager.families.granitehybrid.config import (
    ATTENTION,
    MAMBA,
    NO_LIMIT,
    GraniteHybridConfig,
)
from packager.families.mixtral.gguf import interleave_heads

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# Expert tensors under each name transformers has used (the fused on-disk one first).
_EXPERTS = {"block_sparse_moe.output_linear.weight": "ffn_down_exps",
            "block_sparse_moe.experts.gate_proj.weight": "ffn_gate_exps",
            "block_sparse_moe.experts.up_proj.weight": "ffn_up_exps",
            "block_sparse_moe.experts.down_proj.weight": "ffn_down_exps"}  # fmt: skip
_PAIRS = {"block_sparse_moe.input_linear.weight": ("ffn_gate_exps", "ffn_up_exps"),
          "shared_mlp.input_linear.weight": ("ffn_gate_shexp", "ffn_up_shexp")}  # fmt: skip


class GraniteHybridGGUF(GGUFAdapter):
    gguf_arch = gguf.MODEL_ARCH.GRANITE_HYBRID
    config: GraniteHybridConfig

    def validate(self) -> None:
        c = self.config
        if len(c.kinds) != c.n_layers or set(c.kinds) - {MAMBA, ATTENTION}:
            raise UnsupportedArchitectureError(
                f"config.json: 'layer_types' must list {c.n_layers} layers of 'mamba' or "
                f"'attention' for {self.architecture}, got {list(c.kinds)}"
            )
        if c.n_experts < 2:
            self._refuse("num_local_experts", c.n_experts,
                         "at least 2 (a dense Granite-4 hybrid is not a mixture of experts)")
        if c.mamba_expand != 2:  # asserted at load even without Mamba2 layers
            self._refuse("mamba_expand", c.mamba_expand,
                         "2: llama.cpp's Mamba2 layer takes d_inner = 2 x hidden_size only")
        if c.mamba_proj_bias:
            self._refuse("mamba_proj_bias", True, "false: llama.cpp's Mamba2 projections have "
                         "no bias")  # fmt: skip
        if c.time_step_limit != NO_LIMIT:
            self._refuse("time_step_limit", list(c.time_step_limit),
                         "[0.0, Infinity]: llama.cpp's scan does not clamp the time step")
        if c.attention_bias:
            self._refuse("attention_bias", True, "false (as Granite-4.0-H)")
        if c.hidden_act != "silu":
            self._refuse("hidden_act", c.hidden_act, "silu")
        if c.position_embedding_type not in ("nope", "rope"):
            self._refuse("position_embedding_type", c.position_embedding_type,
                         "'rope', 'nope' or null")  # fmt: skip
        if c.mamba_heads % c.mamba_groups or c.d_inner % c.mamba_groups:
            self._refuse("mamba_n_groups", c.mamba_groups,
                         f"a divisor of mamba_n_heads ({c.mamba_heads})")  # fmt: skip
        if c.mamba_head_dim * c.mamba_heads != c.d_inner:
            self._refuse("mamba_d_head", c.mamba_head_dim,
                         f"{c.d_inner // max(c.mamba_heads, 1)} (mamba_expand x hidden_size / "
                         "mamba_n_heads)")
        if c.n_kv_heads < 1 or c.n_heads % c.n_kv_heads:
            self._refuse("num_key_value_heads", c.n_kv_heads,
                         f"a divisor of num_attention_heads ({c.n_heads})")  # fmt: skip

    # ----- hyper-parameters ----------------------------------------------------------------
    def n_head_kv(self) -> list[int]:  # type: ignore[override]
        c = self.config
        return [c.n_kv_heads if k == ATTENTION else 0 for k in c.kinds]

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        c = self.config
        w.add_context_length(c.context_length)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(self.n_layers)
        w.add_feed_forward_length(c.require(c.intermediate_size, "intermediate_size"))
        w.add_head_count(c.n_heads)
        w.add_head_count_kv(self.n_head_kv())
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_rope_freq_base(c.rope.theta)
        w.add_rope_scaling_finetuned(c.position_embedding_type == "rope")
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_vocab_size(c.vocab_size)
        w.add_expert_count(c.n_experts)
        w.add_expert_used_count(c.top_k)
        if c.shared_intermediate_size:
            w.add_expert_shared_feed_forward_length(c.shared_intermediate_size)
        w.add_embedding_scale(c.embedding_multiplier)
        w.add_attention_scale(c.attention_multiplier)
        w.add_residual_scale(c.residual_multiplier)
        w.add_logit_scale(c.logits_scaling)
        w.add_ssm_conv_kernel(c.mamba_conv)
        w.add_ssm_state_size(c.mamba_state)
        w.add_ssm_group_count(c.mamba_groups)
        w.add_ssm_inner_size(c.d_inner)
        w.add_ssm_time_step_rank(c.mamba_heads)
        self.write_rope_scaling(w)

    def kv_dims(self) -> tuple[int, int, int]:
        return self.config.n_kv_heads, self.config.head_dim, self.config.head_dim

    def kv_layers(self) -> int:
        return len(self.config.attention_layers)

    def recurrent_state_values(self) -> int:
        # llama.cpp's n_embd_r (the conv's last kernel-1 inputs of x, B, C) + n_embd_s
        # (d_state x d_inner), per Mamba2 layer.
        c = self.config
        conv = (c.mamba_conv - 1) * c.conv_channels
        return len(c.mamba_layers) * (conv + c.mamba_state * c.d_inner)

    # ----- tensors ------------------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str:
        if (m := _LAYER.match(hf_name)) and m.group(2) in _EXPERTS:
            return f"blk.{m.group(1)}.{_EXPERTS[m.group(2)]}.weight"
        if m and m.group(2) in _PAIRS:  # the gate half's name; gguf_names lists both
            return f"blk.{m.group(1)}.{_PAIRS[m.group(2)][0]}.weight"
        if m and m.group(2) == "mamba.dt_bias":
            return f"blk.{m.group(1)}.ssm_dt.bias"
        return super().gguf_name(hf_name)

    def gguf_names(self, hf_name: str) -> tuple[str, ...]:
        if (m := _LAYER.match(hf_name)) and m.group(2) in _PAIRS:
            return tuple(f"blk.{m.group(1)}.{n}.weight" for n in _PAIRS[m.group(2)])
        return super().gguf_names(hf_name)

    def expand(self, hf_name: str, shape: tuple[int, ...], read: Reader) -> list[PlannedTensor]:
        m = _LAYER.match(hf_name)
        part = m.group(2) if m else ""
        if part.startswith("shared_mlp.") and not self.config.shared_intermediate_size:
            return []  # a zero-width shared MLP adds nothing; llama.cpp then expects none
        if part in _PAIRS:  # gate rows, then up rows (per expert for the routed ones)
            gate, up = self.gguf_names(hf_name)
            half = shape[-2] // 2
            out_shape = (*shape[:-2], half, shape[-1])
            expert = part.startswith("block_sparse_moe.")
            return [PlannedTensor(gate, out_shape, lambda: read(hf_name)[..., :half, :], expert),
                    PlannedTensor(up, out_shape, lambda: read(hf_name)[..., half:, :], expert)]
        if part in _EXPERTS:
            return [PlannedTensor(self.gguf_name(hf_name), shape, lambda: read(hf_name), True)]
        new = self.gguf_name(hf_name)
        if part.startswith("mamba."):
            return self._mamba(part.removeprefix("mamba."), new, hf_name, shape, read)
        return [PlannedTensor(new, shape, lambda: self.transform(new, read(hf_name)))]

    def _mamba(self, part: str, new: str, hf_name: str, shape: tuple[int, ...],
               read: Reader) -> list[PlannedTensor]:
        c = self.config
        if part == "A_log":
            return [PlannedTensor(new, (shape[0], 1), lambda: -np.exp(
                read(hf_name).astype(np.float32)).reshape(-1, 1))]  # fmt: skip
        if part == "D":
            return [PlannedTensor(new, (shape[0], 1), lambda: read(hf_name).reshape(-1, 1))]
        if part == "norm.weight":
            groups = (c.mamba_groups, shape[0] // c.mamba_groups)
            return [PlannedTensor(new, groups, lambda: read(hf_name).reshape(groups))]
        if part == "conv1d.weight":
            kernel = PlannedTensor(new, (shape[0], shape[-1]),
                                   lambda: read(hf_name).reshape(shape[0], -1))
            if c.mamba_conv_bias:
                return [kernel]
            bias = new.removesuffix(".weight") + ".bias"  # the graph adds a bias regardless
            return [kernel, PlannedTensor(bias, (shape[0],),
                                          lambda: np.zeros(shape[0], np.float32))]
        return [PlannedTensor(new, shape, lambda: read(hf_name))]

    def transform(self, gguf_name: str, data: np.ndarray) -> np.ndarray:
        # llama.cpp's Granite rotary pairs adjacent dimensions (llama's layout), transformers
        # rotates halves: q/k rows are interleaved whether or not rotary is on (a permutation
        # shared by q and k leaves attention unchanged without it).
        if gguf_name.endswith("attn_q.weight"):
            return interleave_heads(data, self.config.n_heads)
        if gguf_name.endswith("attn_k.weight"):
            return interleave_heads(data, self.config.n_kv_heads)
        return data

    def keep_f32(self, gguf_name: str) -> bool:
        return super().keep_f32(gguf_name) or gguf_name.endswith(
            ("ssm_a", "ssm_d", "ssm_dt.bias", "ssm_conv1d.weight", "ssm_conv1d.bias")
        )
