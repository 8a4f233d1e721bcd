"""Recurrent state of hybrid models (gated DeltaNet, short convolutions, Mamba2 beside attention):
what it costs, and what may be rolled back.

A recurrent layer keeps a fixed-size state per sequence instead of a per-token KV cache, so
"forget the last r tokens" is not a cache truncation: llama.cpp can do it only for the
architectures it keeps per-token snapshots for (`llm_arch_supports_rs_rollback`; the context is
created with `n_rs_seq` snapshots), only back into the last decoded batch, and only once per batch.
So:
- the budget counts the state, f32 in llama.cpp, times (1 + snapshots) (`RecurrentShape`);
- speculative decoding runs only where the target can roll back a verify batch and the drafter
  never needs a rollback across separate decodes (n-gram lookup, or a draft model without
  recurrent layers); elsewhere it is switched off at load with the reason (`speculation_refusal`);
- the further choices of an `n > 1` request recompute the prompt instead of truncating back to it
  (runtime/generation/decoding.py): prefill is deterministic, so each choice sees the same
  prompt logits.
The ONNX backend holds the state itself (`past_conv.i` / `past_ssm.i` graph inputs): it rolls back
by restoring the state it kept from before its last batch and recomputing the kept tokens, for
any architecture, with one copy of the state beside the live one (`RecurrentShape.replay`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contract.errors import BundleError
from contract.gguf_layout import open_reader

# llama.cpp's llm_arch_supports_rs_rollback (src/llama-arch.cpp), for the architectures that
# have recurrent layers; the context reports what it granted (llama_n_rs_seq) and the backend
# trusts that, so this table only decides up front whether to plan for speculation.
ROLLBACK_ARCHS = frozenset({
    "qwen35", "qwen35moe", "lfm2", "lfm2moe", "nemotron_h", "nemotron_h_moe", "kimi_k3",
    "glm5_next", "qwen4exp", "bailingmoe3", "deepseek4",
})
STATE_BYTES_PER_VALUE = 4  # llama.cpp keeps recurrent state in f32 (type_r, type_s)

Get = Callable[..., Any]


@dataclass(frozen=True)
class RecurrentShape:
    """The recurrent layers of a model file and the state one sequence keeps in each."""

    arch: str
    layers: tuple[int, ...]
    conv_values: int  # llama.cpp's n_embd_r: the convolution's last (kernel - 1) inputs
    state_values: int  # n_embd_s: the SSM / delta-rule matrix (0 for short convolutions)
    # state not alike in every listed layer, counted once (DeepSeek-V4's compressor windows)
    other_values: int = 0
    # The engine rolls back by restoring the state from before its last batch and recomputing
    # what is kept (the ONNX backend): one copy whatever the draft length.
    replay: bool = False

    @property
    def rollback(self) -> bool:
        """Whether the engine can take this state back past rejected drafts: llama.cpp where it
        keeps per-token snapshots of the architecture's state, the ONNX backend always."""
        return self.replay or self.arch in ROLLBACK_ARCHS

    def state_bytes(self, snapshots: int = 0, n_seq: int = 1) -> int:
        """The state of `n_seq` sequences, each with `snapshots` rollback copies beside it
        (at most one when the engine replays)."""
        values = len(self.layers) * (self.conv_values + self.state_values) + self.other_values
        copies = 1 + (min(snapshots, 1) if self.replay else snapshots)
        return values * STATE_BYTES_PER_VALUE * n_seq * copies


def recurrent_layers(get: Get, n_layers: int) -> tuple[int, ...]:
    """Which layers are recurrent: the explicit pattern, else the layers without KV heads."""
    arch = get("general.architecture")
    pattern = get(f"{arch}.attention.recurrent_layers")
    if isinstance(pattern, list):
        return tuple(i for i, r in enumerate(pattern[:n_layers]) if r)
    kv = get(f"{arch}.attention.head_count_kv")
    if isinstance(kv, list):
        return tuple(i for i, h in enumerate(kv[:n_layers]) if int(h) == 0)
    return ()


def shape_from_header(get: Get) -> RecurrentShape | None:
    """The recurrent state a GGUF header describes (llama_hparams::n_embd_r / n_embd_s); None
    for a model with attention layers only."""
    arch = str(get("general.architecture"))
    n_layers = int(get(f"{arch}.block_count"))
    if arch == "deepseek4":
        return _compressor_shape(get, arch, n_layers)
    layers = recurrent_layers(get, n_layers)
    if not layers:
        return None
    l_cache = get(f"{arch}.shortconv.l_cache")
    d_conv = int(get(f"{arch}.ssm.conv_kernel", 0))
    d_inner = int(get(f"{arch}.ssm.inner_size", 0))
    d_state = int(get(f"{arch}.ssm.state_size", 0))
    n_group = int(get(f"{arch}.ssm.group_count", 0))
    if l_cache is not None:
        conv = int(get(f"{arch}.embedding_length")) * (int(l_cache) - 1)
    else:
        conv = max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state)
    return RecurrentShape(arch, layers, conv, d_state * d_inner)


def _compressor_shape(get: Get, arch: str, n_layers: int) -> RecurrentShape:
    """DeepSeek-V4: beside its KV caches, each compressed layer keeps the tokens of its open
    window (f32 keys and gate scores; llama_kv_cache_dsv4's llama_dsv4_comp_state), which
    llama.cpp counts as recurrent state and snapshots for rollback: ratio-4 layers keep 8 rows
    of twice the head for the attention and for the indexer, ratio-128 layers 128 rows."""
    ratios = list(get(f"{arch}.attention.compress_ratios") or [])[:n_layers]
    head = int(get(f"{arch}.attention.key_length"))
    index = int(get(f"{arch}.attention.indexer.key_length", 0))
    csa = sum(1 for r in ratios if r == 4)
    hca = sum(1 for r in ratios if r == 128)
    values = 2 * (csa * 8 * 2 * (head + index) + hca * 128 * head)  # kv and score tensors
    return RecurrentShape(arch, tuple(i for i, r in enumerate(ratios) if r), 0, 0, values)


def recurrent_shape(model_path: Path) -> RecurrentShape | None:
    """`shape_from_header` of a GGUF file, `shape_from_states` of an ONNX graph."""
    if model_path.suffix == ".onnx":
        from contract.onnx_layout import onnx_architecture, onnx_states

        return shape_from_states(onnx_architecture(model_path), onnx_states(model_path))
    reader = open_reader(model_path)

    def get(key: str, default: Any = None) -> Any:
        field = reader.fields.get(key)
        return field.contents() if field is not None else default

    try:
        return shape_from_header(get)
    except (TypeError, ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{model_path}: recurrent-state metadata unreadable ({e})") from None


def shape_from_states(arch: str, states: dict[str, tuple[int, ...]]) -> RecurrentShape | None:
    """The recurrent state an ONNX graph carries (`past_conv.i` / `past_ssm.i` inputs, f32);
    None when it has none. Per layer: its conv values, its matrix-state values; values not
    alike in every layer are counted in `other_values`."""
    per_layer: dict[int, dict[str, int]] = {}
    for name, dims in states.items():
        kind, layer = name.removeprefix("past_").split(".")
        n = 1
        for d in dims:
            n *= d
        per_layer.setdefault(int(layer), {})[kind] = n
    if not per_layer:
        return None
    layers = tuple(sorted(per_layer))
    first = per_layer[layers[0]]
    conv, ssm = first.get("conv", 0), first.get("ssm", 0)
    total = sum(sum(v.values()) for v in per_layer.values())
    return RecurrentShape(arch, layers, conv, ssm, total - len(layers) * (conv + ssm),
                          replay=True)


def speculation_refusal(target: RecurrentShape | None, draft: RecurrentShape | None,
                        draft_is_model: bool) -> str | None:
    """Why speculative decoding cannot run on this pair without risking a wrong token; None
    when it can (no recurrent layers, or rollback the drafter never outruns)."""
    if target is not None and not target.rollback:
        return (f"llama.cpp cannot roll back the recurrent state of '{target.arch}' past a "
                "rejected draft, so drafting is off (tokens are the target's own)")
    if draft_is_model and draft is not None:
        return (f"the draft model '{draft.arch}' has recurrent layers, which cannot roll back "
                "drafts decoded one token at a time, so drafting is off")
    return None
