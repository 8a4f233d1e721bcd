"""Expert pruning: drop the least-used experts of every MoE layer and write a smaller checkpoint.

llama.cpp stores one expert count per model, so every MoE layer loses the same number of
experts. Survivors keep their order and are renumbered 0..n-1; router rows follow them, so
the pruned model's softmax runs over the survivors only (top-k renormalisation, where the
family has it, then redistributes the lost weight). Tensors are copied as raw bytes, so BF16
and F16 checkpoints stay bit-exact without torch.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from packager.errors import PackError
from packager.families import ModelConfig, family_for
from packager.source import Checkpoint
from packager.usage import UsageProfile

STRATEGIES = ("usage", "random")
RECORD_FILE = "edgemoe_prune.json"
_LAYER = re.compile(r"\blayers\.(\d+)\.")
_PER_EXPERT = re.compile(r"^(.*\.experts)\.(\d+)\.(.+)$")  # ...experts.7.gate_proj.weight
# ...experts.gate_up_proj, and gpt-oss's expert biases and MXFP4 blocks/scales beside it.
_FUSED = re.compile(
    r"^.*\.experts\.(gate_up_proj|down_proj|gate_proj|up_proj)(_bias|_blocks|_scales)?(\.weight)?$"
)
# GGUF names of tensors with one row block per routed expert along the first axis: the router,
# its selection bias, and stacked expert tensors a checkpoint stores under a family's own name
# (Granite's block_sparse_moe.input_linear, ...).
_PER_EXPERT_GGUF = re.compile(
    r"\.(ffn_gate_inp\.weight|ffn_gate_inp\.bias|exp_probs_b\.bias|ffn_\w+_exps\.weight)$"
)
_SPEC_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip


class PruneError(PackError):
    """A pruning request that cannot be carried out; the message says which input is wrong."""


@dataclass(frozen=True)
class PruneResult:
    """What was removed and what it cost, as measured on the calibration usage."""

    out_dir: Path
    strategy: str
    fraction: float
    n_experts_before: int
    n_experts_after: int
    top_k_before: int
    top_k_after: int
    kept: dict[int, tuple[int, ...]]  # per MoE layer: original ids of survivors, in new order
    removed: dict[int, tuple[int, ...]]
    removed_selections: dict[int, float]  # share of calibration selections that hit removed
    removed_weight: dict[int, float]  # share of router weight (when chosen) on removed experts
    params_before: int
    params_after: int

    @property
    def mean_removed_selections(self) -> float:
        return float(np.mean(list(self.removed_selections.values())))

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "fraction": self.fraction,
            "n_experts_before": self.n_experts_before,
            "n_experts_after": self.n_experts_after,
            "top_k_before": self.top_k_before,
            "top_k_after": self.top_k_after,
            "kept": {str(k): list(v) for k, v in self.kept.items()},
            "removed": {str(k): list(v) for k, v in self.removed.items()},
            "removed_selections": {str(k): v for k, v in self.removed_selections.items()},
            "removed_weight": {str(k): v for k, v in self.removed_weight.items()},
            "params_before": self.params_before,
            "params_after": self.params_after,
        }


# --- choosing survivors (pure) -------------------------------------------------------------
def n_to_remove(n_experts: int, fraction: float) -> int:
    if not 0.0 < fraction < 1.0:
        raise PruneError(f"prune fraction must be between 0 and 1 (exclusive), got {fraction}")
    n = int(round(fraction * n_experts))
    if n < 1 or n >= n_experts:
        raise PruneError(f"pruning {fraction:.0%} of {n_experts} experts removes {n}; "
                         f"need between 1 and {n_experts - 1}")
    return n


def choose_survivors(
    usage: UsageProfile | None, layers: Sequence[int], n_experts: int, n_keep: int,
    strategy: str = "usage", seed: int = 0, groups: int = 1,
) -> dict[int, tuple[int, ...]]:
    """Per layer, the `n_keep` experts to keep (ascending ids).

    "usage" keeps the experts that received the most router weight on the calibration text
    (ties: the more often chosen, then the lower id); "random" draws uniformly per layer.
    With group-limited routing (`groups` > 1: expert e is in group e // (n_experts / groups))
    each group keeps the same number, so survivors stay in their groups once renumbered.
    """
    if strategy not in STRATEGIES:
        raise PruneError(f"unknown prune strategy '{strategy}' (choose from {STRATEGIES})")
    if strategy == "usage" and usage is None:
        raise PruneError("usage-guided pruning needs a usage profile (run `edgemoe calibrate`)")
    if strategy == "usage":
        check_usage(usage, layers, n_experts)
    size, keep = n_experts // groups, n_keep // groups
    rng = np.random.default_rng(seed)
    out = {}
    for layer in layers:
        chosen: list[int] = []
        for g in range(groups):
            members = range(g * size, (g + 1) * size)
            if strategy == "random":
                chosen += [g * size + int(x) for x in rng.choice(size, keep, replace=False)]
                continue
            w, c = usage.weight_sum[layer], usage.counts[layer]
            chosen += sorted(members, key=lambda e: (-w[e], -c[e], e))[:keep]
        out[layer] = tuple(sorted(chosen))
    return out


def check_usage(usage: UsageProfile, layers: Sequence[int], n_experts: int) -> None:
    if usage.n_experts != n_experts:
        raise PruneError(f"usage profile has {usage.n_experts} experts per layer, the checkpoint "
                         f"{n_experts}; it was measured on a different model")
    missing = sorted(set(layers) - set(usage.layers))
    if missing:
        raise PruneError(f"usage profile has no data for MoE layers {missing}")
    if usage.n_tokens == 0:
        raise PruneError("usage profile was measured on 0 tokens")


def removed_shares(usage: UsageProfile, kept: Mapping[int, Sequence[int]]
                   ) -> tuple[dict[int, float], dict[int, float]]:
    """Per layer: share of selections, and of router weight, that went to removed experts."""
    sel, wt = {}, {}
    for layer, keep in kept.items():
        c, w = np.asarray(usage.counts[layer], float), np.asarray(usage.weight_sum[layer])
        gone = np.ones(len(c), dtype=bool)
        gone[list(keep)] = False
        sel[layer] = float(c[gone].sum() / max(c.sum(), 1e-30))
        wt[layer] = float(w[gone].sum() / max(w.sum(), 1e-30))
    return sel, wt


def pruned_config(config: ModelConfig, n_keep: int) -> dict[str, Any]:
    """config.json with the new expert count; top-k clamped so it never exceeds it."""
    groups = config.n_group or 1
    if groups > 1 and n_keep % groups:
        raise PruneError(f"{n_keep} experts cannot be split into n_group={groups} equal groups;"
                         " choose a fraction that keeps a multiple of n_group")
    return config.with_experts(n_keep)  # the family refuses what its router cannot run


# --- tensor selection (pure) -----------------------------------------------------------------
TensorPlan = tuple[str, "tuple[int, ...] | None"]


def plan_tensor(name: str, shape: tuple[int, ...], kept: Mapping[int, tuple[int, ...]],
                n_experts: int, router_names: set[str]) -> TensorPlan | None:
    """(new name, rows to take along dim 0 or None for all); None drops the tensor."""
    m = _LAYER.search(name)
    layer = int(m.group(1)) if m else None
    if layer not in kept:
        return name, None
    keep = kept[layer]
    if pe := _PER_EXPERT.match(name):
        old = int(pe.group(2))
        if old not in keep:
            return None
        return f"{pe.group(1)}.{keep.index(old)}.{pe.group(3)}", None
    if _FUSED.match(name) or name in router_names:
        if _expert_axis(shape) == 1 and shape[1] == n_experts:
            return name, keep
        if not shape or shape[0] != n_experts:
            raise PruneError(f"{name}: expected {n_experts} experts along the first axis, "
                             f"got shape {shape}")
        return name, keep
    return name, None


def _expert_axis(shape: Sequence[int]) -> int:
    """The axis experts run along: the first, or the second behind a leading 1 (ERNIE keeps its
    selection bias as [1, experts]; the bytes are laid out as [experts] either way)."""
    return 1 if len(shape) == 2 and shape[0] == 1 else 0


def _router_names(adapter, names: Sequence[str]) -> set[str]:
    """Checkpoint tensors the family maps to per-expert rows (routers, stacked experts)."""
    from packager.errors import UnsupportedArchitectureError

    out = set()
    for n in names:
        try:
            targets = adapter.gguf_names(n)
        except UnsupportedArchitectureError:
            continue
        if all(_PER_EXPERT_GGUF.search(t) and "shexp" not in t for t in targets):
            out.add(n)
    return out


# --- raw safetensors I/O ------------------------------------------------------------------
def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return json.loads(f.read(n)), 8 + n


def _write_shard(src: Path, dst: Path, plans: dict[str, tuple[str, tuple[int, ...] | None]]
                 ) -> tuple[dict[str, str], int]:
    """Copy the planned tensors of one shard as raw bytes; returns (name -> file, n params)."""
    from safetensors import TensorSpec, serialize_file

    header, base = _read_header(src)
    specs, keep_alive, n_params = {}, [], 0
    with open(src, "rb") as f:
        for name, info in header.items():
            if name == "__metadata__" or name not in plans:
                continue
            new_name, rows = plans[name]
            start, end = info["data_offsets"]
            f.seek(base + start)
            raw = np.frombuffer(f.read(end - start), dtype=np.uint8)
            shape = list(info["shape"])
            if rows is not None:
                axis = _expert_axis(shape)
                raw = raw.reshape(shape[axis], -1)[list(rows)].ravel()
                shape[axis] = len(rows)
            raw = np.ascontiguousarray(raw)
            keep_alive.append(raw)
            dtype = _SPEC_DTYPES.get(info["dtype"])
            if dtype is None:
                raise PruneError(f"{src.name}: tensor '{name}' has unsupported dtype "
                                 f"{info['dtype']}")
            specs[new_name] = TensorSpec(dtype=dtype, shape=shape, data_ptr=raw.ctypes.data,
                                         data_len=raw.nbytes)
            n_params += int(np.prod(shape))
    serialize_file(specs, str(dst), metadata=header.get("__metadata__") or {"format": "pt"})
    return {n: dst.name for n in specs}, n_params


# --- entry points -----------------------------------------------------------------------------
def prune_checkpoint(
    src_dir: str | Path | Checkpoint,
    usage: UsageProfile | None,
    fraction: float,
    out_dir: Path,
    strategy: str = "usage",
    seed: int = 0,
    force: bool = False,
) -> PruneResult:
    """Write a checkpoint without the `fraction` least-used experts of each MoE layer.

    `src_dir` may be an open `Checkpoint` (what `pack` passes), which is used as is. The result
    is also written beside the weights as `edgemoe_prune.json`, for whoever reads the folder
    later; `pack` takes it from the returned record instead.
    """
    from packager.bundle import staging_dir
    from packager.source import INDEX_NAME, open_checkpoint

    ckpt = src_dir if isinstance(src_dir, Checkpoint) else open_checkpoint(src_dir)
    family = family_for(ckpt.config)
    moe = family.experts
    n_keep = moe.n_experts - n_to_remove(moe.n_experts, fraction)
    config = pruned_config(family.config, n_keep)
    kept = choose_survivors(usage, moe.moe_layers, moe.n_experts, n_keep, strategy, seed,
                            family.config.n_group or 1)
    routers = _router_names(family.gguf, list(ckpt.tensors))
    plans = {}
    for name, info in ckpt.tensors.items():
        p = plan_tensor(name, info.shape, kept, moe.n_experts, routers)
        if p is not None:
            plans[info.name] = p  # by its stored name: a composite's text view renames it
    with staging_dir(Path(out_dir), force) as stage:
        weight_map, params_after = {}, 0
        for shard in ckpt.weight_files:
            mapping, n = _write_shard(shard, stage / shard.name, plans)
            weight_map.update(mapping)
            params_after += n
        if (ckpt.path / INDEX_NAME).is_file() or len(ckpt.weight_files) > 1:
            index = {"metadata": {"total_parameters": params_after}, "weight_map": weight_map}
            (stage / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        (stage / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        _copy_side_files(ckpt.path, stage, {p.name for p in ckpt.weight_files})
        result = _result(stage, usage, strategy, fraction, moe, kept, ckpt, params_after)
        (stage / RECORD_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return _with_dir(result, Path(out_dir).resolve())


def _copy_side_files(src: Path, dst: Path, weight_files: set[str]) -> None:
    """Tokenizer, generation config, templates: everything at top level but weights/config."""
    skip = weight_files | {"config.json", "model.safetensors.index.json", RECORD_FILE}
    for p in src.iterdir():
        if p.is_file() and p.name not in skip and not p.name.endswith(".safetensors"):
            shutil.copyfile(p, dst / p.name)


def _result(stage, usage, strategy, fraction, moe, kept, ckpt, params_after):
    n, n_after = moe.n_experts, len(next(iter(kept.values())))
    removed = {k: tuple(e for e in range(n) if e not in v) for k, v in kept.items()}
    sel, wt = removed_shares(usage, kept) if usage is not None else ({}, {})
    params_before = sum(int(np.prod(t.shape)) for t in ckpt.tensors.values())
    return PruneResult(
        out_dir=stage, strategy=strategy, fraction=fraction, n_experts_before=n,
        n_experts_after=n_after, top_k_before=moe.top_k,
        top_k_after=min(moe.top_k, n_after), kept=dict(kept),
        removed=removed, removed_selections=sel, removed_weight=wt,
        params_before=params_before, params_after=params_after,
    )


def _with_dir(result: PruneResult, out_dir: Path) -> PruneResult:
    from dataclasses import replace

    return replace(result, out_dir=out_dir)


PACK_FOLDER = "pruned-checkpoint"  # also the GGUF's general.name: keep it stable


def prune_for_pack(src: str | Path | Checkpoint, fraction: float,
                   usage: UsageProfile | Path | None, work_dir: Path, strategy: str = "usage",
                   seed: int = 0) -> PruneResult:
    """`pack --prune FRACTION`: a pruned copy of `src` in `work_dir`; its `out_dir` is packed."""
    if isinstance(usage, (str, Path)):
        usage = UsageProfile.load(Path(usage))
    out = Path(work_dir) / PACK_FOLDER
    return prune_checkpoint(src, usage, fraction, out, strategy, seed, force=True)


class PruneEvaluator:
    """Cost of pruning alone: the pruned model vs the unpruned one, both transformers float32.

    Quantization plays no part. The unpruned model's logits over the held-out token ids are
    computed once, so several pruned candidates can be compared cheaply.
    """

    def __init__(self, orig_dir: Path, heldout_text: str, n_tokens: int = 512,
                 chunk: int = 128) -> None:
        from packager.fidelity import reference_logits, token_chunks

        self.orig_dir = Path(orig_dir)
        self.chunks = token_chunks(self.orig_dir, heldout_text, n_tokens, chunk)
        self.reference = reference_logits(self.orig_dir, self.chunks)

    def report(self, pruned_dir: Path) -> dict[str, float]:
        from packager.fidelity import measure, reference_logits

        div = measure(self.reference, reference_logits(Path(pruned_dir), self.chunks),
                      self.chunks)
        return {
            "n_tokens": div.n_tokens,
            "top1_agreement": div.top1_agreement,
            "mean_kl": div.mean_kl,
            "ppl_orig": div.ppl_reference,
            "ppl_pruned": div.ppl_candidate,
        }


def prune_report(orig_dir: Path, pruned_dir: Path, heldout_text: str, n_tokens: int = 512,
                 chunk: int = 128) -> dict[str, float]:
    """{n_tokens, top1_agreement, mean_kl, ppl_orig, ppl_pruned}; see `PruneEvaluator`."""
    return PruneEvaluator(orig_dir, heldout_text, n_tokens, chunk).report(pruned_dir)
