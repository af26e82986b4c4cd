"""CLI of `mashup bench` (placeholder until it lands)."""

from __future__ import annotations

from mashup.errors import MashupError


def state_soup() -> None:
    """Placeholder."""
    raise MashupError("not implemented yet")
