"""Mixtral: plain GQA attention, softmax top-k always renormalised, experts named w1/w3/w2."""

from __future__ import annotations

from typing import ClassVar

from packager.families.onnx_adapter import OnnxAdapter


class MixtralOnnx(OnnxAdapter):
    genai_type = "mistral"  # genai has no mixtral type; its generic decoder runs it
    proj: ClassVar[tuple[str, str, str]] = ("w1", "w3", "w2")
    # Older checkpoints name the block block_sparse_moe; transformers v5 saves it as mlp.
    moe_modules: ClassVar[tuple[str, ...]] = ("block_sparse_moe", "mlp")
    norm_topk = True

    def validate(self) -> None:
        super().validate()
        if self.config.sliding_window:
            self.refuse("sliding_window attention is not exported")
