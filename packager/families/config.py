"""A checkpoint's config.json read once into a frozen, typed shape.

The one place that knows fields are renamed across families, releases and transformers versions
(`num_experts` / `num_local_experts` / `n_routed_experts` / `moe_num_experts`, `rope_parameters`
/ `rope_scaling`), and that a missing or mistyped field is an unsupported checkpoint, named in one
line. Each family extends `ModelConfig` with its own fields (`fields` adds them); nothing after
this reads the raw dict, except `with_experts`, which writes a pruned copy of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Self

from packager.errors import UnsupportedArchitectureError

# Every name a released checkpoint or transformers gives the routed-expert count.
EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_MISSING = object()


class ConfigReader:
    """Typed access to a raw config.json; every failure is one line naming the field."""

    def __init__(self, raw: Mapping[str, Any], architecture: str = "", prefix: str = "") -> None:
        self.raw, self.prefix = raw, prefix
        archs = raw.get("architectures") or []
        self.architecture = architecture or (
            str(archs[0]) if archs else f"model_type={raw.get('model_type', '?')}"
        )

    def nested(self, key: str) -> ConfigReader:
        """A reader of the object `key` (e.g. rope_parameters); empty when absent."""
        return ConfigReader(self.section(key), self.architecture, f"{self.prefix}{key}.")

    def error(self, why: str) -> UnsupportedArchitectureError:
        return UnsupportedArchitectureError(f"config.json: {why} for {self.architecture}")

    def first(self, *keys: str, default: Any = _MISSING) -> Any:
        """The first of `keys` that is set (not null); `default` when none is, else an error."""
        for key in keys:
            if self.raw.get(key) is not None:
                return self.raw[key]
        if default is not _MISSING:
            return default
        if len(keys) == 1:
            raise self.error(f"missing '{self.prefix}{keys[0]}'")
        raise self.error(f"none of {', '.join(self.prefix + k for k in keys)} is set")

    def int(self, *keys: str, default: Any = _MISSING) -> Any:
        return self._typed(int, "an integer", keys, default)

    def float(self, *keys: str, default: Any = _MISSING) -> Any:
        return self._typed(float, "a number", keys, default)

    def bool(self, key: str, default: bool = False) -> bool:
        value = self.first(key, default=default)
        if not isinstance(value, bool):
            raise self.error(f"field '{self.prefix}{key}' must be true or false, got {value!r}")
        return value

    def ints(self, key: str) -> tuple[int, ...]:
        value = self.first(key, default=())
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
            raise self.error(
                f"field '{self.prefix}{key}' must be a list of integers, got {value!r}"
            )
        return tuple(value)

    def _typed(self, kind: type, what: str, keys: tuple[str, ...], default: Any) -> Any:
        key = next((k for k in keys if self.raw.get(k) is not None), None)
        if key is None:
            return self.first(*keys, default=default)
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"field '{self.prefix}{key}' must be {what}, got {value!r}")
        if kind is int and value != int(value):
            raise self.error(f"field '{self.prefix}{key}' must be an integer, got {value!r}")
        return kind(value)

    def key_of(self, *keys: str) -> str:
        return next((k for k in keys if self.raw.get(k) is not None), keys[0])

    def section(self, *keys: str) -> Mapping[str, Any]:
        """A nested object (e.g. rope_parameters), empty when absent."""
        value = self.first(*keys, default={})
        if not isinstance(value, Mapping):
            raise self.error(
                f"field '{self.prefix}{self.key_of(*keys)}' must be an object, got {value!r}"
            )
        return value


@dataclass(frozen=True, kw_only=True)
class Rope:
    """Rotary position embedding: base frequency and the scaling transformers applies."""

    field_name: str  # where it was read: rope_parameters (transformers 5) or rope_scaling
    theta: float
    kind: str  # "default", "linear", "yarn", ... as the checkpoint names it
    factor: float | None = None
    original_context: int | None = None
    partial_rotary_factor: float = 1.0
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True

    @classmethod
    def read(cls, r: ConfigReader, default_theta: float = 10000.0) -> Rope:
        # transformers 5 writes rope_parameters (theta included); older configs rope_scaling.
        name = "rope_parameters" if r.raw.get("rope_parameters") else "rope_scaling"
        p = r.nested(name)
        kind = p.raw.get("rope_type", p.raw.get("type", "default")) or "default"
        return cls(
            field_name=name,
            theta=p.float("rope_theta", default=r.float("rope_theta", default=default_theta)),
            kind=str(kind),
            factor=p.float("factor", default=None),
            original_context=p.int("original_max_position_embeddings", default=None),
            partial_rotary_factor=p.float("partial_rotary_factor", default=1.0),
            attention_factor=p.float("attention_factor", default=None),
            beta_fast=p.float("beta_fast", default=None),
            beta_slow=p.float("beta_slow", default=None),
            mscale=p.float("mscale", default=None),
            mscale_all_dim=p.float("mscale_all_dim", default=None),
            truncate=p.bool("truncate", default=True),
        )


@dataclass(frozen=True)
class ExpertLayout:
    """How many experts, how many each token uses, and which layers route."""

    n_experts: int
    top_k: int
    n_shared_experts: int
    moe_layers: tuple[int, ...]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """The fields every decoder family has; a family's subclass adds its own."""

    # Names this family's checkpoints give the expert count, in the order they are tried.
    expert_count_keys: ClassVar[tuple[str, ...]] = EXPERT_COUNT_KEYS
    # ... and top-k (experts per token).
    top_k_keys: ClassVar[tuple[str, ...]] = ("num_experts_per_tok",)
    # The rotary base transformers assumes when a config names none.
    default_theta: ClassVar[float] = 10000.0

    architecture: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int | None
    vocab_size: int
    context_length: int
    rms_norm_eps: float
    hidden_act: str
    rope: Rope
    sliding_window: int | None
    use_sliding_window: bool
    layer_types: tuple[str, ...]
    bos_token_id: Any
    eos_token_id: Any  # an id or a list of ids, as the checkpoint has it
    pad_token_id: Any
    n_experts: int
    top_k: int
    moe_intermediate_size: int | None
    n_shared_experts: int
    norm_topk_prob: bool
    n_group: int | None  # expert groups of group-limited routing; None: none
    topk_group: int | None  # groups a token may pick experts from
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def read(cls, raw: Mapping[str, Any]) -> Self:
        return cls(**cls.fields(ConfigReader(raw)))

    @classmethod
    def fields(cls, r: ConfigReader) -> dict[str, Any]:
        """Keyword arguments of the constructor, read from `r`; subclasses add theirs."""
        hidden, heads = r.int("hidden_size"), r.int("num_attention_heads")
        window = r.raw.get("sliding_window")
        return dict(
            architecture=r.architecture,
            n_layers=r.int("num_hidden_layers"),
            hidden_size=hidden,
            n_heads=heads,
            n_kv_heads=r.int("num_key_value_heads", default=heads),
            head_dim=r.int("head_dim", default=hidden // heads if heads else 0),
            intermediate_size=r.int("intermediate_size", default=None),
            vocab_size=r.int("vocab_size"),
            context_length=r.int("max_position_embeddings", default=4096),
            rms_norm_eps=r.float("rms_norm_eps", default=1e-6),
            hidden_act=str(r.first("hidden_act", default="silu")),
            rope=Rope.read(r, cls.default_theta),
            sliding_window=window if isinstance(window, int) and window else None,
            use_sliding_window=bool(r.raw.get("use_sliding_window")),
            layer_types=tuple(r.raw.get("layer_types") or ()),
            bos_token_id=r.raw.get("bos_token_id"),
            eos_token_id=r.raw.get("eos_token_id"),
            pad_token_id=r.raw.get("pad_token_id"),
            n_experts=r.int(*cls.expert_count_keys),
            top_k=r.int(*cls.top_k_keys),
            moe_intermediate_size=r.int("moe_intermediate_size", default=None),
            n_shared_experts=0,
            norm_topk_prob=bool(r.raw.get("norm_topk_prob") or False),
            n_group=r.int("n_group", default=None),
            topk_group=r.int("topk_group", default=None),
            raw=MappingProxyType(dict(r.raw)),
        )

    def refuse(self, why: str) -> UnsupportedArchitectureError:
        """The one-line error for a configuration this family cannot build."""
        return UnsupportedArchitectureError(f"{self.architecture}: {why}")

    def require(self, value: Any, key: str) -> Any:
        """A field the family reads as optional but a build needs."""
        if value is None:
            raise UnsupportedArchitectureError(
                f"config.json: missing '{key}' for {self.architecture}"
            )
        return value

    # ----- the expert layout (what the manifest, planner, pruning and calibration use) ---------
    @property
    def moe_layers(self) -> tuple[int, ...]:
        return tuple(range(self.n_layers))

    @property
    def packed_weights(self) -> str | None:
        """The block format the checkpoint stores its experts in (e.g. "MXFP4"), when float
        training cannot write them back; None: plain float tensors."""
        return None

    @property
    def router_scoring(self) -> str:
        """How the router turns logits into scores: "softmax" or "sigmoid"."""
        return "softmax"

    @property
    def experts(self) -> ExpertLayout:
        return ExpertLayout(self.n_experts, self.top_k, self.n_shared_experts, self.moe_layers)

    def with_experts(self, n_keep: int) -> dict[str, Any]:
        """config.json for a copy keeping `n_keep` experts per layer (pruning): every name the
        expert count goes by is rewritten, and top-k never exceeds it."""
        new = dict(self.raw)
        for key in EXPERT_COUNT_KEYS:
            if self.raw.get(key) is not None:
                new[key] = n_keep
        if self.top_k > n_keep:
            named = [k for k in self.top_k_keys if self.raw.get(k) is not None]
            for key in named or self.top_k_keys[:1]:
                new[key] = n_keep
        groups = self.n_group or 1
        if groups > 1 and (self.topk_group or 0) > groups:
            new["topk_group"] = groups
        return new
