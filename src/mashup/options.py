"""CLI options shared by several stages, so every command spells them the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ZooDir = Annotated[
    Path,
    typer.Option(
        "--zoo",
        envvar="MASHUP_ZOO",
        help="Zoo directory holding the catalog (default ./zoo; env MASHUP_ZOO).",
    ),
]
JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print one JSON document on stdout instead of tables.")
]
FormatOption = Annotated[
    str,
    typer.Option(
        "--format",
        help="mc: choice text scored by log-likelihood (lm-eval); letter: the Mashup paper's "
        "chat prompt with lettered choices, answered with the letter.",
    ),
]
DEFAULT_ZOO = Path("zoo")
