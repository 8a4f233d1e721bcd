"""edgemoe runtime: load a bundle, keep hot experts resident, page the rest from disk.

import runtime
model = runtime.load("bundles/qwen3moe-phone", budget="40%")

`runtime.load` is `runtime.api.load` (typed keywords: the fields of `runtime.LoadOptions`);
both are imported on first use, so `import runtime` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.api import load
    from runtime.options import LoadOptions

__all__ = ["LoadOptions", "load"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from runtime.api import load as value
    elif name == "LoadOptions":
        from runtime.options import LoadOptions as value
    else:
        raise AttributeError(f"module 'runtime' has no attribute '{name}'")
    globals()[name] = value
    return value
