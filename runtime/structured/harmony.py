"""The harmony format of gpt-oss, read back from the tokens a model writes.

A gpt-oss answer is a series of messages, each `<|start|>ROLE HEADER<|message|>BODY` ended by
`<|end|>` (more follows), `<|return|>` (the answer is done) or `<|call|>` (a function call
waits for its result); the prompt ends with `<|start|>assistant`, so the first message starts
at its header. A header names a channel (`<|channel|>analysis`, `commentary`, `final`), maybe a
recipient (` to=functions.NAME`, before or after the channel) and a content type
(`<|constrain|>json`, or a bare `json` after the channel). They map onto the chat API as
llama.cpp's server maps them:

- `analysis` (the chain of thought) -> `reasoning_content`, apart from the answer;
- `final`, and `commentary` without a recipient (a preamble to the user) -> `content`;
- a message to `functions.NAME` -> a tool call NAME whose arguments are the body; another
  recipient (a built-in tool such as `python`) -> a call named as the recipient.

The reader works on token ids, not text: llama.cpp renders some of these special tokens as
text and onnxruntime none, so only ids are the same on both engines. Text is decoded in whole
UTF-8 characters per message. An answer cut short loses nothing: an unfinished call's body is
returned as content.
"""

from __future__ import annotations

import codecs
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runtime.structured.tools import ToolCall, ToolCallDelta

SPECIALS = ("<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>",
            "<|call|>")  # fmt: skip
_RECIPIENT = re.compile(r"(?:^|\s)to=([^\s<]+)")
REASONING, CONTENT = "analysis", "final"


def is_harmony(template: str | None) -> bool:
    """Whether a chat template writes the harmony format (gpt-oss's)."""
    return bool(template) and all(t in (template or "") for t in
                                  ("<|start|>", "<|channel|>", "<|message|>"))  # fmt: skip


def harmony_messages(normalized: list[dict[str, Any]], given: Sequence[Any]
                     ) -> list[dict[str, Any]]:
    """Validated messages for a harmony template: an assistant message's reasoning (OpenAI
    clients send back `reasoning_content`; some send `thinking`) becomes the `thinking` the
    template renders as its analysis channel."""
    out = []
    for norm, raw in zip(normalized, given, strict=True):
        thinking = None
        if norm["role"] == "assistant" and isinstance(raw, Mapping):
            thinking = raw.get("reasoning_content") or raw.get("thinking")
        out.append({**norm, "thinking": thinking} if isinstance(thinking, str) else norm)
    return out


@dataclass(frozen=True)
class HarmonyTokens:
    """The ids of harmony's special tokens in one vocabulary."""

    start: int
    end: int
    message: int
    channel: int
    constrain: int
    ret: int
    call: int

    @classmethod
    def find(cls, tokenize: Callable[[str], list[int]]) -> HarmonyTokens | None:
        """From a tokenizer that parses special tokens; None when one is not a single token."""
        ids = [tokenize(t) for t in SPECIALS]
        if any(len(i) != 1 for i in ids):
            return None
        return cls(*(i[0] for i in ids))


@dataclass(frozen=True)
class HarmonyDelta:
    """What one token added: answer text, reasoning text, pieces of tool calls."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()


@dataclass
class _Message:
    header: str = ""
    channel: str = ""
    recipient: str = ""
    in_body: bool = False
    body: str = ""
    call_index: int | None = None
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    def open_body(self) -> None:
        self.in_body = True
        self.channel, self.recipient = parse_header(self.header)


def parse_header(header: str) -> tuple[str, str]:
    """(channel, recipient) of a message header such as `assistant to=functions.f<|channel|>
    commentary json` (specials already split out: the channel follows the word "channel")."""
    recipient = m.group(1) if (m := _RECIPIENT.search(header)) else ""
    channel = ""
    if "<|channel|>" in header:
        after = header.split("<|channel|>", 1)[1]
        words = after.replace("<|constrain|>", " ").split()
        channel = next((w for w in words if not w.startswith("to=")), "")
    return channel, recipient


@dataclass(frozen=True)
class _Call:
    id: str
    name: str
    arguments: str
    complete: bool


class HarmonyReader:
    """Splits a harmony answer into content, reasoning and tool calls, one token at a time."""

    def __init__(self, tokens: HarmonyTokens, piece: Callable[[int], bytes]) -> None:
        self.t, self.piece = tokens, piece
        self.msg = _Message()
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[_Call] = []
        self._loose: list[str] = []  # header text: the answer, if no message ever opens
        self._opened = False

    def feed(self, token: int) -> HarmonyDelta:
        """One generated token, end-of-generation tokens (<|return|>, <|call|>) included."""
        t, msg = self.t, self.msg
        if token == t.start:
            self._close(complete=True)
            return HarmonyDelta()
        if token in (t.end, t.ret, t.call):
            return self._close(complete=True)
        if not msg.in_body:
            if token == t.message:
                msg.open_body()
                self._opened = True
                return self._call_opened()
            if token == t.channel:
                msg.header += "<|channel|>"
            elif token == t.constrain:
                msg.header += "<|constrain|>"
            else:
                text = self.piece(token).decode("utf-8", errors="replace")
                msg.header += text
                self._loose.append(text)
            return HarmonyDelta()
        return self._text(msg.decoder.decode(self.piece(token)))

    def _call_opened(self) -> HarmonyDelta:
        msg = self.msg
        if not msg.recipient:
            return HarmonyDelta()
        name = msg.recipient.removeprefix("functions.")
        msg.call_index = len(self.calls)
        self.calls.append(_Call("call_" + uuid.uuid4().hex[:24], name, "", False))
        call = self.calls[-1]
        return HarmonyDelta(tool_calls=(ToolCallDelta(msg.call_index, "", call.id, name),))

    def _text(self, text: str) -> HarmonyDelta:
        if not text:
            return HarmonyDelta()
        msg = self.msg
        msg.body += text
        if msg.call_index is not None:
            c = self.calls[msg.call_index]
            self.calls[msg.call_index] = _Call(c.id, c.name, c.arguments + text, False)
            return HarmonyDelta(tool_calls=(ToolCallDelta(msg.call_index, text),))
        if msg.channel == REASONING:
            self.reasoning.append(text)
            return HarmonyDelta(reasoning=text)
        self.content.append(text)
        return HarmonyDelta(content=text)

    def _close(self, complete: bool) -> HarmonyDelta:
        """End the message being read (a message never opened is dropped)."""
        msg, delta = self.msg, HarmonyDelta()
        if msg.in_body:
            delta = self._text(msg.decoder.decode(b"", final=True))
            if msg.call_index is not None:
                c = self.calls[msg.call_index]
                self.calls[msg.call_index] = _Call(c.id, c.name, c.arguments, complete)
        self.msg = _Message()
        return delta

    def finish(self) -> tuple[str, str, tuple[ToolCall, ...]]:
        """(content, reasoning, complete calls) once generation stopped. A call cut short
        (max_tokens) is returned as content, and so is the text of a model that never opened a
        message (it did not write harmony), so nothing written is lost."""
        if self.msg.in_body:
            self._close(complete=False)
        content = "".join(self.content) if self._opened else "".join(self._loose)
        for c in self.calls:
            if not c.complete:
                content += c.arguments
        calls = tuple(ToolCall(c.id, c.name, c.arguments.strip()) for c in self.calls
                      if c.complete)  # fmt: skip
        return content, "".join(self.reasoning), calls
