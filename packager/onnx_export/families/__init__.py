"""One ONNX adapter per architecture family, registered by the HF architecture string."""

from __future__ import annotations

# Importing the adapters runs their @register decorators.
from packager.onnx_export.families import deepseek2, mixtral, olmoe, qwen_moe  # noqa: F401
from packager.onnx_export.families.base import OnnxFamily, family_for, register, supported

__all__ = ["OnnxFamily", "family_for", "register", "supported"]
