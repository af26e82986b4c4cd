"""CLI commands of the `merge` stage (placeholder until the stage lands)."""

from __future__ import annotations

from mashup.errors import MashupError


def merge() -> None:
    """Placeholder."""
    raise MashupError("not implemented yet")
