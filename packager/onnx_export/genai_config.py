"""genai_config.json: onnxruntime-genai's description of a decoder model, filled where it applies.

The field names follow onnxruntime-genai's config (`model.decoder.inputs/outputs` name
templates with ``%d`` for the layer). Greedy search is the default, as in our runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from packager.families.onnx_adapter import OnnxAdapter


def genai_config(
    fam: OnnxAdapter, model_file: str, generation: dict[str, Any] | None = None
) -> dict[str, Any]:
    c, gen = fam.config, generation or {}
    kv_heads, k_dim, _ = fam.kv_layout()
    eos = gen.get("eos_token_id", c.eos_token_id)
    pad = gen.get("pad_token_id", c.pad_token_id)
    bos = gen.get("bos_token_id", c.bos_token_id)
    context = c.context_length
    return {
        "model": {
            "bos_token_id": bos if bos is not None else (eos if isinstance(eos, int) else 0),
            "context_length": context,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": model_file,
                "head_size": k_dim,
                "hidden_size": fam.hidden,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
                "num_attention_heads": fam.n_heads,
                "num_hidden_layers": fam.n_layers,
                "num_key_value_heads": kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": pad if pad is not None else eos,
            "type": fam.genai_type,
            "vocab_size": fam.vocab,
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": False,
            "early_stopping": True,
            "length_penalty": 1.0,
            "max_length": context,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }
