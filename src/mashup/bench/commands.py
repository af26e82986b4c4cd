"""`mashup bench ...`: benchmarks that users run from the CLI."""

from __future__ import annotations

import typer

from mashup.bench.mqar_cli import mqar
from mashup.bench.state_soup_cli import state_soup

app = typer.Typer(help="Benchmarks: MQAR associative recall, State Soup.", no_args_is_help=True)
app.command("mqar")(mqar)
app.command("state-soup")(state_soup)
