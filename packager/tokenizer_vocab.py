"""Hugging Face tokenizer.json -> GGUF vocabulary keys, so llama.cpp tokenizes like transformers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import gguf

from packager.errors import CheckpointError, UnsupportedArchitectureError

# Pre-tokenizer regexes llama.cpp knows, keyed by the name it expects in tokenizer.ggml.pre.
_KNOWN_PRE = {
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    # o200k (gpt-oss, GPT-4o): llama.cpp rewrites the case classes with lookaheads.
    "gpt-4o": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
    r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]
    pre: str


def _split_regexes(pre_tokenizer: dict | None) -> list[str]:
    if not pre_tokenizer:
        return []
    if pre_tokenizer.get("type") == "Sequence":
        return [r for p in pre_tokenizer.get("pretokenizers", []) for r in _split_regexes(p)]
    if pre_tokenizer.get("type") == "Split":
        pattern = pre_tokenizer.get("pattern", {})
        return [pattern.get("Regex") or pattern.get("String") or ""]
    return []


def detect_pre(tokenizer: dict) -> str:
    """llama.cpp picks its pre-tokenizer by name; map the checkpoint's regex to that name."""
    regexes = _split_regexes(tokenizer.get("pre_tokenizer"))
    for name, pattern in _KNOWN_PRE.items():
        if pattern in regexes:
            return name
    raise UnsupportedArchitectureError(
        "tokenizer.json: byte-level BPE pre-tokenizer not recognised by edgemoe "
        f"(known: {', '.join(_KNOWN_PRE)}); llama.cpp would tokenize differently from transformers"
    )


def read_vocab(tokenizer_json: Path, vocab_size: int) -> Vocab:
    try:
        tok = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{tokenizer_json}: not found (a tokenizer.json is required)"
        ) from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{tokenizer_json.name}: malformed JSON at line {e.lineno}") from None
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UnsupportedArchitectureError(
            f"{tokenizer_json.name}: only byte-level BPE tokenizers are supported, got "
            f"{model.get('type')!r}"
        )
    by_id: dict[int, tuple[str, int]] = {
        i: (t, gguf.TokenType.NORMAL) for t, i in model["vocab"].items()
    }
    for added in tok.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    if by_id and max(by_id) >= vocab_size:
        raise CheckpointError(
            f"{tokenizer_json.name}: token id {max(by_id)} >= config vocab_size {vocab_size}"
        )
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    return Vocab(tokens, types, detect_pre(tok))


def write_vocab(w: gguf.GGUFWriter, checkpoint_dir: Path, vocab_size: int) -> Vocab:
    vocab = read_vocab(checkpoint_dir / "tokenizer.json", vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    # SpecialVocab reads merges, bos/eos/pad ids, add_bos and the chat template the way
    # llama.cpp's own converter does.
    special = gguf.SpecialVocab(checkpoint_dir, load_merges=True, n_vocab=vocab_size)
    special.add_to_gguf(w, quiet=True)
    return vocab
