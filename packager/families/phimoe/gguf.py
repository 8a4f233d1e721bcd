"""Phi-MoE's GGUF mapping, as llama.cpp's `phimoe` names it; the build itself is refused.

llama.cpp's phimoe graph (src/models/phimoe.cpp loads, phi3.cpp computes) RMS-normalises with a
bias where Phi-MoE uses LayerNorm, and weighs the two chosen experts by their softmax
probabilities renormalised to sum to 1, where transformers' sparsemixer weighs each by a
softmax over only the logits within 2 x router_jitter_noise (relative) of it (usually 1 each).
So a GGUF of a Phi-MoE checkpoint would run another model: `--format gguf` is refused
(`Family.gguf_missing`), and the mapping here only serves the planner, pruning and the ONNX
precision plan, which read tensor names and shapes.
"""

from __future__ import annotations

from typing import ClassVar

import gguf

from packager.families.gguf_adapter import GGUFAdapter
from packager.families.phimoe.config import PhimoeConfig


class PhimoeGGUF(GGUFAdapter):
    config: PhimoeConfig
    gguf_arch = gguf.MODEL_ARCH.PHIMOE
    expert_proj: ClassVar[dict[str, str]] = {"w1": "w1", "w2": "w2", "w3": "w3"}

    def _check_rope(self) -> None:
        # Phi-3.5-MoE uses LongRoPE; the mapping is read for names and shapes only.
        if self.config.rope.kind != "longrope":
            super()._check_rope()

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        super().write_hparams(w)
        w.add_rope_dimension_count(self.config.head_dim)
