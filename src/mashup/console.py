"""Output helpers shared by the CLI commands: rich for people, one JSON document for tools."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Human-facing output goes to stderr when --json is used, so stdout stays one JSON document.
console = Console()
err_console = Console(stderr=True)


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "model_dump"):  # pydantic models
        return _to_jsonable(obj.model_dump())
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def print_json(obj: Any) -> None:
    """Print exactly one JSON document on stdout (dataclasses and pydantic models allowed)."""
    sys.stdout.write(json.dumps(_to_jsonable(obj), indent=2, default=str) + "\n")
    sys.stdout.flush()


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Render a simple rich table on stdout."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def status_console(as_json: bool) -> Console:
    """Where progress and notes go: stderr when stdout must stay pure JSON."""
    return err_console if as_json else console
