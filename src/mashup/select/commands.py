"""CLI commands of the `select` stage (placeholder until the stage lands)."""

from __future__ import annotations

from mashup.errors import MashupError


def select() -> None:
    """Placeholder."""
    raise MashupError("not implemented yet")
