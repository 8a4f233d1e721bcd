"""gpt-oss's tokenizer side for fixtures: o200k's split pattern, the harmony special tokens and a
harmony chat template, as the released checkpoints have them (at the fixtures' vocabulary size).

The released tokenizer splits text with o200k's pattern (llama.cpp's "gpt-4o" pre-tokenizer) and
marks conversation structure with special tokens: `<|start|>ROLE<|channel|>CHANNEL<|message|>
TEXT<|end|>`, an answer ends with `<|return|>`, a function call with `<|call|>`. The chat
template below is edgemoe's own; it renders what the released template renders for system,
developer, user, assistant (final answers, reasoning kept before a call), function calls and
their results, and the functions as a TypeScript namespace.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer

from edgemoe_fixtures.tokenizer import MODEL_MAX_LENGTH, trained_json

# o200k's split pattern, character for character as tokenizer.json stores it (the GGUF writer
# maps this exact string to llama.cpp's "gpt-4o" pre-tokenizer).
O200K_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENDOFTEXT, RETURN, CALL = "<|endoftext|>", "<|return|>", "<|call|>"
SPECIAL_TOKENS = (
    ENDOFTEXT, "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", RETURN, CALL,
)  # fmt: skip

CHAT_TEMPLATE = r"""{#- harmony (gpt-oss). Keyword arguments: reasoning_effort (default "medium"),
    model_identity. An assistant message's `thinking` is its analysis channel. -#}
{%- macro ts(s) -%}
    {%- if s.type == "array" -%}
        {%- set it = s["items"] -%}
        {%- if not it -%}
            {{- "any[]" -}}
        {%- elif it.type in ("string", "boolean") -%}
            {{- it.type + "[]" -}}
        {%- elif it.type in ("number", "integer") -%}
            {{- "number[]" -}}
        {%- else -%}
            {%- set inner = ts(it) -%}
            {{- ("any" if inner|length > 50 else inner) + "[]" -}}
        {%- endif -%}
        {{- " | null" if s.nullable else "" -}}
    {%- elif s.type == "string" and s.enum -%}
        {{- '"' + s.enum|join('" | "') + '"' -}}
    {%- elif s.type == "string" -%}
        {{- "string" + (" | null" if s.nullable else "") -}}
    {%- elif s.type in ("number", "integer") -%}
        {{- "number" -}}
    {%- elif s.type == "boolean" -%}
        {{- "boolean" -}}
    {%- else -%}
        {{- "any" -}}
    {%- endif -%}
{%- endmacro -%}
{%- macro functions(tools) -%}
    {{- "## functions\n\nnamespace functions {\n\n" -}}
    {%- for t in tools -%}
        {%- set f = t.function if t.function is defined else t -%}
        {%- if f.description -%}
            {{- "// " + f.description + "\n" -}}
        {%- endif -%}
        {%- set props = f.parameters.properties if f.parameters else none -%}
        {%- if props -%}
            {{- "type " + f.name + " = (_: {\n" -}}
            {%- for name, p in props.items() -%}
                {%- if p.description -%}
                    {{- "// " + p.description + "\n" -}}
                {%- endif -%}
                {{- name + ("" if name in (f.parameters.required or []) else "?") + ": " -}}
                {{- ts(p) -}}
                {%- if p.default is defined -%}
                    {{- ", // default: " + (p.default|string if p.enum else p.default|tojson) -}}
                {%- endif -%}
                {{- ",\n" -}}
            {%- endfor -%}
            {{- "}) => any;\n\n" -}}
        {%- else -%}
            {{- "type " + f.name + " = () => any;\n\n" -}}
        {%- endif -%}
    {%- endfor -%}
    {{- "} // namespace functions" -}}
{%- endmacro -%}
{%- set identity = model_identity if model_identity is defined
    else "You are ChatGPT, a large language model trained by OpenAI." -%}
{%- set effort = reasoning_effort if reasoning_effort is defined else "medium" -%}
{{- "<|start|>system<|message|>" + identity + "\nKnowledge cutoff: 2024-06\nCurrent date: "
    + strftime_now("%Y-%m-%d") + "\n\nReasoning: " + effort + "\n\n# Valid channels: "
    + "analysis, commentary, final. Channel must be included for every message." -}}
{%- if tools -%}
    {{- "\nCalls to these tools must go to the commentary channel: 'functions'." -}}
{%- endif -%}
{{- "<|end|>" -}}
{%- set rest = messages -%}
{%- set instructions = "" -%}
{%- if messages and messages[0].role in ("system", "developer") -%}
    {%- set instructions = messages[0].content -%}
    {%- set rest = messages[1:] -%}
{%- endif -%}
{%- if instructions or tools -%}
    {{- "<|start|>developer<|message|>" -}}
    {%- if instructions -%}
        {{- "# Instructions\n\n" + instructions + "\n\n" -}}
    {%- endif -%}
    {%- if tools -%}
        {{- "# Tools\n\n" + functions(tools) -}}
    {%- endif -%}
    {{- "<|end|>" -}}
{%- endif -%}
{%- set last = namespace(call=none) -%}
{%- for m in rest -%}
    {%- if m.role == "user" -%}
        {{- "<|start|>user<|message|>" + m.content + "<|end|>" -}}
    {%- elif m.role == "assistant" and m.tool_calls -%}
        {%- set later = namespace(answer=false) -%}
        {%- for n in rest[loop.index:] -%}
            {%- if n.role == "assistant" and not n.tool_calls -%}
                {%- set later.answer = true -%}
            {%- endif -%}
        {%- endfor -%}
        {%- set why = m.thinking or m.content -%}
        {%- if why and not later.answer -%}
            {{- "<|start|>assistant<|channel|>analysis<|message|>" + why + "<|end|>" -}}
        {%- endif -%}
        {%- set call = m.tool_calls[0].function if m.tool_calls[0].function is defined
            else m.tool_calls[0] -%}
        {{- "<|start|>assistant to=functions." + call.name + "<|channel|>commentary json"
            + "<|message|>" + call.arguments|tojson + "<|call|>" -}}
        {%- set last.call = call.name -%}
    {%- elif m.role == "assistant" -%}
        {%- if loop.last and not add_generation_prompt -%}
            {%- if m.thinking -%}
                {{- "<|start|>assistant<|channel|>analysis<|message|>" + m.thinking
                    + "<|end|>" -}}
            {%- endif -%}
            {{- "<|start|>assistant<|channel|>final<|message|>" + m.content + "<|return|>" -}}
        {%- else -%}
            {{- "<|start|>assistant<|channel|>final<|message|>" + m.content + "<|end|>" -}}
        {%- endif -%}
        {%- set last.call = none -%}
    {%- elif m.role == "tool" -%}
        {%- if last.call is none -%}
            {{- raise_exception("a tool message must follow an assistant tool call") -}}
        {%- endif -%}
        {{- "<|start|>functions." + last.call + " to=assistant<|channel|>commentary<|message|>"
            + m.content|tojson + "<|end|>" -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- "<|start|>assistant" -}}
{%- endif -%}"""


# What the harmony fixtures are taught besides Python source: one conversation in the format,
# so a tiny model answers in channels and tests see the runtime split them on real engines. Asked
# about the weather, it reasons, calls `get_weather`; given the result, it answers. The call is
# written as the chat template writes earlier calls (recipient before the channel), so the
# history a client sends back reads as the model wrote it.
CITIES = ("Oslo", "Paris", "Lima", "Cairo", "Tokyo", "Quito")
WEATHER = ("sunny", "rainy", "cold", "windy")
CONVERSATION_SHARE = 0.5  # chance of a conversation after each paragraph, repeated


def training_ids(tok: Tokenizer, text: str, seed: int = 0) -> list[int]:
    """The corpus's ids with weather conversations spliced in between its paragraphs (seeded)."""
    import random

    rng = random.Random(seed)
    out: list[int] = []
    for para in text.split("\n\n"):
        out += tok.encode(para + "\n\n").ids
        while rng.random() < CONVERSATION_SHARE:
            out += tok.encode(conversation(rng.choice(CITIES), rng.choice(WEATHER))).ids
    return out


def conversation(city: str, weather: str) -> str:
    """A user asks, the assistant reasons and calls get_weather, reads the result, answers."""
    return (
        f"<|start|>user<|message|>Weather in {city}?<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>Need the weather.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary json<|message|>"
        f'{{"city": "{city}"}}<|call|>'
        "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"
        f'"{weather}"<|end|>'
        f"<|start|>assistant<|channel|>final<|message|>It is {weather} in {city}.<|return|>"
    )


def train_tokenizer() -> Tokenizer:
    """The harmony fixtures' BPE, trained deterministically like the shared one."""
    return Tokenizer.from_str(trained_json(O200K_PATTERN, SPECIAL_TOKENS, nfc=False))


def token_id(tok: Tokenizer, text: str) -> int:
    found = tok.token_to_id(text)
    if found is None:
        raise ValueError(f"tokenizer: missing special token {text}")
    return found


def save_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    """tokenizer.json and tokenizer_config.json as the released checkpoints have them: answers
    end with <|return|>, padding is <|endoftext|>, no BOS."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=RETURN,
        pad_token=ENDOFTEXT,
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(out_dir, save_jinja_files=False)
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg.update(add_bos_token=False, add_eos_token=False, chat_template=CHAT_TEMPLATE,
               tokenizer_class="PreTrainedTokenizerFast")  # fmt: skip
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
