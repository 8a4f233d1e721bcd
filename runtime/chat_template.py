"""Rendering a bundle's chat template (Jinja, sandboxed, as transformers and llama.cpp do)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from runtime.errors import ChatTemplateError

ROLES = ("system", "user", "assistant")


def validate_messages(messages: Any) -> list[dict[str, str]]:
    """Role and content of each message, checked; errors name the message by index."""
    if not isinstance(messages, list | tuple) or not messages:
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

    msgs = validate_messages(messages)
    if not template:
        raise ChatTemplateError("this bundle has no chat template; use a plain prompt")
    try:
        return _compiled(template).render(
            messages=msgs, add_generation_prompt=add_generation_prompt, bos_token="", eos_token=""
        )
    except TemplateError as e:
        raise ChatTemplateError(f"chat template failed: {e}") from None


@lru_cache(maxsize=8)
def _compiled(template: str):
    """Compiling costs ~1 ms; a bundle has one template, so keep it."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(template)
