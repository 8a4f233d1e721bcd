"""edgemoe runtime: load a bundle, keep hot experts resident, page the rest from disk.

import runtime
model = runtime.load("bundles/qwen3moe-phone", budget="40%")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtime.api import Model


def load(bundle: Any, budget: Any = None, **kwargs: Any) -> Model:
    """See runtime.api.load; imported lazily so `import runtime` stays cheap."""
    from runtime.api import load as _load

    return _load(bundle, budget, **kwargs)


__all__ = ["load"]
