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
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from runtime.generation.logprobs import MAX_TOP_LOGPROBS
from runtime.generation.request import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_SAMPLING,
    MAX_LOGIT_BIAS,
    MAX_N,
    MAX_TEMPERATURE,
    MIN_MAX_TOKENS,
    SamplingParams,
)
from runtime.generation.request import Usage as RuntimeUsage

MAX_STOP = 4
MAX_TOKENS_IN = 1 << 17  # /detokenize


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
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)]
Bias = Annotated[float, Field(ge=-MAX_LOGIT_BIAS, le=MAX_LOGIT_BIAS)]
FinishReason = Literal["stop", "length", "tool_calls"]

# JSON null for these means "not given" (OpenAI documents them as nullable), so the default applies.
_NULL_IS_DEFAULT = ("temperature", "top_p", "top_k", "stream")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    """A content part; only text parts are supported (checked by ChatMessage, which names the
    part type it refuses)."""

    type: str
    text: Text | None = None


class FunctionCallIn(_Strict):
    name: str
    arguments: Text = Field(description="The arguments as a JSON text, as they were returned.")


class ToolCallIn(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Strict):
    # Field order matters: each validator sees the fields declared before it.
    role: Literal["system", "developer", "user", "assistant", "tool"]
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = Field(
        None, validate_default=True, description="For role tool: the call answered."
    )
    reasoning_content: str | None = Field(
        None, description="An assistant's earlier reasoning, as answers carry it (a harmony "
        "chat template renders it as the analysis channel; others ignore it)."
    )
    content: Text | list[TextPart] | None = Field(
        None, validate_default=True, description="Text, or a list of text parts; null only for "
        "an assistant message with tool_calls."
    )

    @field_validator("tool_calls")
    @classmethod
    def _assistant_calls(cls, v: list[ToolCallIn] | None, info: ValidationInfo
                         ) -> list[ToolCallIn] | None:
        if v and info.data.get("role") != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return v

    @field_validator("tool_call_id")
    @classmethod
    def _tool_answers_a_call(cls, v: str | None, info: ValidationInfo) -> str | None:
        if not v and info.data.get("role") == "tool":
            raise ValueError("a message with role tool needs tool_call_id")
        return v

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, v: str | list[TextPart] | None, info: ValidationInfo
                         ) -> str | list[TextPart] | None:
        if v is None and not (info.data.get("role") == "assistant" and info.data.get("tool_calls")):
            raise ValueError("content is required (null only for an assistant message with "
                             "tool_calls)")
        for part in v if isinstance(v, list) else ():
            if part.type != "text" or part.text is None:
                raise ValueError(f"only text parts ({{type: text, text}}) are supported, got a "
                                 f"part of type {part.type!r}")
        return v


class FunctionDef(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema (object).")
    strict: bool | None = None


class ToolDef(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaSpec(_Strict):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextFormat(_Strict):
    type: Literal["text"]


class JsonObjectFormat(_Strict):
    type: Literal["json_object"]


class JsonSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormatIn = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")
]


class _GenerationRequest(_Strict):
    """Fields shared by /v1/chat/completions and /v1/completions."""

    model: str | None = Field(
        None, description="The model id from GET /v1/models, the bundle name or an alias; "
        "optional, since one model is served.")
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
    n: Annotated[int, Field(ge=1, le=MAX_N)] | None = Field(
        None, description="Choices to generate (the prompt is computed once); at most the "
        "server's max_n."
    )
    stop: StopText | Annotated[list[StopText], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = DEFAULT_SAMPLING.seed
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Penalty | None = Field(None, description="Only 0 is supported.")
    frequency_penalty: Penalty | None = Field(None, description="Only 0 is supported.")
    logit_bias: dict[str, Bias] | None = Field(
        None, description="Token id (as a string) -> bias in [-100, 100] added to its logit."
    )
    response_format: ResponseFormatIn | None = Field(
        None, description="json_object or json_schema: the output is enforced while sampling."
    )
    grammar: Text | None = Field(
        None, description="Extension (llama.cpp server): a grammar the output must match, GBNF or "
        "llguidance's Lark (JSON Schemas inline as %json {...})."
    )
    user: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(data.get(k, 0) is None for k in _NULL_IS_DEFAULT):
            return {k: v for k, v in data.items() if not (v is None and k in _NULL_IS_DEFAULT)}
        return data

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

    def top_logprobs_count(self) -> int | None:
        """SamplingParams.logprobs: None for no log-probs, else the alternatives per token."""
        return None

    def sampling_params(self) -> SamplingParams:
        """The request's sampling settings as the runtime's one type."""
        return SamplingParams(
            max_tokens=self.token_limit(),
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=self.stop,  # type: ignore[arg-type]  # SamplingParams makes it a tuple
            n=self.n or 1,
            logprobs=self.top_logprobs_count(),
            logit_bias=self.logit_bias or {},  # type: ignore[arg-type]  # checked there
            grammar=self.grammar,
        )

    def response_format_dict(self) -> dict[str, Any] | None:
        if self.response_format is None:
            return None
        return self.response_format.model_dump(by_alias=True, exclude_none=True)


class ChatCompletionRequest(_GenerationRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = Field(
        None, description="Newer name of max_tokens; wins when both are given."
    )
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = Field(None, description="Needs logprobs: true.")
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def top_logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump(exclude_none=True) for m in self.messages]

    def tool_dicts(self) -> list[dict[str, Any]]:
        return [t.model_dump(exclude_none=True) for t in self.tools or ()]

    def tool_choice_value(self) -> str | dict[str, Any] | None:
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.model_dump()
        return self.tool_choice


class CompletionRequest(_GenerationRequest):
    prompt: Text | Annotated[list[Text], Field(min_length=1, max_length=1)] = Field(
        description="A string, or a list holding exactly one string."
    )
    echo: bool | None = False
    logprobs: TopLogprobs | None = Field(
        None, description="Log-probability of each token and of this many alternatives."
    )
    best_of: int | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_prompt_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v is not None and info.data.get("echo"):
            raise ValueError("echo with logprobs (the prompt's log-probabilities) is not "
                             "supported")
        return v

    def top_logprobs_count(self) -> int | None:
        return self.logprobs

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


class _NoNulls(BaseModel):
    """A response part whose null fields are left out, as OpenAI does for deltas and calls."""

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class FunctionCallOut(BaseModel):
    name: str
    arguments: str


class ToolCallOut(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    # The model's reasoning apart from its answer (gpt-oss's analysis channel), under the name
    # llama.cpp's server and other OpenAI-compatible servers give it.
    reasoning_content: str | None = None
    tool_calls: list[ToolCallOut] | None = None

    @model_serializer(mode="wrap")
    def _calls_if_any(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out = handler(self)
        for key in ("tool_calls", "reasoning_content"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


class TopLogprobOut(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobOut(TopLogprobOut):
    top_logprobs: list[TopLogprobOut]


class ChoiceLogprobs(BaseModel):
    """OpenAI's chat `logprobs`: one entry per generated token."""

    content: list[TokenLogprobOut] | None
    refusal: None = None


class CompletionLogprobs(BaseModel):
    """The completions API's (legacy) `logprobs` shape."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class FunctionDeltaOut(_NoNulls):
    name: str | None = None
    arguments: str | None = None


class ToolCallDeltaOut(_NoNulls):
    """A piece of a streamed call: the first has id, type and name, the rest arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDeltaOut


class ChatDelta(_NoNulls):
    """What a chunk adds; OpenAI leaves out the fields a delta does not carry (the first chunk
    has the role, the next ones content or tool_calls, the last one nothing)."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDeltaOut] | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
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
    logprobs: CompletionLogprobs | None = None
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


class TokenizeRequest(_Strict):
    """llama.cpp server's /tokenize: the ids a prompt of this text would get."""

    content: Text
    with_pieces: bool = Field(False, description="Also each token's text.")


class TokenPiece(BaseModel):
    id: int
    piece: str | list[int] = Field(description="The token's text, or its bytes when they are "
                                                "not valid UTF-8 on their own.")


class TokenizeResponse(BaseModel):
    tokens: list[int] | list[TokenPiece]


class DetokenizeRequest(_Strict):
    tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=MAX_TOKENS_IN)]


class DetokenizeResponse(BaseModel):
    content: str


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
    for model in (ChatCompletionRequest, CompletionRequest, ChatMessage, StreamOptions,
                  TextPart, ToolCallIn, FunctionCallIn, ToolDef, FunctionDef, NamedToolChoice,
                  NamedFunction, JsonSchemaFormat, JsonSchemaSpec, TokenizeRequest,
                  DetokenizeRequest)
    for name in model.model_fields
) | {"schema"}
