"""Packager errors: each is a user-facing one-line message (the CLI prints it, no traceback)."""

from __future__ import annotations

from contract.errors import EdgemoeError


class PackError(EdgemoeError):
    """Base of every deliberate packager failure."""


class CheckpointError(PackError):
    """A checkpoint that is missing, corrupt or truncated; the message names the file."""


class UnsupportedArchitectureError(PackError):
    """An architecture no adapter handles, or a dense (non-MoE) model."""


class OutputExistsError(PackError):
    """The output directory exists and --force was not given."""


class DiskSpaceError(PackError):
    """Not enough free space where the bundle is being written."""
