"""A bundle's tokenizer.json through the `tokenizers` library, for engines without a vocabulary.

llama.cpp reads its vocabulary from the GGUF; an ONNX build carries the checkpoint's own
tokenizer.json instead. Generation streams raw token bytes (whole UTF-8 characters are assembled
later, by TextAssembler), so a token's exact bytes are recovered from its vocabulary string:
byte-level BPE (GPT-2 style byte-to-character table) and SentencePiece byte fallback (<0xNN>,
'▁' for a space) are understood. A special (control) token writes no bytes, as llama.cpp renders
one, so both backends stream the same text and constrained decoding never takes one for text.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from contract.errors import BundleError
from contract.files import read_json


@cache
def _byte_decoder() -> dict[str, int]:
    """The byte-level BPE alphabet: printable Latin-1 bytes stand for themselves, the other 68
    bytes are shifted to code points 256 and up, so every byte is one visible character."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table: dict[str, int] = {chr(b): b for b in keep}
    shifted = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


class HFTokenizer:
    def __init__(self, bundle_dir: Path) -> None:
        from tokenizers import Tokenizer

        path = bundle_dir / "tokenizer.json"
        spec = read_json(path, BundleError, "tokenizer")
        try:
            self._tok = Tokenizer.from_file(str(path))
        except Exception as e:  # the library raises its own exception types
            raise BundleError(f"{path}: unreadable tokenizer ({e})") from None
        self._byte_level = "ByteLevel" in json.dumps(spec.get("decoder") or {})
        self._special = {int(t["id"]) for t in spec.get("added_tokens", []) if t.get("special")}
        self.n_vocab = self._tok.get_vocab_size(with_added_tokens=True)
        self._bytes: dict[int, bytes] = {}

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=special).ids)

    def token_id(self, text: str) -> int | None:
        return self._tok.token_to_id(text)

    def token_bytes(self, token: int) -> bytes:
        cached = self._bytes.get(token)
        if cached is None:
            cached = self._bytes[token] = self._decode_one(token)
        return cached

    def _decode_one(self, token: int) -> bytes:
        piece = self._tok.id_to_token(token)
        if piece is None:
            return b""
        if token in self._special:
            return b""
        if self._byte_level:
            table = _byte_decoder()
            if all(ch in table for ch in piece):
                return bytes(table[ch] for ch in piece)
            return piece.encode("utf-8")
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    def close(self) -> None:
        """Nothing to free; the Tokenizer protocol's close."""
