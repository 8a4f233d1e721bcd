"""Wire schemas of the OpenAI-compatible API: requests validated at the edge, responses as sent.

Requests are strict (no "0.5" for a number, no 1 for a boolean) and reject the OpenAI options this
server cannot honour instead of ignoring them; unknown extra fields are ignored, as OpenAI does.
Sampling defaults and ranges are SamplingParams' own, so HTTP and Python answer alike. Every
response, stream chunk and error is one of the models below, serialised by `json_body`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from runtime.generation import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_SAMPLING,
    MAX_TEMPERATURE,
    MIN_MAX_TOKENS,
    SamplingParams,
)
from runtime.generation import Usage as RuntimeUsage

MAX_STOP = 4


def _valid_unicode(text: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); they cannot be encoded for the tokenizer.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
StopText = Annotated[str, Field(min_length=1), AfterValidator(_valid_unicode)]
Temperature = Annotated[float, Field(ge=0.0, le=MAX_TEMPERATURE)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=0)]
MaxTokens = Annotated[int, Field(ge=MIN_MAX_TOKENS)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
FinishReason = Literal["stop", "length"]

# JSON null for these means "not given" (OpenAI documents them as nullable), so the default applies.
_NULL_IS_DEFAULT = ("temperature", "top_p", "top_k", "stream")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: Text
    name: str | None = None


class _GenerationRequest(_Strict):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str = Field(description="The model id from GET /v1/models (or the bundle name).")
    max_tokens: MaxTokens | None = Field(
        DEFAULT_SAMPLING.max_tokens,
        description=f"Tokens to generate at most; default {DEFAULT_MAX_TOKENS}, or fewer where "
        "the context window ends first.",
    )
    temperature: Temperature = Field(DEFAULT_SAMPLING.temperature, description="0 is greedy.")
    top_p: TopP = DEFAULT_SAMPLING.top_p
    top_k: TopK = Field(
        DEFAULT_SAMPLING.top_k, description="Extension: keep the k most likely tokens (0: off)."
    )
    n: int | None = Field(None, description="Only 1 is supported.")
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = DEFAULT_SAMPLING.seed
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = Field(None, description="Only 0 is supported.")
    frequency_penalty: Penalty | None = Field(None, description="Only 0 is supported.")
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(data.get(k, 0) is None for k in _NULL_IS_DEFAULT):
            return {k: v for k, v in data.items() if not (v is None and k in _NULL_IS_DEFAULT)}
        return data

    @field_validator("n")
    @classmethod
    def _one_choice(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError("only n=1 is supported: this server generates one choice per request")
        return v

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float | None) -> float | None:
        if v:
            raise ValueError("penalties are not supported by this server; send 0 or omit it")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def token_limit(self) -> int | None:
        return self.max_tokens

    def sampling_params(self) -> SamplingParams:
        """The request's sampling settings as the runtime's one type."""
        return SamplingParams(
            max_tokens=self.token_limit(),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=self.stop,  # type: ignore[arg-type]  # SamplingParams makes it a tuple
        )


class ChatCompletionRequest(_GenerationRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = Field(
        None, description="Newer name of max_tokens; wins when both are given."
    )
    logprobs: bool | None = None
    tools: list[Any] | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("logprobs are not supported by this server")
        return v

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v: list[Any] | None) -> list[Any] | None:
        if v:
            raise ValueError("tools are not supported by this server")
        return v

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def message_dicts(self) -> list[dict[str, str]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]


class CompletionRequest(_GenerationRequest):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)] = Field(
        description="A string, or a list holding exactly one string."
    )
    echo: bool | None = False
    logprobs: Annotated[int, Field(ge=0)] | None = None
    best_of: int | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: int | None) -> int | None:
        if v:
            raise ValueError("logprobs are not supported by this server")
        return v

    @field_validator("best_of")
    @classmethod
    def _one_best(cls, v: int | None) -> int | None:
        if v is not None and v != 1:
            raise ValueError("only best_of=1 is supported")
        return v

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# --- responses ---------------------------------------------------------------------------------
class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, usage: RuntimeUsage | None) -> UsageInfo:
        if usage is None:
            return cls(prompt_tokens=0, completion_tokens=0, total_tokens=0)
        return cls(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class ChatDelta(BaseModel):
    """What a chunk adds; OpenAI leaves out the fields a delta does not carry (the first chunk
    has the role, the next ones content, the last one nothing)."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent chunk; `usage` is sent (null until the last) only if the client asked."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None


class Completion(BaseModel):
    """A completion, or one chunk of a streamed one (usage as for ChatCompletionChunk)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "edgemoe"
    context_length: int = Field(description="Extension: the context window in tokens.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Health(BaseModel):
    status: Literal["ok", "loading", "error", "stopping"]
    model: str | None = None
    message: str | None = None


def json_body(model: BaseModel, *, exclude: set[str] | None = None, drop_none: bool = False) -> str:
    """A response model as compact JSON (the one serialiser for bodies and SSE chunks)."""
    return model.model_dump_json(exclude=exclude, exclude_none=drop_none)


# Every field name a request can carry, to tell field names from pydantic's union tags.
REQUEST_FIELDS: frozenset[str] = frozenset(
    name
    for model in (ChatCompletionRequest, CompletionRequest, ChatMessage, StreamOptions)
    for name in model.model_fields
)
