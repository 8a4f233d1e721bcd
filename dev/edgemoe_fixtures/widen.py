"""A wider copy of a trained fixture: every expert tiled k times along its hidden width.

An expert computes down @ (act(gate @ x) * (up @ x)). With gate and up stacked k times
([g; g; ...]) and down as k copies side by side, each divided by k, it computes the same sum k
times over, each a k-th: the same function, the same routing, k times the expert bytes. That
gives the offloading benches a model as large as a real one (megabyte experts) whose router is
as trained as its parent's, for the price of a copy: training it would need Adam's state for
every weight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgemoe_fixtures.errors import FixtureError
from edgemoe_fixtures.specs import FixtureSpec

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

# The stacked expert tensors of transformers' MoE blocks (qwen3_moe and its kin):
# gate_up_proj [experts, 2 * intermediate, hidden] (gate rows, then up rows) and
# down_proj [experts, hidden, intermediate].
_GATE_UP = "experts.gate_up_proj"
_DOWN = "experts.down_proj"


def widen_into(model: PreTrainedModel, parent: PreTrainedModel, spec: FixtureSpec) -> int:
    """Fill `model` (built from `spec`'s config) with `parent`'s weights, experts tiled; returns
    the factor. Every tensor but the experts' must have the parent's shape."""
    import torch

    mine, theirs = model.state_dict(), parent.state_dict()
    if set(mine) != set(theirs):
        raise FixtureError(f"fixture '{spec.name}': its tensors are not those of "
                           f"'{spec.widened_from}'")
    factor = None
    with torch.no_grad():
        for name, target in mine.items():
            source = theirs[name]
            if source.shape == target.shape:
                target.copy_(source)
                continue
            k = _factor(name, source, target, spec)
            if factor not in (None, k):
                raise FixtureError(f"fixture '{spec.name}': {name} widens {k}x, others {factor}x")
            factor = k
            if name.endswith(_GATE_UP):
                gate, up = source.chunk(2, dim=1)
                target.copy_(torch.cat([gate.repeat(1, k, 1), up.repeat(1, k, 1)], dim=1))
            else:
                target.copy_(source.repeat(1, 1, k) / k)
    if factor is None:
        raise FixtureError(f"fixture '{spec.name}': no expert is wider than "
                           f"'{spec.widened_from}''s")
    return factor


def _factor(name: str, source: torch.Tensor, target: torch.Tensor, spec: FixtureSpec) -> int:
    """How many times wider `target` is than `source` along the expert's hidden width."""
    dim = 1 if name.endswith(_GATE_UP) else 2 if name.endswith(_DOWN) else None
    same_elsewhere = dim is not None and source.dim() == target.dim() == 3 and all(
        source.shape[d] == target.shape[d] for d in range(3) if d != dim)
    if not same_elsewhere or target.shape[dim] % source.shape[dim]:
        raise FixtureError(f"fixture '{spec.name}': {name} is {tuple(target.shape)}, which "
                           f"cannot widen '{spec.widened_from}''s {tuple(source.shape)}")
    return target.shape[dim] // source.shape[dim]
