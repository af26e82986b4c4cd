"""CLI of `mashup bench` (placeholder until it lands)."""

from __future__ import annotations

from mashup.errors import MashupError


def mqar() -> None:
    """Placeholder."""
    raise MashupError("not implemented yet")
