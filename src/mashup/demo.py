"""`mashup demo` (placeholder until the pipeline lands)."""

from __future__ import annotations

from mashup.errors import MashupError


def demo() -> None:
    """Placeholder."""
    raise MashupError("not implemented yet")
