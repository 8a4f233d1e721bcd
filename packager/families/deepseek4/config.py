"""DeepSeek-V4 (V4-Flash, V4-Pro) config: compressed attention per layer, hash-routed layers,
hyper-connections, the grouped output projection and the lightning indexer.

Released checkpoints and transformers name several fields differently; both are read:

| what | released config.json | transformers (`save_pretrained`) |
| --- | --- | --- |
| compression per layer | `compress_ratios` (0 / 4 / 128) | `layer_types` + `compress_rates` |
| hash-routed layers | `num_hash_layers` (the first N) | `mlp_layer_types` (`hash_moe` / `moe`) |
| rotary width | `qk_rope_head_dim` | `partial_rotary_factor` x `head_dim` |
| rotary scaling | `rope_scaling` + `compress_rope_theta` | `rope_parameters.main` / `.compress` |

Defaults are transformers' own (`DeepseekV4Config.__post_init__`) for configs that leave a field
out: V4-Pro's attention schedule, three hash layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from packager.families.config import ConfigReader, ModelConfig, Rope

SLIDING, CSA, HCA = (
    "sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
)  # fmt: skip
_DEFAULT_RATES = {CSA: 4, HCA: 128}
_DEFAULT_HASH_LAYERS = 3
MTP_KEYS = ("num_nextn_predict_layers", "num_mtp_layers")


@dataclass(frozen=True, kw_only=True)
class DeepseekV4Config(ModelConfig):
    expert_count_keys: ClassVar[tuple[str, ...]] = (
        "n_routed_experts", "num_local_experts", "num_experts",
    )  # fmt: skip

    q_lora_rank: int
    rope_dim: int  # rotated tail of each head (qk_rope_head_dim)
    compress_rope: Rope  # rotary of compressed layers (their attention, compressor, indexer)
    compress_ratios: tuple[int, ...]  # per layer: 0 sliding only, else tokens per entry
    compress_key: str  # which field the ratios came from (for messages)
    hash_layers: tuple[int, ...]  # layers routed by the token-id table
    hash_key: str
    scoring_func: str
    routed_scaling_factor: float
    swiglu_limit: float
    o_groups: int
    o_lora_rank: int
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    hc_mult: int
    hc_sinkhorn_iters: int
    hc_eps: float
    mtp_layers: int
    attention_bias: bool
    mlp_bias: bool

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        base = super().fields(r)
        n, head_dim = base["n_layers"], base["head_dim"]
        ratios, compress_key = _compress_ratios(r, n)
        hashed, hash_key = _hash_layers(r, n)
        return {
            **base,
            "n_kv_heads": r.int("num_key_value_heads", default=1),
            "head_dim": r.int("head_dim", default=512),
            "n_shared_experts": r.int("n_shared_experts", default=1),
            "norm_topk_prob": r.bool("norm_topk_prob", default=True),
            "sliding_window": r.int("sliding_window", default=128),
            "rope": _main_rope(r),
            "compress_rope": _compress_rope(r),
            "q_lora_rank": r.int("q_lora_rank", default=1024),
            "rope_dim": _rope_dim(r, head_dim),
            "compress_ratios": ratios,
            "compress_key": compress_key,
            "hash_layers": hashed,
            "hash_key": hash_key,
            "scoring_func": str(r.first("scoring_func", default="sqrtsoftplus")),
            "routed_scaling_factor": r.float("routed_scaling_factor", default=1.5),
            "swiglu_limit": r.float("swiglu_limit", default=10.0),
            "o_groups": r.int("o_groups", default=8),
            "o_lora_rank": r.int("o_lora_rank", default=1024),
            "index_n_heads": r.int("index_n_heads", default=64),
            "index_head_dim": r.int("index_head_dim", default=128),
            "index_topk": r.int("index_topk", default=512),
            "hc_mult": r.int("hc_mult", default=4),
            "hc_sinkhorn_iters": r.int("hc_sinkhorn_iters", default=20),
            "hc_eps": r.float("hc_eps", default=1e-6),
            "mtp_layers": r.int(*MTP_KEYS, default=0),
            "attention_bias": r.bool("attention_bias", default=False),
            "mlp_bias": r.bool("mlp_bias", default=False),
        }

    @property
    def router_scoring(self) -> str:
        return self.scoring_func

    @property
    def mtp_key(self) -> str:
        return next((k for k in MTP_KEYS if self.raw.get(k) is not None), MTP_KEYS[0])

    def with_experts(self, n_keep: int) -> dict[str, Any]:
        if self.hash_layers:
            # The token-id table names experts by their old ids; renumbering it is possible but
            # a pruned expert may be one a token is hard-wired to.
            raise self.refuse(
                f"pruning a model with hash-routed layers ({self.hash_key}: layers "
                f"{list(self.hash_layers)}): their token-id table routes every token to fixed "
                "experts, so no expert can be removed"
            )
        return super().with_experts(n_keep)


def _rope_dim(r: ConfigReader, head_dim: int) -> int:
    if r.raw.get("qk_rope_head_dim") is not None:
        return r.int("qk_rope_head_dim")
    return int(head_dim * r.float("partial_rotary_factor", default=64 / 512))


def _main_rope(r: ConfigReader) -> Rope:
    """Sliding-only layers: plain rotary at `rope_theta`, never scaled (transformers' "main")."""
    nested = r.section("rope_parameters").get("main")
    if isinstance(nested, dict):
        return Rope.read(ConfigReader({"rope_parameters": nested}, r.architecture))
    return Rope(field_name="rope_theta", theta=r.float("rope_theta", default=10000.0),
                kind="default")  # fmt: skip


def _compress_rope(r: ConfigReader) -> Rope:
    """Compressed layers: `compress_rope_theta` with the checkpoint's scaling (YaRN)."""
    nested = r.section("rope_parameters").get("compress")
    if isinstance(nested, dict):
        return Rope.read(ConfigReader({"rope_parameters": nested}, r.architecture))
    scaling = dict(r.section("rope_scaling", "rope_parameters"))
    scaling["rope_theta"] = r.float("compress_rope_theta", default=160000.0)
    if scaling.get("type") == "yarn" or scaling.get("rope_type") == "yarn":
        scaling.setdefault("attention_factor", 1.0)  # transformers forces it: no YaRN mscale
    return Rope.read(ConfigReader({"rope_parameters": scaling}, r.architecture))


def _compress_ratios(r: ConfigReader, n: int) -> tuple[tuple[int, ...], str]:
    if r.raw.get("layer_types") is not None:
        rates = {**_DEFAULT_RATES, **r.section("compress_rates")}
        types = tuple(r.raw["layer_types"])[:n]
        bad = [t for t in types if t not in (SLIDING, CSA, HCA)]
        if bad or len(types) != n:
            raise r.error(
                f"field 'layer_types' must name {n} layers among {SLIDING}, {CSA}, {HCA}; "
                f"got {list(r.raw['layer_types'])!r}"
            )
        return tuple(0 if t == SLIDING else int(rates[t]) for t in types), "compress_rates"
    if r.raw.get("compress_ratios") is not None:
        ratios = r.ints("compress_ratios")[:n]
        if len(ratios) != n:
            raise r.error(f"field 'compress_ratios' must list {n} layers, got {len(ratios)}")
        return ratios, "compress_ratios"
    # transformers' default: V4-Pro's two heavily compressed layers, then CSA/HCA alternating
    rest = [_DEFAULT_RATES[CSA if i % 2 else HCA] for i in range(max(n - 2, 0))]
    return tuple(([_DEFAULT_RATES[HCA]] * min(n, 2) + rest)[:n]), "layer_types"


def _hash_layers(r: ConfigReader, n: int) -> tuple[tuple[int, ...], str]:
    if r.raw.get("mlp_layer_types") is not None:
        types = tuple(r.raw["mlp_layer_types"])[:n]
        if len(types) != n or any(t not in ("hash_moe", "moe") for t in types):
            raise r.error(
                f"field 'mlp_layer_types' must name {n} layers as hash_moe or moe; "
                f"got {list(r.raw['mlp_layer_types'])!r}"
            )
        return tuple(i for i, t in enumerate(types) if t == "hash_moe"), "mlp_layer_types"
    count = r.int("num_hash_layers", default=_DEFAULT_HASH_LAYERS)
    return tuple(range(min(count, n))), "num_hash_layers"
