"""What every command prints: result lines, silenced by ``-q``."""

from __future__ import annotations

import click

__all__ = ["_quiet", "_say"]


def _quiet() -> bool:
    return bool((click.get_current_context().find_root().obj or {}).get("quiet"))


def _say(text: str) -> None:
    """Print a result line (tables, statuses, "wrote ..."), unless -q."""
    if not _quiet():
        click.echo(text)
