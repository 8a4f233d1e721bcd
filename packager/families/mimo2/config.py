"""MiMo-V2-Flash config: hybrid sliding-window / full attention with per-kind KV heads and rotary
bases, attention sinks on sliding layers, a V head narrower than Q/K, a scaled value, dense
leading layers and a DeepSeek-V3 router without shared experts.

Released checkpoints and transformers name several fields differently; both are read:

| what | released config.json | transformers |
| --- | --- | --- |
| which layers slide | `hybrid_layer_pattern` (1 = sliding) | `layer_types` |
| sliding layers' KV heads | `swa_num_key_value_heads` | 2 x `num_key_value_heads` |
| their Q/K and V widths | `swa_head_dim`, `swa_v_head_dim` | `head_dim`, `v_head_dim` |
| rotary bases | `rope_theta` + `swa_rope_theta` | `rope_parameters.{full,sliding}_attention` |
| the window | `sliding_window_size` (previous tokens) | `sliding_window` (= size + 1) |
| RMSNorm epsilon | `layernorm_epsilon` | `rms_norm_eps` |

Defaults are transformers' own (`MiMoV2FlashConfig.__post_init__`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from packager.families.config import ConfigReader, ModelConfig

SLIDING, FULL = "sliding_attention", "full_attention"


@dataclass(frozen=True, kw_only=True)
class MiMoV2Config(ModelConfig):
    expert_count_keys: ClassVar[tuple[str, ...]] = (
        "n_routed_experts", "num_local_experts", "num_experts",
    )  # fmt: skip

    v_head_dim: int
    sliding_layers: tuple[int, ...]
    layers_key: str  # where the pattern came from (for messages)
    swa_kv_heads: int
    swa_head_dim: int
    swa_v_head_dim: int
    swa_heads: int
    full_theta: float
    swa_theta: float
    rotary_factors: tuple[float, float]  # full, sliding (one rotary width in llama.cpp)
    rope_kinds: tuple[str, str]
    sparse_layers: tuple[int, ...]
    value_scale: float
    routed_scaling_factor: float
    scoring_func: str
    topk_method: str
    attention_bias: bool
    mtp_layers: int

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        base = super().fields(r)
        n, heads = base["n_layers"], base["n_heads"]
        kv = r.int("num_key_value_heads", default=4)
        head, v_head = r.int("head_dim", default=192), r.int("v_head_dim", default=128)
        sliding, layers_key = _sliding_layers(r, n)
        full, swa = _rope(r, FULL), _rope(r, SLIDING)
        return {
            **base,
            "n_kv_heads": kv,
            "head_dim": head,
            "v_head_dim": v_head,
            "rms_norm_eps": r.float("rms_norm_eps", "layernorm_epsilon", default=1e-5),
            "sliding_window": _window(r),
            "sliding_layers": sliding,
            "layers_key": layers_key,
            "swa_kv_heads": r.int("swa_num_key_value_heads", default=2 * kv),
            "swa_head_dim": r.int("swa_head_dim", default=head),
            "swa_v_head_dim": r.int("swa_v_head_dim", default=v_head),
            "swa_heads": r.int("swa_num_attention_heads", default=heads),
            "full_theta": full[0],
            "swa_theta": swa[0],
            "rotary_factors": (full[1], swa[1]),
            "rope_kinds": (full[2], swa[2]),
            "sparse_layers": _sparse_layers(r, n),
            "value_scale": _value_scale(r),
            "n_shared_experts": 0,
            "norm_topk_prob": r.bool("norm_topk_prob", default=True),
            "n_group": r.int("n_group", default=1),
            "topk_group": r.int("topk_group", default=1),
            "routed_scaling_factor": r.float("routed_scaling_factor", default=1.0),
            "scoring_func": str(r.first("scoring_func", default="sigmoid")),
            "topk_method": str(r.first("topk_method", default="noaux_tc")),
            "attention_bias": r.bool("attention_bias", default=False),
            "mtp_layers": r.int("num_nextn_predict_layers", "num_mtp_layers", default=0),
        }

    @property
    def rotary_dim(self) -> int:
        """Rotated dims of each head: transformers' int(head_dim * partial_rotary_factor)."""
        return int(self.head_dim * self.rotary_factors[0])

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return self.sparse_layers

    @property
    def router_scoring(self) -> str:
        return "sigmoid"

    def with_experts(self, n_keep: int) -> dict[str, Any]:
        from packager.families.expert_groups import check_prune

        check_prune(self, n_keep)
        return super().with_experts(n_keep)


def _sliding_layers(r: ConfigReader, n: int) -> tuple[tuple[int, ...], str]:
    if r.raw.get("layer_types") is not None:
        types = list(r.raw["layer_types"])[:n]
        if len(types) != n or any(t not in (SLIDING, FULL) for t in types):
            raise r.error(f"field 'layer_types' must name {n} layers as {FULL} or {SLIDING}; "
                          f"got {list(r.raw['layer_types'])!r}")  # fmt: skip
        return tuple(i for i, t in enumerate(types) if t == SLIDING), "layer_types"
    if r.raw.get("hybrid_layer_pattern") is not None:
        pattern = r.ints("hybrid_layer_pattern")[:n]
        if len(pattern) != n:
            raise r.error(f"field 'hybrid_layer_pattern' must list {n} layers, got {len(pattern)}")
        return tuple(i for i, x in enumerate(pattern) if x == 1), "hybrid_layer_pattern"
    # transformers: full attention for the first layer and every 6th, sliding elsewhere
    return tuple(i for i in range(n) if i != 0 and (i + 1) % 6), "layer_types"


def _sparse_layers(r: ConfigReader, n: int) -> tuple[int, ...]:
    if r.raw.get("mlp_layer_types") is not None:
        types = list(r.raw["mlp_layer_types"])[:n]
        if len(types) != n or any(t not in ("dense", "sparse") for t in types):
            raise r.error(f"field 'mlp_layer_types' must name {n} layers as dense or sparse; "
                          f"got {list(r.raw['mlp_layer_types'])!r}")  # fmt: skip
        return tuple(i for i, t in enumerate(types) if t == "sparse")
    if isinstance(r.raw.get("moe_layer_freq"), list):
        return tuple(i for i, x in enumerate(r.ints("moe_layer_freq")[:n]) if x)
    return tuple(range(1, n))  # transformers: the first layer dense, the rest sparse


def _rope(r: ConfigReader, kind: str) -> tuple[float, float, str]:
    """(theta, partial_rotary_factor, rope_type) of one attention kind."""
    nested = r.section("rope_parameters").get(kind)
    if isinstance(nested, dict):
        p = ConfigReader(nested, r.architecture, f"rope_parameters.{kind}.")
        return (p.float("rope_theta", default=10000.0),
                p.float("partial_rotary_factor", default=0.334),
                str(p.first("rope_type", "type", default="default")))  # fmt: skip
    default = 5_000_000.0 if kind == FULL else 10_000.0
    theta_key = "rope_theta" if kind == FULL else "swa_rope_theta"
    scaling = r.section("rope_scaling")
    return (r.float(theta_key, default=default),
            r.float("partial_rotary_factor", default=0.334),
            str(scaling.get("rope_type", scaling.get("type", "default")) or "default"))


def _window(r: ConfigReader) -> int:
    # transformers counts the query in the window; the released size counts previous tokens.
    if r.raw.get("sliding_window_size") is not None:
        return r.int("sliding_window_size") + 1
    return r.int("sliding_window", default=129)


def _value_scale(r: ConfigReader) -> float:
    if "attention_value_scale" in r.raw and r.raw["attention_value_scale"] is None:
        return 1.0  # transformers: None means no scaling
    return r.float("attention_value_scale", default=0.707)
