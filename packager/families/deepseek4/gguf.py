"""DeepSeek-V4 as llama.cpp's `deepseek4` (src/models/deepseek4.cpp).

gguf 0.19 (PyPI) has no DEEPSEEK4 architecture, its keys or its tensors, so this adapter carries
them itself, copied from llama.cpp's own tables: the key strings from `src/llama-arch.cpp`
(LLM_KV_*) and gguf-py's `constants.py` (Keys.*), the tensor names from gguf-py's
`TENSOR_NAMES` for MODEL_ARCH.DEEPSEEK4, and what each one holds from `conversion/deepseek.py`
(DeepseekV4Model) and `llama_model_deepseek4::load_arch_hparams/tensors`.

What llama.cpp's graph fixes, and so is refused here when a checkpoint differs (one line naming
the field): four hyper-connection streams; compression ratios 0, 4 (compressed sparse attention
with the lightning indexer) and 128 (heavily compressed); sqrt-softplus router scores; hash-routed
layers first; one KV head whose key is its value; every head as wide as the value.
"""

from __future__ import annotations

import re
from typing import ClassVar

import gguf
import numpy as np

from packager.errors import UnsupportedArchitectureError
from packager.families.deepseek4.config import DeepseekV4Config
from packager.families.gguf_adapter import GGUFAdapter, PlannedTensor, Reader

ARCH = "deepseek4"  # llama.cpp's LLM_ARCH_DEEPSEEK4
SQRT_SOFTPLUS = 4  # LLAMA_EXPERT_GATING_FUNC_TYPE_SQRT_SOFTPLUS (gguf-py: SQRTSOFTPLUS)
HC_MULT = 4  # build_hc_pre: GGML_ASSERT(hc == 4)
RATIOS = (0, 4, 128)  # load_arch_tensors: "only supports compression ratios 0, 4, and 128"

# Keys llama.cpp reads for deepseek4 that gguf 0.19's GGUFWriter has no helper for.
KEY = {
    "hash_layer_count": "deepseek4.hash_layer_count",
    "embedding_length_out": "deepseek4.embedding_length_out",
    "swiglu_clamp_exp": "deepseek4.swiglu_clamp_exp",
    "swiglu_clamp_shexp": "deepseek4.swiglu_clamp_shexp",
    "output_group_count": "deepseek4.attention.output_group_count",
    "output_lora_rank": "deepseek4.attention.output_lora_rank",
    "compress_ratios": "deepseek4.attention.compress_ratios",
    "compress_rope_freq_base": "deepseek4.attention.compress_rope_freq_base",
    "indexer_head_count": "deepseek4.attention.indexer.head_count",
    "indexer_key_length": "deepseek4.attention.indexer.key_length",
    "indexer_top_k": "deepseek4.attention.indexer.top_k",
    "hc_count": "deepseek4.hyper_connection.count",
    "hc_sinkhorn_iterations": "deepseek4.hyper_connection.sinkhorn_iterations",
    "hc_epsilon": "deepseek4.hyper_connection.epsilon",
}

# Checkpoint name (after `_canonical`) -> GGUF name. Released checkpoints and transformers'
# save_pretrained use the left-hand names (`attn.`, `ffn.`); a loaded transformers model's modules
# (imatrix hooks) are folded into them first.
_ROOT = {
    "embed.weight": "token_embd.weight",
    "head.weight": "output.weight",
    "norm.weight": "output_norm.weight",
    "hc_head_fn": "output_hc_fn.weight",
    "hc_head_base": "output_hc_base.weight",
    "hc_head_scale": "output_hc_scale.weight",
}
_LAYER = {
    "attn_norm.weight": "attn_norm.weight",
    "ffn_norm.weight": "ffn_norm.weight",
    "hc_attn_fn": "hc_attn_fn.weight",
    "hc_attn_base": "hc_attn_base.weight",
    "hc_attn_scale": "hc_attn_scale.weight",
    "hc_ffn_fn": "hc_ffn_fn.weight",
    "hc_ffn_base": "hc_ffn_base.weight",
    "hc_ffn_scale": "hc_ffn_scale.weight",
    "attn.attn_sink": "attn_sinks.weight",
    "attn.wq_a.weight": "attn_q_a.weight",
    "attn.q_norm.weight": "attn_q_a_norm.weight",
    "attn.wq_b.weight": "attn_q_b.weight",
    "attn.wkv.weight": "attn_kv.weight",
    "attn.kv_norm.weight": "attn_kv_a_norm.weight",
    "attn.wo_a.weight": "attn_output_a.weight",
    "attn.wo_b.weight": "attn_output_b.weight",
    "attn.compressor.wkv.weight": "attn_compressor_kv.weight",
    "attn.compressor.wgate.weight": "attn_compressor_gate.weight",
    "attn.compressor.ape": "attn_compressor_ape.weight",
    "attn.compressor.kv_norm.weight": "attn_compressor_norm.weight",
    "attn.indexer.wq_b.weight": "indexer.attn_q_b.weight",
    "attn.indexer.weights_proj.weight": "indexer.proj.weight",
    "attn.indexer.compressor.wkv.weight": "indexer_compressor_kv.weight",
    "attn.indexer.compressor.wgate.weight": "indexer_compressor_gate.weight",
    "attn.indexer.compressor.ape": "indexer_compressor_ape.weight",
    "attn.indexer.compressor.kv_norm.weight": "indexer_compressor_norm.weight",
    "ffn.gate.weight": "ffn_gate_inp.weight",
    "ffn.gate.bias": "exp_probs_b.bias",
    "ffn.gate.tid2eid": "ffn_gate_tid2eid.weight",
    "ffn.shared_experts.w1.weight": "ffn_gate_shexp.weight",
    "ffn.shared_experts.w2.weight": "ffn_down_shexp.weight",
    "ffn.shared_experts.w3.weight": "ffn_up_shexp.weight",
    "ffn.experts.w1.weight": "ffn_gate_exps.weight",
    "ffn.experts.w2.weight": "ffn_down_exps.weight",
    "ffn.experts.w3.weight": "ffn_up_exps.weight",
}
# transformers' module names -> the names above (its conversion_mapping for deepseek_v4, run
# backwards), applied in order; `.norm.` is the released name of every kv_norm.
_FOLD = (
    (r"^lm_head\.", "head."), (r"^embed_tokens\.", "embed."), (r"^hc_head\.hc_", "hc_head_"),
    (r"\.self_attn\.", ".attn."), (r"\.mlp\.", ".ffn."),
    (r"\.compressor\.indexer\.scorer\.", ".indexer."), (r"\.compressor\.indexer\.", ".indexer."),
    (r"\.indexer\.q_b_proj\.", ".indexer.wq_b."),
    (r"\.indexer\.(kv_proj|gate_proj|kv_norm|position_bias)", r".indexer.compressor.\1"),
    (r"\.input_layernorm\.", ".attn_norm."), (r"\.post_attention_layernorm\.", ".ffn_norm."),
    (r"\.attn_hc\.", ".hc_attn_"), (r"\.ffn_hc\.", ".hc_ffn_"), (r"\.sinks$", ".attn_sink"),
    (r"\.(attn|compressor)\.norm\.", r".\1.kv_norm."), (r"\.position_bias$", ".ape"),
    (r"\.q_a_proj\.", ".wq_a."), (r"\.q_b_proj\.", ".wq_b."), (r"\.q_a_norm\.", ".q_norm."),
    (r"\.kv_proj\.", ".wkv."), (r"\.gate_proj\.", ".wgate."), (r"\.o_a_proj\.", ".wo_a."),
    (r"\.o_b_proj\.", ".wo_b."), (r"\.e_score_correction_bias$", ".bias"),
    (r"shared_experts\.wgate\.", "shared_experts.w1."), (r"shared_experts\.up_proj\.",
                                                          "shared_experts.w3."),
    (r"shared_experts\.down_proj\.", "shared_experts.w2."),
    (r"experts\.wgate\.", "experts.w1."), (r"experts\.up_proj\.", "experts.w3."),
    (r"experts\.down_proj\.", "experts.w2."),
)  # fmt: skip
_LAYER_NAME = re.compile(r"^layers\.(\d+)\.(.+)$")
_EXPERT = re.compile(r"^(layers\.\d+\.ffn\.experts)\.(\d+)\.(w[123])\.weight$")
_QUANTIZED = re.compile(r"\.(scale|weight_scale_inv)$")


def canonical(name: str) -> str:
    """A checkpoint or module name in the released naming, without the `model.` prefix."""
    name = name.removeprefix("model.")
    for pattern, repl in _FOLD:
        name = re.sub(pattern, repl, name)
    return name


class DeepseekV4GGUF(GGUFAdapter):
    config: DeepseekV4Config
    gguf_arch_name: ClassVar[str] = ARCH
    expert_proj: ClassVar[dict[str, str]] = {"w1": "w1", "w3": "w3", "w2": "w2"}

    def validate(self) -> None:
        c = self.config
        if c.hc_mult != HC_MULT:
            self._refuse("hc_mult", c.hc_mult, f"{HC_MULT} (llama.cpp's hyper-connections)")
        if c.scoring_func != "sqrtsoftplus":
            self._refuse("scoring_func", c.scoring_func, "sqrtsoftplus (llama.cpp's deepseek4)")
        if c.n_kv_heads != 1:
            self._refuse("num_key_value_heads", c.n_kv_heads, "1 (the key is the value)")
        if c.n_heads % c.o_groups:
            self._refuse("o_groups", c.o_groups, f"a divisor of {c.n_heads} heads")
        if not 0 < c.rope_dim <= min(c.head_dim, c.index_head_dim) or c.rope_dim % 2:
            self._refuse("qk_rope_head_dim", c.rope_dim,
                         "even, at most head_dim and index_head_dim")  # fmt: skip
        if c.index_head_dim % 64:
            self._refuse("index_head_dim", c.index_head_dim,
                         "a multiple of 64: llama.cpp rotates indexer keys by a 64-wide "
                         "Hadamard matrix")  # fmt: skip
        bad = sorted({r for r in c.compress_ratios if r not in RATIOS})
        if bad:
            self._refuse(c.compress_key, bad[0], "ratios 0, 4 or 128 (what llama.cpp builds)")
        if c.hash_layers != tuple(range(len(c.hash_layers))):
            self._refuse(c.hash_key, list(c.hash_layers), "the first layers only")
        if c.attention_bias or c.mlp_bias:
            key = "attention_bias" if c.attention_bias else "mlp_bias"
            self._refuse(key, True, "false: llama.cpp's deepseek4 has no biases")
        if c.compress_rope.kind not in ("default", "yarn"):
            self._refuse("rope_parameters.compress.rope_type", c.compress_rope.kind,
                         "default or yarn")  # fmt: skip
        if c.compress_rope.kind == "yarn" and (c.compress_rope.attention_factor or 1.0) != 1.0:
            self._refuse("rope_parameters.compress.attention_factor",
                         c.compress_rope.attention_factor, "1.0 (llama.cpp cancels YaRN's scale)")
        if c.rope.kind != "default":
            self._refuse("rope_parameters.main.rope_type", c.rope.kind,
                         "default: sliding layers are never scaled")  # fmt: skip

    def _check_rope(self) -> None:
        """The compressed layers' rotary is what scales (validate); the base check reads the
        top-level fields, which V4 splits into `main` and `compress`."""
        rope = self.config.compress_rope
        if rope.kind == "yarn":
            self.config.require(rope.factor, f"{rope.field_name}.factor")
            self.config.require(rope.original_context,
                                f"{rope.field_name}.original_max_position_embeddings")

    # ----- hyper-parameters ---------------------------------------------------------------
    def kv_dims(self) -> tuple[int, int, int]:
        head = self.config.head_dim
        return 1, head, head

    def recurrent_state_values(self) -> int:
        """The compressors' open windows (f32 keys and gate scores per compressed layer) that
        llama.cpp keeps beside the KV caches: 8 rows of twice the head for the attention and
        for the indexer in ratio-4 layers, 128 rows of the head in ratio-128 layers."""
        c = self.config
        csa = sum(1 for r in c.compress_ratios if r == 4)
        hca = sum(1 for r in c.compress_ratios if r == 128)
        return 2 * (csa * 8 * 2 * (c.head_dim + c.index_head_dim) + hca * 128 * c.head_dim)

    def write_hparams(self, w: gguf.GGUFWriter) -> None:
        c, n = self.config, self.n_layers
        w.add_context_length(c.context_length)
        w.add_embedding_length(c.hidden_size)
        w.add_block_count(n)
        w.add_head_count(c.n_heads)
        w.add_head_count_kv(1)
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
        w.add_rope_dimension_count(c.rope_dim)
        w.add_rope_freq_base(c.rope.theta)
        w.add_layer_norm_rms_eps(c.rms_norm_eps)
        w.add_vocab_size(c.vocab_size)
        w.add_q_lora_rank(c.q_lora_rank)
        w.add_sliding_window(c.require(c.sliding_window, "sliding_window"))
        w.add_expert_count(c.n_experts)
        w.add_expert_used_count(c.top_k)
        w.add_expert_feed_forward_length(c.require(c.moe_intermediate_size,
                                                   "moe_intermediate_size"))  # fmt: skip
        w.add_expert_shared_count(c.n_shared_experts)
        w.add_expert_weights_scale(c.routed_scaling_factor)
        # transformers' V4 routers divide by the chosen scores' sum whatever norm_topk_prob says
        w.add_expert_weights_norm(True)
        w.add_uint32(f"{ARCH}.expert_gating_func", SQRT_SOFTPLUS)
        w.add_array(KEY["swiglu_clamp_exp"], [c.swiglu_limit] * n)
        w.add_array(KEY["swiglu_clamp_shexp"], [c.swiglu_limit] * n)
        w.add_uint32(KEY["indexer_head_count"], c.index_n_heads)
        w.add_uint32(KEY["indexer_key_length"], c.index_head_dim)
        w.add_uint32(KEY["indexer_top_k"], c.index_topk)
        w.add_uint32(KEY["output_group_count"], c.o_groups)
        w.add_uint32(KEY["output_lora_rank"], c.o_lora_rank)
        w.add_array(KEY["compress_ratios"], list(c.compress_ratios))
        w.add_float32(KEY["compress_rope_freq_base"], c.compress_rope.theta)
        w.add_uint32(KEY["hc_count"], c.hc_mult)
        w.add_uint32(KEY["hc_sinkhorn_iterations"], c.hc_sinkhorn_iters)
        w.add_float32(KEY["hc_epsilon"], c.hc_eps)
        w.add_uint32(KEY["hash_layer_count"], len(c.hash_layers))
        w.add_uint32(KEY["embedding_length_out"], c.hidden_size * c.hc_mult)
        rope = c.compress_rope  # llama.cpp applies the scaling to compressed layers only
        if rope.kind == "yarn":
            w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            w.add_rope_scaling_factor(float(rope.factor or 1.0))
            w.add_rope_scaling_orig_ctx_len(int(rope.original_context or 0))
            if rope.beta_fast is not None:
                w.add_rope_scaling_yarn_beta_fast(rope.beta_fast)
            if rope.beta_slow is not None:
                w.add_rope_scaling_yarn_beta_slow(rope.beta_slow)

    # ----- tensors ------------------------------------------------------------------------
    def gguf_name(self, hf_name: str) -> str:
        name = canonical(hf_name)
        if name in _ROOT:
            return _ROOT[name]
        m = _LAYER_NAME.match(name)
        if m and m.group(2) in _LAYER:
            return f"blk.{m.group(1)}.{_LAYER[m.group(2)]}"
        raise UnsupportedArchitectureError(
            f"{self.architecture}: checkpoint tensor '{hf_name}' has no llama.cpp counterpart"
        )

    def keep_f32(self, gguf_name: str) -> bool:
        # The hyper-connection mixers feed a sigmoid and a Sinkhorn projection; llama.cpp's own
        # converter keeps them (and the compressors' position biases) in the checkpoint's F32.
        return super().keep_f32(gguf_name) or gguf_name.endswith(
            ("_fn.weight", "_ape.weight", "_kv_a_norm.weight")
        )

    def plan(self, shapes: dict[str, tuple[int, ...]], read: Reader) -> list[PlannedTensor]:
        out: list[PlannedTensor] = []
        experts: dict[tuple[str, str], dict[int, str]] = {}
        c, n = self.config, self.n_layers
        for name in sorted(shapes):
            canon = canonical(name)
            if _QUANTIZED.search(canon):
                raise UnsupportedArchitectureError(
                    f"{self.architecture}: checkpoint tensor '{name}' is a quantization scale: "
                    "FP8/FP4 weights are not read; save the checkpoint in bf16 or float32 first"
                )
            if canon.startswith("mtp.") or _layer(canon) >= n:
                continue  # multi-token prediction: llama.cpp runs the main model without it
            if m := _EXPERT.match(canon):
                experts.setdefault((m.group(1), m.group(3)), {})[int(m.group(2))] = name
                continue
            if canon.endswith("ffn.gate.bias") and _layer(canon) in c.hash_layers:
                continue  # hash layers pick experts by token id; the bias is never read
            if canon.endswith(".tid2eid"):
                out.append(self._tid2eid(name, shapes[name], read))
                continue
            if canon.endswith((".gate_up_proj", ".experts.down_proj")):
                out.extend(self._fused(_fused_prefix(name), _fused_kind(name), name,
                                       shapes[name], read))  # fmt: skip
                continue
            out.extend(self.expand(name, shapes[name], read))
        self._check_layers(shapes)
        out.extend(self._stacked(
            {(f"model.{p}", int(p.split(".")[1]), proj): ids
             for (p, proj), ids in experts.items()}, shapes, read))  # fmt: skip
        return sorted(out, key=lambda t: _natural(t.name))

    def _tid2eid(self, name: str, shape: tuple[int, ...], read: Reader) -> PlannedTensor:
        c = self.config
        if tuple(shape) != (c.vocab_size, c.top_k):
            raise UnsupportedArchitectureError(
                f"{self.architecture}: '{name}' has shape {list(shape)}; expected "
                f"[vocab_size={c.vocab_size}, num_experts_per_tok={c.top_k}]"
            )
        return PlannedTensor(self.gguf_name(name), tuple(shape),
                             lambda: read(name).astype(np.int32),
                             storage=gguf.GGMLQuantizationType.I32)  # fmt: skip

    def _check_layers(self, shapes: dict[str, tuple[int, ...]]) -> None:
        c, n = self.config, self.n_layers
        layers = {_layer(canonical(name)) for name in shapes} - {-1}
        main = {i for i in layers if i < n}
        if not main and (layers or any(canonical(x).startswith("mtp.") for x in shapes)):
            raise UnsupportedArchitectureError(
                f"{self.architecture}: the checkpoint holds only multi-token-prediction "
                f"weights ({c.mtp_key}={c.mtp_layers}), not the {n} main layers edgemoe packs"
            )
        missing = [i for i in c.hash_layers
                   if not any(canonical(x) == f"layers.{i}.ffn.gate.tid2eid" for x in shapes)]
        if missing:  # fmt: skip
            raise UnsupportedArchitectureError(
                f"{self.architecture}: layer {missing[0]} is hash-routed ({c.hash_key}) but the "
                "checkpoint has no token-id table (ffn.gate.tid2eid) for it"
            )


def _layer(canon: str) -> int:
    m = _LAYER_NAME.match(canon)
    return int(m.group(1)) if m else -1


def _fused_prefix(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _fused_kind(name: str) -> str:
    return "down_proj" if name.endswith("down_proj") else "gate_up_proj"


def _natural(name: str) -> list[object]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
