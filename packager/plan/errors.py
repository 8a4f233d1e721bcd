"""The planner's one error type, shared by every module of the planner."""

from __future__ import annotations

from packager.errors import PackError


class PlanError(PackError, ValueError):
    """Inputs the planner cannot use; the message names the field and what was expected."""
