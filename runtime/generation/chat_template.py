"""Rendering a bundle's chat template (Jinja, sandboxed, as transformers and llama.cpp do).

Messages are OpenAI's: system (or developer), user, assistant (possibly with `tool_calls`) and
tool results (`role: "tool"` with `tool_call_id`); `content` is a string or a list of text parts,
joined with newlines. A harmony template (gpt-oss) gets `tools=` and the messages, an assistant's
`reasoning_content` as its `thinking` (runtime.structured.harmony). A template that renders
tools itself in edgemoe's call syntax (`supports_tools`: it uses `tools` and `<tool_call>`, as
Qwen2/Qwen3/Hermes templates do) gets `tools=` and the messages as they are. Any other template
sees plain messages only: the functions are described in a system message, earlier calls are
written back in the call syntax and tool results become user messages in <tool_response>
blocks (`runtime.structured.tools`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.errors import ChatTemplateError
from runtime.generation.template_sandbox import TemplateTooCostly, render_bounded
from runtime.structured.harmony import harmony_messages, is_harmony
from runtime.structured.tools import (
    ToolChoice,
    ToolSpec,
    call_text,
    fallback_system_text,
    response_text,
)

ROLES = ("system", "developer", "user", "assistant", "tool")
_USES_TOOLS = re.compile(r"\btools\b")


def supports_tools(template: str | None) -> bool:
    """Whether the template renders tools itself, in the call syntax edgemoe enforces."""
    return bool(template) and bool(_USES_TOOLS.search(template or "")) and \
        "<tool_call>" in (template or "")


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or \
                    not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise ChatTemplateError(f"{where}[{j}] has type {kind!r}; only text parts "
                                        "({type: text, text}) are supported")
            parts.append(part["text"])
        return "\n".join(parts)
    raise ChatTemplateError(f"{where} must be a string or a list of text parts")


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise ChatTemplateError(f"{where} must be a list")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise ChatTemplateError(f"{where}[{j}] must be {{id, type: function, function: "
                                    "{name, arguments}}")
        args = fn.get("arguments", "{}")
        if isinstance(args, str):
            try:
                parsed = json.loads(args)
                args = parsed if isinstance(parsed, dict) else args
            except ValueError:
                pass
        out.append({"id": str(call.get("id") or f"call_{j}"), "type": "function",
                    "function": {"name": fn["name"], "arguments": args}})
    return out


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Messages checked and normalised; errors name the message by index. Plain messages come
    out as {role, content} only, exactly what templates without tool support expect."""
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence) \
            or not messages:
        raise ChatTemplateError("messages must be a non-empty list")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise ChatTemplateError(f"messages[{i}] must be an object")
        role = msg.get("role")
        if role not in ROLES:
            raise ChatTemplateError(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        calls = msg.get("tool_calls") if role == "assistant" else None
        content = msg.get("content")
        if content is None and calls:
            content = ""
        norm: dict[str, Any] = {"role": "system" if role == "developer" else role,
                                "content": _text(content, f"messages[{i}].content")}
        if calls:
            norm["tool_calls"] = _tool_calls(calls, f"messages[{i}].tool_calls")
        if role == "tool":
            call_id = msg.get("tool_call_id")
            if not isinstance(call_id, str):
                raise ChatTemplateError(f"messages[{i}].tool_call_id must be a string")
            norm["tool_call_id"] = call_id
        out.append(norm)
    return out


def render_chat(
    template: str | None,
    messages: Any,
    add_generation_prompt: bool = True,
    tools: Sequence[ToolSpec] = (),
    tool_choice: ToolChoice | None = None,
) -> str:
    """The prompt for `messages`; `tools` are shown unless tool_choice is "none"."""
    msgs = validate_messages(messages)
    if not template:
        raise ChatTemplateError("this bundle has no chat template; use a plain prompt")
    shown = tuple(tools) if tool_choice is None or tool_choice.mode != "none" else ()
    if is_harmony(template):  # gpt-oss: the template writes the functions and calls itself
        extra = {"tools": [t.as_openai() for t in shown]} if shown else {}
        return _render(template, harmony_messages(msgs, messages), add_generation_prompt,
                       **extra)
    if supports_tools(template):
        extra = {"tools": [t.as_openai() for t in shown]} if shown else {}
        return _render(template, msgs, add_generation_prompt, **extra)
    if not shown and not any(m["role"] == "tool" or "tool_calls" in m for m in msgs):
        return _render(template, msgs, add_generation_prompt)
    plain = _plain_messages(msgs)
    if not shown:
        return _render(template, plain, add_generation_prompt)
    note = fallback_system_text(shown, tool_choice or ToolChoice("auto"))
    if plain[0]["role"] == "system":
        plain[0] = {"role": "system", "content": f"{plain[0]['content']}\n\n{note}"}
        return _render(template, plain, add_generation_prompt)
    try:
        return _render(template, [{"role": "system", "content": note}, *plain],
                       add_generation_prompt)
    except TemplateTooCostly:
        raise
    except ChatTemplateError:  # a template that refuses system messages: tell the user turn
        first = next((i for i, m in enumerate(plain) if m["role"] == "user"), 0)
        plain[first] = {**plain[first], "content": f"{note}\n\n{plain[first]['content']}"}
        return _render(template, plain, add_generation_prompt)


def _plain_messages(msgs: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Tool calls and results as text, for templates that only know system/user/assistant;
    consecutive tool results share one user message so the turns still alternate."""
    out: list[dict[str, str]] = []
    merge = False
    for m in msgs:
        if m["role"] == "tool":
            text = response_text(m["content"])
            if merge:
                out[-1] = {"role": "user", "content": f"{out[-1]['content']}\n{text}"}
            else:
                out.append({"role": "user", "content": text})
            merge = True
            continue
        merge = False
        content = m["content"]
        if m.get("tool_calls"):
            calls = "\n".join(call_text(c["function"]["name"], c["function"]["arguments"])
                              for c in m["tool_calls"])
            content = f"{content}\n{calls}" if content else calls
        out.append({"role": m["role"], "content": content})
    return out


def _render(template: str, msgs: list[Any], add_generation_prompt: bool, **extra: Any) -> str:
    return render_bounded(template, messages=msgs, add_generation_prompt=add_generation_prompt,
                          bos_token="", eos_token="", **extra)
