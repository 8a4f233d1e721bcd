"""Published MoE configurations the planner knows by name, for `edgemoe plan` and `edgemoe fits`.

Each file in known_configs/ holds the config.json fields the planner reads plus the model card's
total and active parameter counts. `source` lists the public addresses each value was checked
against and which fields each one confirms; `unverified` names the values no source confirmed
(README's table prints them), so a reader knows which numbers to trust. `use_total` says
whether the card's total is precise enough to fix the dense part (config-only estimates are
used otherwise; packager/plan/from_config.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from packager.plan.errors import PlanError
from packager.plan.from_config import ConfigEstimate, estimate


@dataclass(frozen=True)
class Source:
    """A public address and the fields ('total_params', config keys) it was seen to confirm."""

    url: str
    confirms: tuple[str, ...]


@dataclass(frozen=True)
class KnownModel:
    name: str
    hub_id: str
    source: tuple[Source, ...]
    total_params: float  # as the model card states them
    active_params: float
    use_total: bool
    config: dict[str, Any]
    unverified: tuple[str, ...] = ()  # fields no source confirmed

    def estimate(self) -> ConfigEstimate:
        return estimate(self.config, int(self.total_params) if self.use_total else None)

    @property
    def n_experts(self) -> int:
        return self.estimate().shape.n_experts

    @property
    def top_k(self) -> int:
        return self.estimate().shape.top_k


@cache
def known_models() -> tuple[KnownModel, ...]:
    """Every known configuration, by name."""
    folder = resources.files("packager.plan").joinpath("known_configs")
    out = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json"):
            continue
        d = json.loads(entry.read_text(encoding="utf-8"))
        try:
            sources = tuple(Source(s["url"], tuple(s["confirms"])) for s in d["source"])
            out.append(KnownModel(d["name"], d["hub_id"], sources, float(d["total_params"]),
                                  float(d["active_params"]), bool(d["use_total"]), d["config"],
                                  tuple(d.get("unverified", ()))))  # fmt: skip
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"known_configs/{entry.name}: malformed ({e})") from None
    return tuple(sorted(out, key=lambda m: m.total_params))


def find_known(name: str) -> KnownModel | None:
    """A known model by its name or Hub id, case-insensitive ('gpt-oss-20b', 'openai/...')."""
    key = name.strip().lower()
    for m in known_models():
        if key in (m.name.lower(), m.hub_id.lower(), m.hub_id.split("/")[-1].lower()):
            return m
    return None


def known_names() -> str:
    return ", ".join(m.name for m in known_models())
