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
    as_json: JsonFlag = False,
) -> None:
    """Merge models or LoRA adapters as CONFIG says and write the result to OUT_DIR."""
    from mashup.merge import MergeConfig
    from mashup.merge import merge as run_merge

    cfg = MergeConfig.from_yaml(config)
    result = run_merge(
        cfg, out_dir, zoo=zoo, force=force, allow_pickle=allow_pickle, progress=not as_json
    )
    if as_json:
        print_json(result)
        return
    print_table(
        "merge",
        ["output", "kind", "method", "tensors", "seconds"],
        [[result.out_dir, result.kind, result.method, result.n_tensors, result.seconds]],
    )
    status_console(as_json).print(f"wrote {result.out_dir}")
