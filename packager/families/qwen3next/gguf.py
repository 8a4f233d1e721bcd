"""Qwen3-Next as llama.cpp's `qwen3next` (src/models/qwen3next.cpp; conversion/qwen.py's
Qwen3NextModel for what its converter writes).

Shared with Qwen3.5-MoE (`QwenHybridGGUF`): the SSM keys and recurrent-layer pattern, the
zero-centred norms (+1), A = -exp(A_log), the conv kernel without its singleton axis, MTP weights
skipped. What differs:
- the DeltaNet input projections are fused per key head in the checkpoint: `in_proj_qkvz` holds,
  for each key head, [q, k, the v of its value heads, their z], and `in_proj_ba` [b, a] likewise.
  llama.cpp wants q, k and v each contiguous (`attn_qkv`) and z apart (`attn_gate`), so the qkvz
  rows are regrouped; `in_proj_ba` is read by the graph in the checkpoint's own per-key-head
  layout (`ssm_ba`) and written as it is;
- this graph repeats each key head for its run of value heads (repeat-interleave, as
  transformers does), so value heads keep the checkpoint's grouped order (Qwen3.5's graph tiles
  and needs them reordered);
- plain NeoX rotary on the rotated part of each head (no M-RoPE sections).
llama.cpp keeps no per-token snapshots of this architecture's recurrent state
(`llm_arch_supports_rs_rollback`), so the runtime turns speculative decoding off for it.
"""

from __future__ import annotations

import gguf
import numpy as np

from packager.families.gguf_adapter import PlannedTensor, Reader
from packager.families.qwen35moe.gguf import QwenHybridGGUF


class Qwen3NextGGUF(QwenHybridGGUF):
    gguf_arch = gguf.MODEL_ARCH.QWEN3NEXT

    def v_order(self, width: int) -> np.ndarray:
        # The graph repeat-interleaves key heads, as transformers does: no reordering.
        return np.arange(self.config.n_value_heads * width)

    def gguf_names(self, hf_name: str) -> tuple[str, ...]:
        if hf_name.endswith("linear_attn.in_proj_qkvz.weight"):
            pre = f"blk.{hf_name.split('.')[2]}"
            return f"{pre}.attn_qkv.weight", f"{pre}.attn_gate.weight"
        return super().gguf_names(hf_name)

    def linear(self, layer: int, part: str, hf_name: str, shape: tuple[int, ...],
               read: Reader) -> list[PlannedTensor]:
        pre = f"blk.{layer}"
        if part == "in_proj_qkvz":
            c = self.config
            qkv_rows = 2 * c.key_dim + c.value_dim

            def split() -> tuple[np.ndarray, np.ndarray]:
                return split_qkvz(read(hf_name), c.n_key_heads, c.key_head_dim,
                                  c.value_dim // c.n_key_heads)  # fmt: skip

            return [PlannedTensor(f"{pre}.attn_qkv.weight", (qkv_rows, shape[1]),
                                  lambda: split()[0]),
                    PlannedTensor(f"{pre}.attn_gate.weight", (c.value_dim, shape[1]),
                                  lambda: split()[1])]  # fmt: skip
        if part == "in_proj_ba":
            return [PlannedTensor(f"{pre}.ssm_ba.weight", shape, lambda: read(hf_name))]
        return super().linear(layer, part, hf_name, shape, read)


def split_qkvz(w: np.ndarray, n_key_heads: int, head_k: int, v_per_key: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """[q, k, v, z] per key head (rows) -> (all q, all k, all v stacked; all z)."""
    per_head = w.reshape(n_key_heads, 2 * head_k + 2 * v_per_key, -1)
    q, k, v, z = np.split(per_head, np.cumsum([head_k, head_k, v_per_key])[:3], axis=1)
    cols = w.shape[-1]
    qkv = np.concatenate([x.reshape(-1, cols) for x in (q, k, v)], axis=0)
    return qkv, z.reshape(-1, cols)
