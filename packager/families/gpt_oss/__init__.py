"""gpt-oss (OpenAI's open-weight MoE): attention sinks, alternate sliding-window layers, a biased
router softmaxed over its top-k, expert biases, the clamped SwiGLU; experts read as published
(MXFP4 blocks and scales) and written to GGUF as MXFP4 bytes unchanged."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from packager.families.family import Family
from packager.families.gpt_oss.config import GptOssConfig
from packager.families.gpt_oss.gguf import GptOssGGUF
from packager.families.registry import register

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter
    from packager.source import Checkpoint


@register
class GptOss(Family):
    hf_architectures = ("GptOssForCausalLM",)
    config_type = GptOssConfig
    gguf_type = GptOssGGUF

    def check(self, ckpt: Checkpoint, formats: Iterable[str]) -> None:
        super().check(ckpt, formats)
        # The expert tensors' shapes (MXFP4 blocks and scales included) are checked before any
        # work: planning reads no weights.
        self.gguf.plan({n: t.shape for n, t in ckpt.tensors.items()}, ckpt.read)

    def onnx_type(self) -> type[OnnxAdapter]:
        from packager.families.gpt_oss.onnx import GptOssOnnx

        return GptOssOnnx
