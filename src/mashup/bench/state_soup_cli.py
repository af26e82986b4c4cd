"""`mashup bench state-soup`: the State Soup experiments (exactness, MQAR soup, LM, cost)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mashup.console import print_json, status_console
from mashup.options import JsonFlag


def state_soup(
    only: Annotated[
        str,
        typer.Option("--only", help="Comma list of exactness, mqar_soup, domain_lm, cost."),
    ] = "exactness,mqar_soup,domain_lm,cost",
    out: Annotated[
        Path, typer.Option("--out", help="Results folder; finished experiments are kept.")
    ] = Path("runs/state_soup"),
    quick: Annotated[
        bool, typer.Option("--quick", help="Tiny budgets (minutes), for a smoke check.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """State Soup experiments; writes OUT/<experiment>.json, OUT/state_soup.md and a plot."""
    from mashup.bench.state_soup import markdown, plot, run_all
    from mashup.data.assets import default_cache_dir

    console = status_console(as_json)
    names = tuple(name.strip() for name in only.split(",") if name.strip())
    results = run_all(
        out, default_cache_dir() / "state_soup", only=names, quick=quick, log=console.print
    )
    command = "mashup bench state-soup" + (" --quick" if quick else "") + f" --only {only}"
    report = markdown(results, command)
    (out / "state_soup.md").write_text(report + "\n")
    picture = plot(results, out / "state_soup.png")
    if as_json:
        print_json({"results": results, "report": str(out / "state_soup.md"),
                    "plot": str(picture) if picture else None})  # fmt: skip
        return
    console.print(report, soft_wrap=True, markup=False)
