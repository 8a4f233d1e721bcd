"""Checkpoint + device profile (+ measured usage) -> a packing plan, via the pure planner."""

from __future__ import annotations

from pathlib import Path

from contract.device_profile import DeviceProfile
from contract.files import read_json
from packager.errors import PackError
from packager.families import family_for
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
    )


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
) -> Plan:
    """Plan `src` for `profile`; an open checkpoint and a loaded profile are used as they are."""
    from device_profiles import load_profile

    ckpt = src if isinstance(src, Checkpoint) else open_checkpoint(src)
    shape = model_shape(ckpt)
    if usage is not None:
        usage.validate(shape)
    return make_plan(
        shape,
        profile if isinstance(profile, DeviceProfile) else load_profile(profile),
        usage,
        quant=quant,
        prune_fraction=prune_fraction,
        context_length=context_length,
    )
