"""The runtime's Python API: `load(bundle) -> Model`. HTTP, CLI and apps are thin shells over it.

Where each part lives: opening a bundle (`load`, `open_model`) in runtime/loading.py, its
footprint (`minimum_budget`, the budget's inputs) in runtime/footprint.py, the loaded `Model` in
runtime/model.py, and what it reports (`Model.stats()`) in runtime/stats/.
"""

from __future__ import annotations

from runtime.errors import ChatTemplateError
from runtime.footprint import DEFAULT_CTX, minimum_budget
from runtime.generation.request import (
    GenerationRequest,
    GenerationResult,
    PreparedRequest,
    SamplingParams,
    StreamEvent,
    Usage,
)
from runtime.loading import load, open_model
from runtime.model import Model
from runtime.options import LoadOptions

__all__ = [
    "DEFAULT_CTX",
    "ChatTemplateError",
    "GenerationRequest",
    "GenerationResult",
    "LoadOptions",
    "Model",
    "PreparedRequest",
    "SamplingParams",
    "StreamEvent",
    "Usage",
    "load",
    "minimum_budget",
    "open_model",
]
