"""`slimkit compress` commands (filled in by its technique family)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this family's commands to the app."""
