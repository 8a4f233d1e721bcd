"""How every edgemoe command reports a deliberate error: one `error:` line, exit 1, no traceback."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import typer


def _user_errors() -> tuple[type[BaseException], ...]:
    from contract.errors import EdgemoeError

    return (EdgemoeError,)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn deliberate errors into one line on stderr and exit code 1 — never a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _user_errors() as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper
