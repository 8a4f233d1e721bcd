"""Rendering a bundle's chat template (Jinja, sandboxed, as transformers and llama.cpp do)."""

from __future__ import annotations

from typing import Any

ROLES = ("system", "user", "assistant")


def validate_messages(messages: Any) -> list[dict[str, str]]:
    from runtime.api import ChatTemplateError

    if not isinstance(messages, list) or not messages:
        raise ChatTemplateError("messages must be a non-empty list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ChatTemplateError(f"messages[{i}] must be an object")
        if msg.get("role") not in ROLES:
            raise ChatTemplateError(f"messages[{i}].role must be one of {', '.join(ROLES)}")
        if not isinstance(msg.get("content"), str):
            raise ChatTemplateError(f"messages[{i}].content must be a string")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render_chat(template: str | None, messages: Any, add_generation_prompt: bool = True) -> str:
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from runtime.api import ChatTemplateError

    msgs = validate_messages(messages)
    if not template:
        raise ChatTemplateError("this bundle has no chat template; use a plain prompt")
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    try:
        return env.from_string(template).render(
            messages=msgs, add_generation_prompt=add_generation_prompt, bos_token="", eos_token=""
        )
    except TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from None
