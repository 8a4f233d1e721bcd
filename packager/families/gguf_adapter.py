"""A family's GGUF mapping: the hooks each family implements, and the shared tensor planning.

An adapter has three hooks, as in llama.cpp's converter: hyper-parameters (`write_hparams`),
tensor renaming/stacking (`expand`, `transform`) and per-tensor precision (`keep_f32`). It reads
the family's typed config, never config.json; nothing outside `packager/families/` branches on
the architecture.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, NoReturn

import gguf
import numpy as np

from packager.errors import UnsupportedArchitectureError
from packager.families.config import ExpertLayout, ModelConfig
from packager.families.expert_groups import refuse_field

Reader = Callable[[str], np.ndarray]

# Per-expert checkpoints: model.layers.3.mlp.experts.7.gate_proj.weight (or Mixtral's w1/w2/w3).
_EXPERT = re.compile(r"^(model\.layers\.(\d+)\.[\w.]*?experts)\.(\d+)\.(\w+)\.weight$")
# Fused checkpoints (transformers v5 style): model.layers.3.mlp.experts.gate_up_proj; never a
# shared expert's projection (`mlp.shared_experts.down_proj.weight` is one dense matrix).
_FUSED = re.compile(
    r"^(model\.layers\.(\d+)\.[\w.]*?(?<=\.)experts)\.(gate_up_proj|down_proj)(\.weight)?$"
)
_SKIP = re.compile(r"rotary_emb\.inv_freq$")


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor: its GGUF name, its numpy-order shape, and how to build it lazily."""

    name: str
    shape: tuple[int, ...]
    build: Callable[[], np.ndarray]
    is_expert: bool = False
    # A type the tensor keeps whatever the build's precision: an integer table, or bytes the
    # checkpoint already holds in a GGML block format (gpt-oss's MXFP4 experts), which build()
    # returns as uint8 and which are written as they are. None: the build's.
    storage: gguf.GGMLQuantizationType | None = None


# Rope scalings llama.cpp's graphs compute as transformers does.
ROPE_KINDS = ("default", "linear", "yarn")


class GGUFAdapter:
    """Base adapter: generic renaming through gguf's TensorNameMap plus expert stacking."""

    gguf_arch: ClassVar[gguf.MODEL_ARCH]
    # llama.cpp's name for an architecture gguf's MODEL_ARCH does not know yet (else derived).
    gguf_arch_name: ClassVar[str] = ""
    # llama.cpp's graph names the router's raw logits ffn_moe_probs (its softmax-over-top-k
    # gating, gpt-oss): routing observers take their softmax.
    probs_are_logits: ClassVar[bool] = False
    # Expert projection names in the checkpoint -> canonical gate/up/down.
    expert_proj: ClassVar[dict[str, str]] = {
        "gate_proj": "gate_proj",
        "up_proj": "up_proj",
        "down_proj": "down_proj",
    }

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self.n_layers = config.n_layers
        self._check_rope()
        self.validate()

    @property
    def architecture(self) -> str:
        return self.config.architecture

    def _refuse(self, key: str, got: object, expected: str) -> NoReturn:
        """Refuse a config field whose value llama.cpp's graph would compute differently."""
        raise refuse_field(self.config, key, got, expected)

    @classmethod
    def arch_name(cls) -> str:
        """The GGUF's `general.architecture`: what llama.cpp's LLM_ARCH_NAMES calls it."""
        return cls.gguf_arch_name or gguf.MODEL_ARCH_NAMES[cls.gguf_arch]

    @cached_property
    def _names(self) -> gguf.TensorNameMap:
        return gguf.get_tensor_name_map(self.gguf_arch, self.n_layers)

    # ----- hook 1: hyper-parameters -------------------------------------------------------
    def validate(self) -> None:
        """Refuse configurations llama.cpp's graph for this family cannot reproduce."""

    def moe(self) -> ExpertLayout:
        return self.config.experts

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        c, moe = self.config, self.moe()
        w.add_context_length(c.context_length)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(self.n_layers)
        w.add_feed_forward_length(self.feed_forward_length())
        w.add_head_count(c.n_heads)
        w.add_head_count_kv(self.n_head_kv())
        w.add_rope_freq_base(c.rope.theta)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_expert_count(moe.n_experts)
        w.add_expert_used_count(moe.top_k)
        self.write_rope_scaling(w)

    def feed_forward_length(self) -> int:
        """The dense layers' FFN width (`feed_forward_length`)."""
        c = self.config
        return c.require(c.intermediate_size, "intermediate_size")

    def n_head_kv(self) -> int:
        return self.config.n_kv_heads

    def kv_dims(self) -> tuple[int, int, int]:
        """(KV heads, key length, value length) per token and layer, as llama.cpp caches them."""
        head = self.config.head_dim
        return self.n_head_kv(), head, head

    def kv_layers(self) -> int | None:
        """Layers that keep a KV cache; None: every layer (hybrids count attention only)."""
        return None

    def recurrent_state_values(self) -> int:
        """f32 values of recurrent state one sequence keeps (hybrid models); 0: none."""
        return 0

    def _check_rope(self) -> None:
        rope = self.config.rope
        if rope.kind not in ROPE_KINDS:
            raise UnsupportedArchitectureError(
                f"config.json: {rope.field_name}.rope_type '{rope.kind}' is not supported for "
                f"{self.architecture} (supported: {', '.join(ROPE_KINDS)})"
            )
        if rope.kind != "default":
            self.config.require(rope.factor, f"{rope.field_name}.factor")
        if rope.kind == "yarn":
            self.config.require(
                rope.original_context, f"{rope.field_name}.original_max_position_embeddings"
            )

    def write_rope_scaling(self, w: gguf.GGUFWriter) -> None:
        rope = self.config.rope
        if rope.kind == "linear":
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(float(rope.factor or 1.0))
        elif rope.kind == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(rope.factor or 1.0))
            w.add_rope_scaling_orig_ctx_len(int(rope.original_context or 0))

    # ----- hook 2: tensor renaming / stacking ---------------------------------------------
    def expand(self, hf_name: str, shape: tuple[int, ...], read: Reader) -> list[PlannedTensor]:
        """Map one non-expert checkpoint tensor to its GGUF tensor(s)."""
        new = self.gguf_name(hf_name)
        return [PlannedTensor(new, shape, lambda: self.transform(new, read(hf_name)))]

    def transform(self, gguf_name: str, data: np.ndarray) -> np.ndarray:
        """Rearrange data where llama.cpp's layout differs from the checkpoint's."""
        return data

    # ----- hook 3: per-tensor precision ---------------------------------------------------
    def keep_f32(self, gguf_name: str) -> bool:
        """Tensors llama.cpp needs in F32 whatever the build type (routers, norms)."""
        return gguf_name.endswith(
            ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "_norm.weight")
        )

    def fixed_types(self) -> dict[str, str]:
        """Tensors a quantized build leaves in the type the checkpoint holds them in (regex ->
        ggml type name): none, unless the family reads tensors already in a GGML format."""
        return {}

    # ----- shared machinery ---------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str:
        new = self._names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UnsupportedArchitectureError(
                f"{self.architecture}: checkpoint tensor '{hf_name}' has no llama.cpp counterpart"
            )
        return new

    def gguf_names(self, hf_name: str) -> tuple[str, ...]:
        """Every GGUF tensor a checkpoint weight becomes, each taking its input columns as they
        are (the importance matrix records the same statistics for each); one for most."""
        return (self.gguf_name(hf_name),)

    def input_order(self, gguf_name: str) -> np.ndarray | None:
        """Where a GGUF tensor's input columns come from in the checkpoint's (a family that
        reorders them says so, and the importance matrix follows); None: the same order."""
        return None

    def plan(self, shapes: dict[str, tuple[int, ...]], read: Reader) -> list[PlannedTensor]:
        """Every output tensor in a stable order; experts stacked per layer and projection."""
        out: list[PlannedTensor] = []
        experts: dict[tuple[str, int, str], dict[int, str]] = defaultdict(dict)
        for name in sorted(shapes, key=natural_key):
            if _SKIP.search(name):
                continue
            if m := _EXPERT.match(name):
                prefix, layer, idx, proj = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
                if proj not in self.expert_proj:
                    raise UnsupportedArchitectureError(
                        f"{name}: unknown expert projection '{proj}'"
                    )
                experts[(prefix, layer, self.expert_proj[proj])][idx] = name
            elif m := _FUSED.match(name):
                out.extend(self._fused(m.group(1), m.group(3), name, shapes[name], read))
            else:
                out.extend(self.expand(name, shapes[name], read))
        out.extend(self._stacked(experts, shapes, read))
        return sorted(out, key=lambda t: natural_key(t.name))

    def _stacked(self, groups, shapes, read) -> list[PlannedTensor]:
        n = self.moe().n_experts
        planned = []
        for (prefix, layer, proj), members in groups.items():
            if sorted(members) != list(range(n)):
                raise UnsupportedArchitectureError(
                    f"layer {layer} {proj}: found experts {sorted(members)[:8]}..., "
                    f"expected 0..{n - 1}"
                )
            names = [members[i] for i in range(n)]
            shape = (n, *shapes[names[0]])
            new = self.gguf_name(f"{prefix}.{proj}.weight")
            planned.append(PlannedTensor(new, shape, _stack(names, read), is_expert=True))
        return planned

    def _fused(self, prefix, kind, name, shape, read) -> list[PlannedTensor]:
        if kind == "down_proj":
            new = self.gguf_name(f"{prefix}.down_proj.weight")
            return [PlannedTensor(new, tuple(shape), lambda: read(name), is_expert=True)]
        e, two_ff, d = shape
        ff = two_ff // 2
        gate = self.gguf_name(f"{prefix}.gate_proj.weight")
        up = self.gguf_name(f"{prefix}.up_proj.weight")
        return [
            PlannedTensor(gate, (e, ff, d), lambda: read(name)[:, :ff, :], is_expert=True),
            PlannedTensor(up, (e, ff, d), lambda: read(name)[:, ff:, :], is_expert=True),
        ]


def _stack(names: list[str], read: Reader) -> Callable[[], np.ndarray]:
    return lambda: np.stack([read(n) for n in names], axis=0)


def natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
