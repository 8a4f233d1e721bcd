"""ONNX export: a Hugging Face MoE checkpoint as model.onnx + one page-aligned data file.

Stock onnxruntime runs the result on CPU; experts are stacked per layer so a token's Gather
touches only its experts' pages, and `routing.i` outputs report the router's choices.
"""

from __future__ import annotations

from packager.onnx_export.export import (
    DATA_FILE,
    GENAI_CONFIG,
    MODEL_FILE,
    OnnxExpertTensor,
    OnnxExport,
    OnnxLayerExperts,
    export_onnx,
)
from packager.onnx_export.model import OPSET
from packager.onnx_export.quant import QUANTS

__all__ = [
    "DATA_FILE",
    "GENAI_CONFIG",
    "MODEL_FILE",
    "OPSET",
    "QUANTS",
    "OnnxExpertTensor",
    "OnnxExport",
    "OnnxLayerExperts",
    "export_onnx",
]
