"""`mashup bench mqar`: the MQAR grid (resumable) and the smoke configuration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from mashup.console import print_json, print_table, status_console
from mashup.errors import MashupError
from mashup.options import JsonFlag

T = TypeVar("T")

# The smoke configuration: ReBased must reach 0.9 within 5 minutes on 2 cores. The cosine
# schedule spans the whole budget so the learning rate has annealed when time runs out.
SMOKE = {
    "model": "rebased",
    "d_model": 32,
    "seq_len": 48,
    "num_kv_pairs": 12,
    "n_heads": 2,
    "lr": 3e-3,
    "train_examples": 20_000,
    "epochs": 24,
    "batch_size": 64,
    "time_limit_s": 300.0,
    "target": 0.9,
}


def _parse_list(option: str, text: str, convert: Callable[[str], T]) -> list[T]:
    try:
        values = [convert(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise MashupError(
            f"{option}: cannot parse {text!r} ({exc})", hint=f"give a comma list, e.g. {option} 1,2"
        ) from exc
    if not values:
        raise MashupError(f"{option} is empty", hint=f"give a comma list, e.g. {option} 1,2")
    return values


def run_smoke(as_json: bool, time_limit: bool = True) -> dict:
    """ReBased on the smoke configuration; reports when it first reached the target accuracy.

    ``time_limit=False`` trains the whole epoch budget whatever the machine's speed (the test);
    the 5-minute bar itself is measured by the CLI, not asserted in tests.
    """
    from mashup.bench.mqar import model_config, train_mqar
    from mashup.data.mqar import MQARConfig

    console = status_console(as_json)
    s = SMOKE
    config = model_config(s["model"], s["d_model"], n_heads=s["n_heads"])
    data = MQARConfig(seq_len=s["seq_len"], num_kv_pairs=s["num_kv_pairs"])

    def report(record: dict) -> None:
        console.print(
            f"epoch {record['epoch']}: loss {record['loss']:.3f}, "
            f"val acc {record['val_acc']:.3f} ({record['seconds']:.0f} s)"
        )

    outcome = train_mqar(
        config,
        data,
        train_examples=s["train_examples"],
        epochs=s["epochs"],
        lr=s["lr"],
        batch_size=s["batch_size"],
        time_limit_s=s["time_limit_s"] if time_limit else None,
        progress=report,
    )
    reached = next((r for r in outcome.history if r["val_acc"] >= s["target"]), None)
    return {
        "config": s,
        "val_acc": outcome.val_acc,
        "seconds": round(outcome.seconds, 1),
        "reached_target": reached is not None,
        "seconds_to_target": round(reached["seconds"], 1) if reached else None,
        "history": outcome.history,
    }


def mqar(
    models: Annotated[
        str, typer.Option("--models", help="Comma list of based, rebased, attention.")
    ] = "based,rebased",
    d_model: Annotated[str, typer.Option("--d-model", help="Comma list of widths.")] = "32,64,128",
    seq_len: Annotated[
        str, typer.Option("--seq-len", help="Comma list of sequence lengths.")
    ] = "64,128,256",
    kv: Annotated[
        str, typer.Option("--kv", help="'auto' (seq_len/16, zoology's grid) or a comma list.")
    ] = "auto",
    lrs: Annotated[
        str, typer.Option("--lrs", help="Learning rates to sweep (best per cell is reported).")
    ] = "1e-3,3e-3,1e-2",
    seeds: Annotated[str, typer.Option("--seeds", help="Comma list of seeds.")] = "0,1,2",
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 16,
    train_examples: Annotated[int, typer.Option("--train-examples", min=1)] = 20_000,
    val_examples: Annotated[int, typer.Option("--val-examples", min=1)] = 1_000,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 64,
    heads: Annotated[int, typer.Option("--heads", min=1, help="Attention heads.")] = 2,
    feature_dim: Annotated[int, typer.Option("--feature-dim", min=1)] = 16,
    time_limit: Annotated[
        float | None, typer.Option("--time-limit", help="Seconds per training run (cap).")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Results folder; an existing one is resumed.")
    ] = Path("runs/mqar"),
    smoke: Annotated[
        bool,
        typer.Option("--smoke", help="Only the smoke run (ReBased, ≥ 0.9 in 5 min)."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """MQAR associative recall: a resumable grid of models × d_model × seq-len, table and plot."""
    if smoke:
        result = run_smoke(as_json)
        if as_json:
            print_json(result)
        else:
            verdict = "reached" if result["reached_target"] else "did NOT reach"
            status_console(False).print(
                f"ReBased {verdict} {SMOKE['target']} (final {result['val_acc']:.3f}, "
                f"{result['seconds']} s)"
            )
        return

    from mashup.bench.mqar import GridSettings, run_grid, write_report

    settings = GridSettings(
        models=_parse_list("--models", models, str),
        d_models=_parse_list("--d-model", d_model, int),
        seq_lens=_parse_list("--seq-len", seq_len, int),
        kv_pairs=None if kv.strip() == "auto" else _parse_list("--kv", kv, int),
        lrs=_parse_list("--lrs", lrs, float),
        seeds=_parse_list("--seeds", seeds, int),
        epochs=epochs,
        train_examples=train_examples,
        val_examples=val_examples,
        batch_size=batch_size,
        n_heads=heads,
        feature_dim=feature_dim,
        time_limit_s=time_limit,
    )
    settings.validate()  # every cell, before any training
    console = status_console(as_json)
    total = len(settings.runs())

    def report(record: dict) -> None:
        key = record["key"]
        console.print(
            f"{key['model']} d={key['d_model']} L={key['seq_len']} kv={key['num_kv_pairs']} "
            f"lr={key['lr']:g} seed={key['seed']}: acc {record['val_acc']:.3f} "
            f"({record['epochs_run']} epochs, {record['seconds']:.0f} s)"
        )

    console.print(f"{total} runs in the grid; results in {out}/results.jsonl")
    records = run_grid(settings, out, on_result=report)
    cells, _, plot = write_report(records, out)
    summary = [cell.__dict__ for cell in cells]
    if as_json:
        print_json({"cells": summary, "plot": str(plot), "results": str(out / "results.jsonl")})
        return
    print_table(
        "MQAR accuracy (best lr per cell, mean ± std over seeds)",
        ["model", "d_model", "seq_len", "kv", "best lr", "accuracy", "paper"],
        [
            [
                c.model,
                c.d_model,
                c.seq_len,
                c.num_kv_pairs,
                f"{c.best_lr:g}",
                f"{c.mean:.3f} ± {c.std:.3f} (n={c.n_seeds})",
                "" if c.paper is None else f"≈ {c.paper:.2f}",
            ]
            for c in cells
        ],
    )
    console.print(f"plot: {plot}")
