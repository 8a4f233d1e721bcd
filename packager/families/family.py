"""What one model family is: its typed config, its GGUF mapping, its ONNX graph, its expert shape.

A family is one registered subclass of `Family` (in `packager/families/<family>/__init__.py`)
naming the three classes that describe it. The packager's stages (planner, pruning, calibration,
imatrix, bundle writer, both exporters) hold a `Family` and ask it; none reads config.json.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from packager.errors import UnsupportedArchitectureError
from packager.families.config import ExpertLayout, ModelConfig
from packager.families.gguf_adapter import GGUFAdapter

if TYPE_CHECKING:
    from contract.manifest import MoEShape
    from packager.families.onnx_adapter import OnnxAdapter
    from packager.source import Checkpoint


class Family:
    """One family, bound to one checkpoint's config (read and typed at construction)."""

    hf_architectures: ClassVar[tuple[str, ...]] = ()
    # Vision+text architectures whose text model is this family's first `hf_architectures`
    # (packager/composite.py packs that text model).
    composite_architectures: ClassVar[tuple[str, ...]] = ()
    config_type: ClassVar[type[ModelConfig]]
    gguf_type: ClassVar[type[GGUFAdapter]]
    # Why `--format onnx` cannot build this family, in one line; empty when it can.
    onnx_missing: ClassVar[str] = ""
    # Why no GGUF is written (llama.cpp's graph would compute another model), in one line;
    # empty when one is. The GGUF mapping still names tensors for the planner and pruning.
    gguf_missing: ClassVar[str] = ""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.config = self.config_type.read(raw)

    @property
    def architecture(self) -> str:
        return self.config.architecture

    @property
    def experts(self) -> ExpertLayout:
        return self.config.experts

    @cached_property
    def gguf(self) -> GGUFAdapter:
        """The GGUF mapping; building it refuses what llama.cpp's graph cannot compute."""
        return self.gguf_type(self.config)

    def onnx_type(self) -> type[OnnxAdapter]:
        """The ONNX graph hooks, imported on first use (onnx loads slowly and GGUF needs none)."""
        raise UnsupportedArchitectureError(
            f"{self.architecture} (ONNX export): {self.onnx_missing or 'not implemented'}"
        )

    def onnx(self, ckpt: Checkpoint) -> OnnxAdapter:
        """The ONNX graph hooks for `ckpt`; refuses what the exporter cannot express."""
        return self.onnx_type()(self.config, ckpt)

    def check(self, ckpt: Checkpoint, formats: Iterable[str]) -> None:
        """Refuse now, before any work, what building `formats` would refuse later."""
        _ = self.gguf  # the planner reads the GGUF mapping whatever the format
        if "gguf" in formats:
            self.require_gguf()
        if "onnx" in formats:
            self.onnx(ckpt)

    def require_gguf(self) -> None:
        """Refuse, in one line, to write a GGUF llama.cpp would run as another model."""
        if self.gguf_missing:
            raise UnsupportedArchitectureError(f"{self.architecture} (GGUF): {self.gguf_missing}")

    def manifest_shape(self) -> MoEShape:
        """The manifest's `shape`: the contract's record of this model's expert layout."""
        from contract.manifest import MoEShape

        c, moe = self.config, self.experts
        return MoEShape(
            hf_architecture=c.architecture,
            gguf_arch=self.gguf_type.arch_name(),
            n_layers=c.n_layers,
            moe_layers=moe.moe_layers,
            n_experts=moe.n_experts,
            top_k=moe.top_k,
            n_shared_experts=moe.n_shared_experts,
            hidden_size=c.hidden_size,
            vocab_size=c.vocab_size,
            context_length=c.context_length,
        )
