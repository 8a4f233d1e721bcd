"""What a loaded model reports about itself (`Model.stats()`): assembled in collect.py."""

from __future__ import annotations

from runtime.stats.collect import collect_stats

__all__ = ["collect_stats"]
