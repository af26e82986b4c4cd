"""CLI commands of the `eval` stage (placeholder until the stage lands)."""

from __future__ import annotations

from mashup.errors import MashupError


def evaluate() -> None:
    """Placeholder."""
    raise MashupError("not implemented yet")
