"""CLI commands of the `zoo` stage: add, list, show and remove catalog entries."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mashup.console import console, print_json, print_table, status_console
from mashup.errors import MashupError
from mashup.options import DEFAULT_ZOO, JsonFlag, ZooDir

app = typer.Typer(
    help="Catalog of fine-tunes, adapters and states (the zoo).", no_args_is_help=True
)

_METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/@-]*$")


def parse_metrics(specs: list[str] | None) -> dict[str, float]:
    """Turn ``["acc=0.5", "f1=0.3"]`` into a dict; refuse anything else with a clear message."""
    metrics: dict[str, float] = {}
    for spec in specs or []:
        name, sep, raw = spec.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not _METRIC_NAME.match(name) or not raw:
            raise MashupError(
                f"bad --metric {spec!r}", hint="write name=value, for example --metric acc=0.51"
            )
        try:
            value = float(raw)
        except ValueError as exc:
            raise MashupError(
                f"bad --metric {spec!r}: {raw!r} is not a number",
                hint="write name=value, for example --metric acc=0.51",
            ) from exc
        if not math.isfinite(value):
            raise MashupError(f"bad --metric {spec!r}: value must be a finite number")
        if name in metrics:
            raise MashupError(f"bad --metric {spec!r}: {name!r} given twice")
        metrics[name] = value
    return metrics


def _metrics_text(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={v:g}" for k, v in metrics.items())


@app.command("add")
def add(
    path: Annotated[Path, typer.Argument(help="Model dir, PEFT adapter dir or state file.")],
    task: Annotated[
        str | None,
        typer.Option("--task", help="Task the entry was trained for (states: read if omitted)."),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", help="Dataset id it was trained on.")
    ] = None,
    metric: Annotated[
        list[str] | None,
        typer.Option("--metric", help="name=value, repeatable (e.g. --metric acc=0.51)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Entry name (default: file/dir name).")
    ] = None,
    zoo: ZooDir = DEFAULT_ZOO,
    as_json: JsonFlag = False,
) -> None:
    """Register a model, adapter or state in the zoo (files stay where they are)."""
    from mashup.zoo import Zoo
    from mashup.zoo.catalog import resolve_task
    from mashup.zoo.fingerprint import inspect_path

    metrics = parse_metrics(metric)
    # Validate the input before opening the zoo, so bad input does not even create a catalog.
    resolve_task(path, inspect_path(path).fingerprint, task)
    entry = Zoo.open(zoo).add(path, task=task, dataset=dataset, metrics=metrics, name=name)
    if as_json:
        print_json(entry.to_dict())
        return
    fp = entry.fingerprint
    status_console(as_json).print(
        f"added [bold]{entry.name}[/bold] ({entry.kind}, {fp.architecture}, "
        f"{len(fp.param_shapes)} tensors, digest {fp.digest}) to zoo {zoo}"
    )


@app.command("list")
def list_entries(
    kind: Annotated[
        str | None, typer.Option("--kind", help="Only this kind: model, adapter or state.")
    ] = None,
    task: Annotated[str | None, typer.Option("--task", help="Only entries of this task.")] = None,
    zoo: ZooDir = DEFAULT_ZOO,
    as_json: JsonFlag = False,
) -> None:
    """List the entries (the JSON records leave out per-tensor shapes; see `zoo show`)."""
    from mashup.zoo import Zoo

    catalog = Zoo.open(zoo, create=False)
    entries = catalog.list(kind=kind, task=task)
    if as_json:
        print_json([entry.to_dict(shapes=False) for entry in entries])
        return
    # Names must stay whole on narrow terminals; the other columns fold instead.
    table = Table(title=f"zoo {catalog.root} ({len(entries)} entries)")
    table.add_column("name", no_wrap=True, style="bold")
    for column in ("kind", "task", "dataset", "metrics", "architecture", "digest", "path"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            e.name,
            e.kind,
            e.task,
            e.dataset or "",
            _metrics_text(e.metrics),
            e.fingerprint.architecture or "",
            e.fingerprint.digest,
            str(e.path),
        )
    console.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Entry name.")],
    zoo: ZooDir = DEFAULT_ZOO,
    as_json: JsonFlag = False,
) -> None:
    """Show one entry, its cached scores, and whether its files changed since registration."""
    from mashup.zoo import Zoo

    catalog = Zoo.open(zoo, create=False)
    entry = catalog.get(name)
    changes = catalog.verify(name)
    scores = catalog.scores_of(name)
    status = "changed since registration" if changes else "unchanged"
    if as_json:
        print_json({**entry.to_dict(), "status": status, "changes": changes, "scores": scores})
        return
    fp = entry.fingerprint
    rows: list[tuple[str, Any]] = [
        ("name", entry.name),
        ("kind", entry.kind),
        ("path", entry.path),
        ("task", entry.task),
        ("dataset", entry.dataset),
        ("metrics", _metrics_text(entry.metrics)),
        ("architecture", fp.architecture),
        ("dtype", fp.dtype),
        ("vocab size", fp.vocab_size),
        ("tokenizer hash", fp.tokenizer_hash and fp.tokenizer_hash[:16]),
        ("base model", fp.base_model),
        ("tensors", len(fp.param_shapes)),
        ("digest", fp.digest),
        ("content hash", entry.content_hash[:16]),
        ("registered", entry.created_at),
        ("status", status + (": " + "; ".join(changes) if changes else "")),
    ]
    if fp.adapter:
        rows.append(("adapter", json.dumps(fp.adapter)))
    if "card" in entry.meta:
        rows.append(("model card", json.dumps(entry.meta["card"])))
    if "state" in entry.meta:
        rows.append(("state", json.dumps(entry.meta["state"])))
    rows.extend(
        (f"score {s['target']} {s['metric']}", f"{s['value']:g} (n={s['n']})") for s in scores
    )
    print_table(f"zoo entry {entry.name}", ("field", "value"), rows)
    if changes:
        status_console(as_json).print(
            f"[yellow]warning:[/yellow] {entry.name} changed since registration: "
            + "; ".join(changes)
        )


@app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="Entry name.")],
    zoo: ZooDir = DEFAULT_ZOO,
    as_json: JsonFlag = False,
) -> None:
    """Forget an entry and its cached scores (its files are not deleted)."""
    from mashup.zoo import Zoo

    catalog = Zoo.open(zoo, create=False)
    entry = catalog.get(name)
    catalog.remove(name)
    if as_json:
        print_json({"removed": entry.name, "path": str(entry.path)})
        return
    status_console(as_json).print(f"removed {entry.name} (files left at {entry.path})")
