"""The local OpenAI-compatible HTTP server: `create_app(model, settings)` and `serve(bundle)`.

`create_app` and `serve` are imported on first use, so front-ends that only need the option
table (`ServerSettings`, `OPTIONS`) start without loading FastAPI, uvicorn or an engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.server.settings import OPTIONS, ServerSettings

if TYPE_CHECKING:
    from runtime.server.app import create_app
    from runtime.server.serve import serve

__all__ = ["OPTIONS", "ServerSettings", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from runtime.server.app import create_app as value
    elif name == "serve":
        # Importing the submodule binds `runtime.server.serve` to it; rebind the function.
        from runtime.server.serve import serve as value
    else:
        raise AttributeError(f"module 'runtime.server' has no attribute '{name}'")
    globals()[name] = value
    return value
