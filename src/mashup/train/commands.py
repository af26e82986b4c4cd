"""CLI commands of the `train` stage (placeholder until the stage lands)."""

from __future__ import annotations

from mashup.errors import MashupError


def train() -> None:
    """Placeholder."""
    raise MashupError("not implemented yet")


def run() -> None:
    """Placeholder."""
    raise MashupError("not implemented yet")


def zoo_build() -> None:
    """Placeholder."""
    raise MashupError("not implemented yet")
