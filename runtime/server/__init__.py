"""The local OpenAI-compatible HTTP server: `create_app(model, settings)` and `serve(bundle)`."""

from __future__ import annotations

from runtime.server.app import create_app
from runtime.server.serve import serve
from runtime.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "serve"]
