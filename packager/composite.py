"""Vision+text checkpoints (released Qwen3.5; Llama 4): edgemoe packs their text model.

A composite's config.json keeps the text model's fields under `text_config`, and its weights keep
the text model under a language-model prefix beside a vision tower and its projector. A family
lists the composite architectures whose text model it is (`Family.composite_architectures`);
`text_config` is then the text model's own config.json and `text_view` the checkpoint seen as
that text model: tensors renamed to the text model's names (each still read from its file under
its stored name), the vision tower left out, nothing copied. transformers' AutoModelForCausalLM
loads such a folder as the same text model, so the stages that run transformers on the folder
(the reference, the importance matrix, calibration, distillation's teacher) agree with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from packager.source import Checkpoint

# Where composites keep the text model: (stored prefix, the text model's own prefix).
# Qwen3.5: model.language_model.* and lm_head.*; Llama 4: language_model.model.* and
# language_model.lm_head.*. Multi-token-prediction weights (mtp.*) belong to the text model.
TEXT_PREFIXES = (
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
    ("lm_head.", "lm_head."),
    ("mtp.", "mtp."),
)
# Fields a composite may state once at the top level for the text model too.
_INHERITED = ("tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")


def text_name(stored: str) -> str | None:
    """The text model's name for a stored tensor; None for the vision tower and projector."""
    for prefix, text in TEXT_PREFIXES:
        if stored.startswith(prefix):
            return text + stored[len(prefix):]
    return None


def text_config(raw: Mapping[str, Any], text_architecture: str) -> dict[str, Any]:
    """The text model's config.json: `text_config`, named as the text model's class, with the
    token ids and tying the composite states once at its top level where the text part does not."""
    inner = raw.get("text_config")
    if not isinstance(inner, Mapping):
        archs = raw.get("architectures") or ["?"]
        from packager.errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError(
            f"config.json: {archs[0]} is a vision+text checkpoint but 'text_config' is "
            f"{'missing' if inner is None else 'not an object'}"
        )
    out = dict(inner)
    for key in _INHERITED:
        if out.get(key) is None and raw.get(key) is not None:
            out[key] = raw[key]
    out["architectures"] = [text_architecture]
    return out


def has_text_prefix(names: Iterable[str]) -> bool:
    """Whether a text model's tensors are stored under a composite's language-model prefix (a
    text model transformers loaded from a composite saves them so)."""
    return any(n.startswith(("model.language_model.", "language_model.")) for n in names)


def text_view(ckpt: Checkpoint, text_architecture: str | None) -> Checkpoint:
    """`ckpt` as its text model: the text config (a composite's; `text_architecture` None keeps
    the config of a text model stored under composite names), the text tensors under the text
    model's names (their stored names kept in `TensorInfo.name` for reading), the rest recorded
    as left out."""
    tensors, left_out = {}, []
    for stored, info in ckpt.tensors.items():
        name = text_name(stored)
        if name is None:
            left_out.append(stored)
        else:
            tensors[name] = info
    if text_architecture is None:
        return replace(ckpt, tensors=tensors, left_out=tuple(sorted(left_out)))
    return replace(ckpt, config=text_config(ckpt.config, text_architecture), tensors=tensors,
                   composite=ckpt.architecture, left_out=tuple(sorted(left_out)))


def composite_note(ckpt: Checkpoint) -> str | None:
    """The one line that says a composite's text model was packed, and what was not."""
    if ckpt.composite is None:
        return None
    return (f"{ckpt.composite} is a vision+text checkpoint: packed its text model "
            f"({ckpt.architecture}); the vision tower ({len(ckpt.left_out)} tensors) is not")
