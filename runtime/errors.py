"""Domain errors of the runtime; the HTTP layer maps these to status codes in one place."""

from __future__ import annotations

from contract.errors import BundleError, EdgemoeError

__all__ = [
    "BudgetError",
    "BundleError",
    "ChatTemplateError",
    "EdgemoeError",
    "ModelCorruptError",
    "PromptTooLongError",
    "SamplingError",
]


class BudgetError(EdgemoeError):
    """A memory budget that cannot be parsed or is below what the model needs."""


class ModelCorruptError(EdgemoeError):
    """A weight the model needs is damaged: its bytes differ from the manifest's checksum, or
    storage could not deliver them (an I/O error, a file cut short). The message names the file,
    the tensor and the byte range; the model answers nothing more until it is replaced or
    repaired (`edgemoe pull`)."""


class PromptTooLongError(EdgemoeError, ValueError):
    """The prompt (plus max_tokens where asked) does not fit the context window."""

    def __init__(self, n_prompt: int, n_ctx: int, max_tokens: int = 0) -> None:
        self.n_prompt, self.n_ctx, self.max_tokens = n_prompt, n_ctx, max_tokens
        if max_tokens:
            msg = (
                f"prompt of {n_prompt} tokens plus max_tokens={max_tokens} exceeds the context "
                f"window of {n_ctx} tokens"
            )
        else:
            msg = f"prompt of {n_prompt} tokens exceeds the context window of {n_ctx} tokens"
        super().__init__(msg)


class SamplingError(EdgemoeError, ValueError):
    """A sampling parameter out of its valid range."""


class ChatTemplateError(EdgemoeError, ValueError):
    """Messages that the bundle's chat template cannot render."""
