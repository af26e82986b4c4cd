"""CLI command `mashup eval MODEL --data FILE`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mashup.console import print_json, print_table, status_console
from mashup.data.items import check_format
from mashup.errors import MashupError
from mashup.options import FormatOption, JsonFlag


def evaluate(
    model: Annotated[Path, typer.Argument(help="Model folder or PEFT adapter folder.")],
    data: Annotated[Path, typer.Option("--data", help="Items: JSONL, CSV or dataset folder.")],
    base: Annotated[
        Path | None, typer.Option("--base", help="Base model of an adapter (overrides its config).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Score only the first N items.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Shuffle with this seed before --limit.")
    ] = None,
    format: FormatOption = "mc",
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Sequences per forward pass.")
    ] = 8,
    state: Annotated[
        Path | None,
        typer.Option("--state", help="Recurrent state (.safetensors) to start from (State Soup)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Accuracy of a model on multiple-choice items (acc, acc_norm, 95 % CI)."""
    check_format(format, "--format")
    from mashup.data.items import load_items

    console = status_console(as_json)
    items = load_items(data, limit=limit, seed=seed)  # validate the data before loading a model
    if state is not None:
        try:
            from mashup.states import eval_with_state
        except ImportError as exc:
            raise MashupError(
                "--state needs mashup.states.eval_with_state, which this installation lacks",
                hint="evaluate without --state",
            ) from exc
        result = eval_with_state(
            model, data, state, limit=limit, format=format, batch_size=batch_size
        )
    else:
        from rich.progress import MofNCompleteColumn, Progress, TimeRemainingColumn

        from mashup.eval.scoring import evaluate_items, load_model

        with console.status(f"loading {model}"):
            lm, tokenizer = load_model(model, base=base)
        with Progress(
            *Progress.get_default_columns()[:-1],
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            task = progress.add_task(f"scoring {data.name}", total=len(items))
            result = evaluate_items(
                lm,
                tokenizer,
                items,
                format=format,
                batch_size=batch_size,
                progress=lambda: progress.advance(task),
            )
    summary = result.summary() if hasattr(result, "summary") else dict(result)
    summary = {"model": str(model), "data": str(data), **summary}
    if as_json:
        print_json(summary)
        return
    rows = [
        [
            metric,
            f"{summary[metric]:.4f}",
            f"[{summary[metric + '_ci95'][0]:.3f}, {summary[metric + '_ci95'][1]:.3f}]",
        ]
        for metric in ("acc", "acc_norm")
    ]
    rows.append(["nll", f"{summary['nll']:.4f}", ""])
    print_table(
        f"{model.name} on {data.name} (n={summary['n']}, {summary['format']})",
        ["metric", "value", "95% CI"],
        rows,
    )
