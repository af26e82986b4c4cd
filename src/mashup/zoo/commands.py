"""CLI commands of the `zoo` stage (placeholder until the stage lands)."""

from __future__ import annotations

import typer

from mashup.errors import MashupError

app = typer.Typer(help="zoo commands.", no_args_is_help=True)


@app.command("todo")
def todo() -> None:
    """Placeholder."""
    raise MashupError("not implemented yet")
