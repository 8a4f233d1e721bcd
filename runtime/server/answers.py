"""Runtime results as OpenAI's response shapes: a whole response, or its stream chunks.

The runtime streams StreamEvents (text, tool-call pieces and log-probs of choice `index`; an
event that ends a choice carries it as `choice`; the last event carries every choice). An Answer
turns them into `schemas.py` models: per choice, a first chunk with the role (or the echoed
prompt), then content / tool_calls / logprobs deltas, then a chunk with its finish_reason; every
chunk of one answer shares its id and creation time, and carries `usage` (null until the usage
chunk) only when the client asked for it, as OpenAI does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from pydantic import BaseModel

from runtime.generation.logprobs import TokenLogprob
from runtime.generation.request import Choice, StreamEvent, Usage
from runtime.server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    FunctionCallOut,
    FunctionDeltaOut,
    TokenLogprobOut,
    ToolCallDeltaOut,
    ToolCallOut,
    TopLogprobOut,
    UsageInfo,
    json_body,
)
from runtime.structured.tools import ToolCallDelta


def final_choices(ev: StreamEvent) -> tuple[Choice, ...]:
    """The choices of a final event (a generation path that reports none: one, from its text)."""
    if ev.choices:
        return ev.choices
    return (Choice(0, ev.text, tuple(ev.tokens or ()), ev.finish_reason or "stop"),)


class Answer:
    """One request's answer; subclasses give the chat and completions shapes."""

    prompt_param = "prompt"
    id_prefix = "cmpl"

    def __init__(self, model_id: str, include_usage: bool, logprobs: bool) -> None:
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model_id
        self.include_usage = include_usage
        self.logprobs = logprobs
        self._started: set[int] = set()

    def sse(self, chunk: BaseModel) -> str:
        exclude = None if self.include_usage else {"usage"}
        return f"data: {json_body(chunk, exclude=exclude)}\n\n"

    def chunks(self, ev: StreamEvent) -> list[str]:
        """Every chunk one event makes (the final event's choice end included)."""
        out = []
        if ev.index not in self._started:
            self._started.add(ev.index)
            out += self.start(ev.index)
        lps = ev.logprobs if self.logprobs else ()
        if ev.text or ev.tool_calls or lps or ev.reasoning:
            out.append(self.piece(ev.index, ev.text, ev.tool_calls, lps, ev.reasoning))
        ended = ev.choice or (final_choices(ev)[-1] if ev.finish_reason is not None else None)
        if ended is not None and ended.finish_reason != "cancelled":
            out.append(self.end(ended.index, ended.finish_reason))
        return out

    def start(self, index: int) -> list[str]:
        return []

    def piece(self, index: int, text: str, calls: Sequence[ToolCallDelta],
              logprobs: Sequence[TokenLogprob], reasoning: str = "") -> str:
        raise NotImplementedError

    def end(self, index: int, reason: str) -> str:
        raise NotImplementedError

    def usage_chunk(self, usage: Usage | None) -> str:
        raise NotImplementedError

    def full(self, choices: Sequence[Choice], usage: Usage | None) -> BaseModel:
        raise NotImplementedError


def _top(lp: TokenLogprob) -> list[TopLogprobOut]:
    return [TopLogprobOut(token=t.text, logprob=t.logprob, bytes=list(t.bytes)) for t in lp.top]


def _chat_logprobs(lps: Sequence[TokenLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(content=[
        TokenLogprobOut(token=lp.text, logprob=lp.logprob, bytes=list(lp.bytes),
                        top_logprobs=_top(lp))
        for lp in lps
    ])


class ChatAnswer(Answer):
    prompt_param = "messages"
    id_prefix = "chatcmpl"

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
        return self.sse(ChatCompletionChunk(
            id=self.id, created=self.created, model=self.model, choices=choices,
            usage=UsageInfo.of(usage) if usage is not None else None,
        ))

    def start(self, index: int) -> list[str]:
        return [self._chunk([ChatChunkChoice(index=index,
                                             delta=ChatDelta(role="assistant", content=""))])]

    def piece(self, index: int, text: str, calls: Sequence[ToolCallDelta],
              logprobs: Sequence[TokenLogprob], reasoning: str = "") -> str:
        deltas = [
            ToolCallDeltaOut(index=c.index, id=c.id, type="function" if c.id else None,
                             function=FunctionDeltaOut(name=c.name, arguments=c.arguments))
            for c in calls
        ]
        delta = ChatDelta(content=text if text or not (deltas or reasoning) else None,
                          reasoning_content=reasoning or None, tool_calls=deltas or None)
        lp = _chat_logprobs(logprobs) if logprobs else None
        return self._chunk([ChatChunkChoice(index=index, delta=delta, logprobs=lp)])

    def end(self, index: int, reason: str) -> str:
        return self._chunk([ChatChunkChoice(index=index, delta=ChatDelta(),
                                            finish_reason=reason)])  # type: ignore[arg-type]

    def usage_chunk(self, usage: Usage | None) -> str:
        return self.sse(ChatCompletionChunk(id=self.id, created=self.created, model=self.model,
                                            choices=[], usage=UsageInfo.of(usage)))

    def full(self, choices: Sequence[Choice], usage: Usage | None) -> ChatCompletion:
        out = []
        for c in choices:
            calls = [ToolCallOut(id=t.id, function=FunctionCallOut(name=t.name,
                                                                   arguments=t.arguments))
                     for t in c.tool_calls]
            message = AssistantMessage(content=c.text if c.text or not calls else None,
                                       reasoning_content=c.reasoning or None,
                                       tool_calls=calls or None)
            lp = _chat_logprobs(c.logprobs or ()) if self.logprobs else None
            out.append(ChatChoice(index=c.index, message=message, logprobs=lp,
                                  finish_reason=c.finish_reason))  # type: ignore[arg-type]
        return ChatCompletion(id=self.id, created=self.created, model=self.model, choices=out,
                              usage=UsageInfo.of(usage))


class CompletionAnswer(Answer):
    def __init__(self, model_id: str, include_usage: bool, logprobs: bool, echo: str) -> None:
        super().__init__(model_id, include_usage, logprobs)
        self.echo = echo
        self._offset: dict[int, int] = {}  # per choice: text offset of its next token

    def _logprobs(self, index: int, lps: Sequence[TokenLogprob]) -> CompletionLogprobs:
        at = self._offset.get(index, len(self.echo))
        offsets = []
        for lp in lps:
            offsets.append(at)
            at += len(lp.text)
        self._offset[index] = at
        return CompletionLogprobs(
            tokens=[lp.text for lp in lps],
            token_logprobs=[lp.logprob for lp in lps],
            top_logprobs=[{t.text: t.logprob for t in lp.top} for lp in lps],
            text_offset=offsets,
        )

    def _chunk(self, index: int, text: str, reason: str | None = None,
               logprobs: CompletionLogprobs | None = None) -> str:
        return self.sse(Completion(
            id=self.id, created=self.created, model=self.model,
            choices=[CompletionChoice(index=index, text=text, logprobs=logprobs,
                                      finish_reason=reason)],  # type: ignore[arg-type]
        ))

    def start(self, index: int) -> list[str]:
        return [self._chunk(index, self.echo)] if self.echo else []

    def piece(self, index: int, text: str, calls: Sequence[ToolCallDelta],
              logprobs: Sequence[TokenLogprob], reasoning: str = "") -> str:
        return self._chunk(index, text, None, self._logprobs(index, logprobs) if logprobs else None)

    def end(self, index: int, reason: str) -> str:
        return self._chunk(index, "", reason)

    def usage_chunk(self, usage: Usage | None) -> str:
        return self.sse(Completion(id=self.id, created=self.created, model=self.model,
                                   choices=[], usage=UsageInfo.of(usage)))

    def full(self, choices: Sequence[Choice], usage: Usage | None) -> Completion:
        out = [
            CompletionChoice(
                index=c.index, text=self.echo + c.text,
                logprobs=self._logprobs(c.index, c.logprobs or ()) if self.logprobs else None,
                finish_reason=c.finish_reason,  # type: ignore[arg-type]
            )
            for c in choices
        ]
        return Completion(id=self.id, created=self.created, model=self.model, choices=out,
                          usage=UsageInfo.of(usage))
