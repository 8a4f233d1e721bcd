"""Checkpoint + device profile (+ measured usage) -> a packing plan, via the pure planner.

The model may also be given without weights: a config.json (or a folder holding only one), a
published configuration the planner knows by name (packager/plan/known.py), or a Hub id whose
config.json is in the local Hugging Face cache; its shape is then estimated from the config
(packager/plan/from_config.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from contract.device_profile import DeviceProfile
from contract.files import read_json
from packager.errors import PackError
from packager.families import family_for
from packager.plan.errors import PlanError
from packager.plan.expert_usage import ExpertUsage
from packager.plan.result import Plan
from packager.plan.search import make_plan
from packager.plan.shape import ModelShape, shape_from_tensors
from packager.source import Checkpoint, open_checkpoint


def model_shape(ckpt: Checkpoint) -> ModelShape:
    """The planner's view of a checkpoint, from tensor shapes alone (no weights read)."""
    family = family_for(ckpt.config)
    adapter, moe = family.gguf, family.experts
    planned = adapter.plan({n: t.shape for n, t in ckpt.tensors.items()}, ckpt.read)
    n_kv, head_k, head_v = adapter.kv_dims()
    # Experts whose bytes the checkpoint already holds in a ggml type (gpt-oss's MXFP4).
    stored = {t.storage for t in planned if t.is_expert}
    return shape_from_tensors(
        ((t.name, t.shape, t.is_expert) for t in planned),
        n_layers=adapter.n_layers,
        moe_layers=moe.moe_layers,
        n_experts=moe.n_experts,
        top_k=moe.top_k,
        hidden_size=family.config.hidden_size,
        vocab_size=family.config.vocab_size,
        n_kv_heads=n_kv,
        head_dim_k=head_k,
        head_dim_v=head_v,
        kv_layers=adapter.kv_layers(),
        recurrent_state_values=adapter.recurrent_state_values(),
        expert_storage=next(iter(stored)).name if len(stored) == 1 and None not in stored
        else None,
    )


@dataclass(frozen=True)
class PlanSource:
    """The planner's view of what the user named, and how it was obtained."""

    shape: ModelShape
    described: str


def plan_source(src: str | Path | Checkpoint, cache_dir: Path | None = None) -> PlanSource:
    """A checkpoint (tensor shapes read, no weights), or a config alone; one-line errors."""
    from packager.plan.known import find_known, known_names
    from packager.source import looks_like_repo_id

    if isinstance(src, Checkpoint):
        return PlanSource(model_shape(src), f"checkpoint {src.path}")
    path = Path(src).expanduser()
    if path.is_file():
        return _from_config(path, f"{path} (config only, no weights)")
    if path.is_dir():
        if any(path.glob("*.safetensors")):
            return _checkpoint(path)
        if (path / "config.json").is_file():
            return _from_config(path / "config.json", f"{path}/config.json (no weights)")
        raise PlanError(f"{path}: no config.json and no safetensors")
    known = find_known(str(src))
    if known is not None:
        est = known.estimate()
        return PlanSource(est.shape, f"{known.name} ({known.hub_id}), published configuration: "
                          + "; ".join(est.notes))  # fmt: skip
    if looks_like_repo_id(str(src)):
        cached = _cached_config(str(src), cache_dir)
        if cached is not None:
            if any(cached.parent.glob("*.safetensors")):
                return _checkpoint(cached.parent)
            return _from_config(cached, f"{src} (config.json from the Hub cache, no weights)")
    raise PlanError(f"{src}: not a checkpoint folder, a config.json, a Hub id in the local "
                    f"cache or a known model ({known_names()})")


def _checkpoint(folder: Path) -> PlanSource:
    """Tensor shapes of a packable checkpoint; a mixture edgemoe cannot pack yet is still
    sized, from its config."""
    from packager.errors import UnsupportedArchitectureError
    from packager.families import is_moe_config

    ckpt = open_checkpoint(folder)
    try:
        return PlanSource(model_shape(ckpt), f"checkpoint {folder}")
    except UnsupportedArchitectureError as e:
        if not is_moe_config(ckpt.config):
            raise
        return _from_config(folder / "config.json", f"{folder}/config.json ({e}; sized from "
                            "its config)")  # fmt: skip


def _from_config(path: Path, described: str) -> PlanSource:
    from packager.plan.from_config import estimate

    config = read_json(path, PlanError, "config.json")
    if not isinstance(config, dict):
        raise PlanError(f"{path}: top level must be an object")
    est = estimate(config)
    return PlanSource(est.shape, f"{described}: " + "; ".join(est.notes))


def _cached_config(repo_id: str, cache_dir: Path | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    return Path(found) if isinstance(found, str) else None


def load_usage(path: str | Path) -> ExpertUsage:
    """A usage.json from `edgemoe calibrate` (or any {'per_layer': ...} document)."""
    data = read_json(Path(path), PackError, "usage file")
    if isinstance(data, dict) and "per_layer" not in data and "counts" in data:
        from packager.usage import UsageProfile

        return UsageProfile.from_dict(data).to_planner_usage()
    return ExpertUsage.from_dict(data)


def plan_for(
    src: str | Checkpoint,
    profile: str | DeviceProfile,
    usage: ExpertUsage | None = None,
    *,
    quant: str | None = None,
    prune_fraction: float = 0.0,
    context_length: int | None = None,
    budget: str | None = None,
    cache_dir: Path | None = None,
) -> Plan:
    """Plan `src` (checkpoint, config.json, known model or cached Hub id) for `profile`; with
    `budget` ('25%', '1.5GB') the plan the runtime would run at that expert budget
    (packager/plan/budget_fit.py)."""
    from device_profiles import load_profile
    from packager.plan.budget_fit import budget_plan

    source = plan_source(src, cache_dir)
    shape = source.shape
    if usage is not None:
        usage.validate(shape)
    device = profile if isinstance(profile, DeviceProfile) else load_profile(profile)
    if budget is not None:
        if prune_fraction:
            raise PlanError("--budget plans the model as packed; combine it with --prune later")
        plan = budget_plan(shape, device, budget, usage, quant=quant,
                           context_length=context_length)  # fmt: skip
    else:
        plan = make_plan(shape, device, usage, quant=quant, prune_fraction=prune_fraction,
                         context_length=context_length)  # fmt: skip
    if isinstance(src, Checkpoint):  # pack's own plan: the manifest records it as it was
        return plan
    return replace(plan, rationale=(f"model: {source.described}", *plan.rationale))
