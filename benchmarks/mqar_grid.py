"""MQAR grid on CPU: Based vs ReBased by d_model and sequence length (resumable).

    python benchmarks/mqar_grid.py                 # the grid recorded in the README
    python benchmarks/mqar_grid.py --shard 0/2 &   # two processes share the grid
    python benchmarks/mqar_grid.py --shard 1/2 &
    python benchmarks/mqar_grid.py --report        # table, summary and plot from what finished

Results: benchmarks/results/mqar/{results.jsonl, results.md, summary.json, mqar.png}. Each
finished run is one line of results.jsonl; re-running skips finished runs. The plot and table
report the best learning rate per cell (mean ± std over seeds) and the paper's reference points.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from mashup.bench.mqar import GridSettings, run_grid, write_report

OUT = Path(__file__).parent / "results" / "mqar"


def settings(args: argparse.Namespace) -> GridSettings:
    return GridSettings(
        models=args.models.split(","),
        d_models=[int(v) for v in args.d_model.split(",")],
        seq_lens=[int(v) for v in args.seq_len.split(",")],
        kv_pairs=None,  # zoology's seq_len / 16
        lrs=[float(v) for v in args.lrs.split(",")],
        seeds=[int(v) for v in args.seeds.split(",")],
        epochs=args.epochs,
        train_examples=20_000,
        val_examples=1_000,
        batch_size=64,
        n_heads=2,
    )


def report(grid: GridSettings, out: Path) -> None:
    from mashup.bench.mqar import read_results

    wanted = {key.as_id() for key in grid.runs()}
    records = [r for k, r in read_results(out / "results.jsonl").items() if k in wanted]
    header = (
        f"MQAR, {len(records)} runs; {grid.epochs} epochs of "
        f"{grid.train_examples} examples, batch {grid.batch_size}, {grid.n_heads} heads, "
        f"seeds {grid.seeds}, {grid.val_examples} validation examples (kv × 1000 queries) per "
        "run. Each cell shows the best learning rate among those run for it (mean ± std over "
        "seeds).\n\n"
    )
    _, table, _ = write_report(records, out, header)
    print(header + table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="based,rebased")
    parser.add_argument("--d-model", default="32,64,128")
    parser.add_argument("--seq-len", default="64,128")
    parser.add_argument("--lrs", default="3e-3")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th run from i")
    parser.add_argument("--report", action="store_true", help="only write the table and plot")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    grid = settings(args)
    if not args.report:
        torch.set_num_threads(1)  # one core per shard: small ops scale poorly across threads
        index, count = (int(v) for v in args.shard.split("/"))

        def progress(record: dict) -> None:
            key = record["key"]
            print(
                f"{key['model']} d={key['d_model']} L={key['seq_len']} lr={key['lr']:g} "
                f"seed={key['seed']}: {record['val_acc']:.3f} in {record['seconds']:.0f} s",
                flush=True,
            )

        run_grid(grid, args.out, on_result=progress, shard=(index, count))
    report(grid, args.out)


if __name__ == "__main__":
    main()
