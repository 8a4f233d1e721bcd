"""Reading a Hugging Face config.json: the one place that knows fields get renamed across
families and versions (num_experts / num_local_experts / n_routed_experts), and that a missing
field is an unsupported checkpoint, named in one line."""

from __future__ import annotations

from typing import Any

from packager.errors import UnsupportedArchitectureError


class ConfigFields:
    """Mixin for adapters holding `self.config` (the parsed config.json)."""

    config: dict[str, Any]

    @property
    def architecture(self) -> str:
        return (self.config.get("architectures") or ["?"])[0]

    def req(self, key: str) -> Any:
        """A field that must be set."""
        if self.config.get(key) is None:
            raise UnsupportedArchitectureError(
                f"config.json: missing '{key}' for {self.architecture}"
            )
        return self.config[key]

    def find(self, *keys: str) -> Any:
        """The first of several names that is set: transformers renames fields."""
        for key in keys:
            if self.config.get(key) is not None:
                return self.config[key]
        raise UnsupportedArchitectureError(
            f"config.json: none of {', '.join(keys)} is set for {self.architecture}"
        )
