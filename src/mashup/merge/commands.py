"""CLI command of the merge stage: ``mashup merge CONFIG OUT_DIR``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mashup.console import print_json, print_table, status_console
from mashup.options import DEFAULT_ZOO, JsonFlag, ZooDir


def merge(
    config: Annotated[Path, typer.Argument(help="Merge config (mergekit YAML subset).")],
    out_dir: Annotated[Path, typer.Argument(help="Output directory (must not exist).")],
    force: Annotated[bool, typer.Option("--force", help="Replace OUT_DIR if it exists.")] = False,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Accept pickle checkpoints (loaded with torch.load(weights_only=True)).",
        ),
    ] = False,
    zoo: ZooDir = DEFAULT_ZOO,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            min=0,
            help="torch intra-op threads for this command (0: torch's default). The merge runs "
            "in small cache-sized chunks, where one thread is fastest and never waits for a "
            "core that another process holds.",
        ),
    ] = 1,
    as_json: JsonFlag = False,
) -> None:
    """Merge models or LoRA adapters as CONFIG says and write the result to OUT_DIR."""
    import torch

    from mashup.merge import MergeConfig
    from mashup.merge import merge as run_merge

    cfg = MergeConfig.from_yaml(config)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)  # for this command only: restored below
    try:
        result = run_merge(
            cfg, out_dir, zoo=zoo, force=force, allow_pickle=allow_pickle, progress=not as_json
        )
    finally:
        torch.set_num_threads(previous)
    if as_json:
        print_json(result)
        return
    print_table(
        "merge",
        ["output", "kind", "method", "tensors", "seconds"],
        [[result.out_dir, result.kind, result.method, result.n_tensors, result.seconds]],
    )
    status_console(as_json).print(f"wrote {result.out_dir}")
