"""The engines by name: which bundle build each runs, and the one place that opens one.

Engines are imported only when opened, so a process that runs llama.cpp never loads
onnxruntime, and the other way round.
"""

from __future__ import annotations

from pathlib import Path

from runtime.backends.base import Backend, EngineConfig, RoutingObserver, Tokenizer
from runtime.errors import EdgemoeError

BACKENDS = ("llama.cpp", "onnx")
_FORMAT_OF = {"llama.cpp": "gguf", "onnx": "onnx"}


def format_for(backend: str | None) -> str | None:
    """The bundle build an engine runs: llama.cpp runs the GGUF, onnxruntime the ONNX build."""
    if backend is None:
        return None
    if backend not in _FORMAT_OF:
        raise EdgemoeError(f"unknown backend '{backend}' (available: {', '.join(BACKENDS)})")
    return _FORMAT_OF[backend]


def backend_for(fmt: str) -> str:
    return {v: k for k, v in _FORMAT_OF.items()}[fmt]


def open_tokenizer(model_path: Path, kind: str = "llama.cpp") -> Tokenizer:
    if kind == "llama.cpp":
        from runtime.backends.llama_cpp.backend import LlamaTokenizer

        return LlamaTokenizer(model_path)
    raise EdgemoeError(f"unknown backend '{kind}' (available: llama.cpp)")


def open_backend(
    cfg: EngineConfig, observer: RoutingObserver | None = None, kind: str = "llama.cpp"
) -> Backend:
    """The one place that picks an engine implementation by name."""
    if kind == "llama.cpp":
        from runtime.backends.llama_cpp.backend import LlamaBackend

        return LlamaBackend(cfg, observer)
    if kind == "onnx":
        from runtime.backends.onnx.backend import OnnxBackend

        return OnnxBackend(cfg, observer)
    raise EdgemoeError(f"unknown backend '{kind}' (available: {', '.join(BACKENDS)})")
