"""`mashup select`: rank the zoo's entries on a target dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mashup.console import print_json, print_table, status_console
from mashup.data.items import check_format
from mashup.errors import check_choice
from mashup.options import DEFAULT_ZOO, FormatOption, JsonFlag, ZooDir

SelectPrecisionOption = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Weights to score with (acc / nll): fp32, or bf16, faster where the hardware "
        "multiplies bf16 natively (most recent CPUs and GPUs) and rarely another prediction; "
        "for gradient, bf16 autocast of its forward and backward pass.",
    ),
]


def _default_base() -> Path:
    from mashup.data.assets import smollm2_dir

    return smollm2_dir()


def select(
    target: Annotated[
        Path, typer.Option("--target", help="Target dataset (JSONL/CSV of MC items).")
    ],
    k: Annotated[int, typer.Option("--k", help="How many entries to select.")] = 2,
    metric: Annotated[
        str, typer.Option("--metric", help="acc | nll | embedding | gradient | random.")
    ] = "acc",
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Entry to leave out (repeatable).")
    ] = None,
    n: Annotated[int, typer.Option("--n", help="Target items to score on.")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the target sample.")] = 0,
    base: Annotated[
        Path | None,
        typer.Option("--base", help="Base model folder (default: the cached SmolLM2-135M)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Rows per forward.")] = 16,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Recompute scores even if cached.")
    ] = False,
    encoder: Annotated[
        Path | None,
        typer.Option("--encoder", help="Sentence encoder folder for --metric embedding."),
    ] = None,
    prefilter: Annotated[
        int | None,
        typer.Option(
            "--prefilter",
            help="Score only the top M entries by embedding with the LM (acc / nll).",
        ),
    ] = None,
    halving: Annotated[
        bool,
        typer.Option(
            "--halving",
            help="Successive halving (acc / nll): cut the weaker half of the entries on a "
            "few items, then score the rest on more.",
        ),
    ] = False,
    format: FormatOption = "mc",
    precision: SelectPrecisionOption = "fp32",
    zoo: ZooDir = DEFAULT_ZOO,
    as_json: JsonFlag = False,
) -> None:
    """Score every compatible zoo entry on target train items and rank them."""
    from mashup.select.core import SCORE_PRECISIONS, select_entries
    from mashup.train.commands import _quiet_transformers

    _quiet_transformers()
    console = status_console(as_json)
    result = select_entries(
        target,
        zoo,
        base if base is not None else _default_base(),
        k=k,
        metric=metric,
        exclude=exclude,
        n=n,
        seed=seed,
        batch_size=batch_size,
        use_cache=not no_cache,
        encoder=encoder,
        prefilter=prefilter,
        halving=halving,
        format=check_format(format, "--format"),
        precision=check_choice(precision, SCORE_PRECISIONS, "--precision"),
        console=console,
    )
    if as_json:
        print_json(result.to_dict())
        return
    rows = [
        (
            i + 1,
            c.name,
            c.task,
            c.kind,
            f"{c.score:.4f}",
            str(c.items if c.items is not None else result.n),
            "yes" if c.cached else "",
            "*" if c.name in result.selected else "",
        )
        for i, c in enumerate(result.ranking)
    ]
    print_table(
        f"{result.metric} on {result.target}",
        ["rank", "entry", "task", "kind", result.metric, "items", "cached", "selected"],
        rows,
    )
    for dropped in result.prefiltered:
        console.print(
            f"pre-filtered out {dropped.name}: embedding similarity {dropped.score:.4f}",
            markup=False,
        )
    for skip in result.skipped:
        console.print(f"skipped {skip['name']}: {skip['reason']}", markup=False)
    console.print(
        f"selected {', '.join(result.selected)} in {result.seconds:.1f} s "
        f"({result.forwards} forward passes)"
    )
    if result.margin is not None:
        console.print(result.margin.describe(), markup=False)
