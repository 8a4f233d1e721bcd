"""What a loaded model reports about itself (`Model.stats()`): the typed record (record.py) and
its assembly from the model's parts (collect.py)."""

from __future__ import annotations

from runtime.stats.collect import collect_stats
from runtime.stats.record import (
    Histogram,
    IntegrityStats,
    LatencyHistograms,
    LatencyStats,
    ModelStats,
    PrefetchStats,
    RecurrentStats,
    RunTimings,
    SpeculationStats,
)

__all__ = ["Histogram", "IntegrityStats", "LatencyHistograms", "LatencyStats", "ModelStats",
           "PrefetchStats", "RecurrentStats", "RunTimings", "SpeculationStats", "collect_stats"]
