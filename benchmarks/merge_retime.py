"""Re-time one leave-one-out variant's merges with today's merge code against an older commit's.

Each leave-one-out row records the seconds its merge took when it ran. When the merge code gets
faster without changing what it writes, those seconds overstate today's cost. This script runs
every merge of a variant's rows again, once with the code of ``--baseline`` (a git ref: the
commit the rows were merged with) and once with the working tree's, in two worker processes, one
merge at a time on one thread, alternating which code goes first. It checks that
both write the same adapter as the one the arms trained from, then scales each row's recorded
merge seconds by the ratio measured here (today / baseline, the same merge in the same run)
and recomputes the variant's share of scratch's wall-clock. The rows stay as recorded.

    python benchmarks/merge_retime.py --variant random_ties --baseline 8a0dc4e \\
        --run ~/.cache/mashup/runs/leave_one_out_s20_zoo-s300_bf16 \\
        --out benchmarks/results/leave_one_out_s20_zoo-s300_bf16

Results: ``<out>/merge_retime_<variant>.{md,json}`` (``..._seeds_0-1-2`` with ``--seeds 0,1,2``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file


def worker() -> None:
    """Merge each job read from stdin (one JSON line) with the ``mashup`` on this process's
    path, and answer each with the seconds it took."""
    import mashup
    from mashup.merge import MergeConfig, merge

    expected = Path(os.environ["MERGE_RETIME_SRC"]).resolve()
    if not Path(mashup.__file__).resolve().is_relative_to(expected):
        raise SystemExit(f"imported {mashup.__file__}, not the code under {expected}")
    torch.set_num_threads(1)
    for line in sys.stdin:
        job = json.loads(line)
        config = MergeConfig.from_dict(job["config"])
        started = time.perf_counter()
        merge(config, Path(job["out"]), zoo=job["zoo"], progress=False)
        print(time.perf_counter() - started, flush=True)


def products(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Each module's update B·A of a merged adapter (alpha = r: no extra scale)."""
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return {
        name.removesuffix(".lora_A.weight"): tensors[name.replace("lora_A", "lora_B")].float()
        @ a.float()
        for name, a in tensors.items()
        if name.endswith(".lora_A.weight")
    }


def relative_difference(a: Path, b: Path) -> float:
    """Largest |ΔW_a − ΔW_b| over the modules, relative to the largest |ΔW_b| of the module."""
    pa, pb = products(a), products(b)
    if pa.keys() != pb.keys():
        raise SystemExit(f"{a} and {b} adapt different modules")
    return max(float((pa[m] - pb[m]).abs().max() / pb[m].abs().max()) for m in pb)


def extract(ref: str, where: Path) -> Path:
    """The ``src`` folder of git ``ref``, unpacked into ``where``."""
    archive = where / "src.tar"
    done = subprocess.run(
        ["git", "archive", "-o", str(archive), ref, "src"],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"--baseline {ref}: git cannot read it here ({done.stderr.strip()})")
    with tarfile.open(archive) as tar:
        tar.extractall(where, filter="data")
    return where / "src"


def retimed(row: dict[str, Any], ratio: float) -> dict[str, Any]:
    """``row`` with its merge seconds scaled by ``ratio`` and its wall-clock share redone."""
    from mashup.bench.leave_one_out_report import wall_clock_share

    row = copy.deepcopy(row)
    c = row["comparison"]
    c["seconds"]["merge"] *= ratio
    reached = c["mashup_step_reaching_scratch_final"] is not None
    c["seconds"]["share_of_scratch_wall_clock"] = wall_clock_share(c) if reached else None
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, help="the leave-one-out run folder (cache)")
    p.add_argument("--variant", default="random_ties")
    p.add_argument("--seeds", help="only these seeds, e.g. 0,1,2 (default: every row's)")
    p.add_argument("--baseline", help="git ref whose merge code made the recorded merges")
    p.add_argument("--out", type=Path, help="results folder for the report")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker()
        return
    if not (args.run and args.baseline and args.out):
        p.error("give --run, --baseline and --out")
    results = args.run / "results.jsonl"
    if not results.is_file():
        raise SystemExit(f"{args.run}: no results.jsonl; give a leave-one-out run folder")
    try:
        seeds = {int(s) for s in args.seeds.split(",")} if args.seeds else None
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: give integers, e.g. 0,1,2")
    rows = [json.loads(line) for line in results.open()]
    rows = [
        r for r in rows if r["variant"] == args.variant and (seeds is None or r["seed"] in seeds)
    ]
    if not rows:
        raise SystemExit(f"{args.run}: no {args.variant} rows")
    lost = [
        r for r in rows if not (merged_dir(args.run, r) / "adapter_model.safetensors").is_file()
    ]
    if lost:
        raise SystemExit(
            f"{merged_dir(args.run, lost[0])}: the merged adapter of {len(lost)} row(s) is gone; "
            "re-timing compares against what the arms trained from"
        )
    tmp = Path(tempfile.mkdtemp(prefix="merge_retime_"))
    try:
        summary = retime(args, rows, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    subset = f"_seeds_{'-'.join(map(str, sorted(seeds)))}" if seeds else ""
    stem = args.out / f"merge_retime_{args.variant}{subset}"
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(summary, sys.argv[1:]))
    print(stem.with_suffix(".md").read_text())


def merged_dir(run: Path, row: dict[str, Any]) -> Path:
    """Where the leave-one-out kept a row's merged init."""
    return run / "targets" / row["target"] / f"seed{row['seed']}" / row["variant"] / "merged"


def retime(args: argparse.Namespace, rows: list[dict[str, Any]], tmp: Path) -> dict[str, Any]:
    """Both codes' seconds for every row's merge, compared, and the rows' wall-clock redone."""
    from mashup.bench.leave_one_out_report import summarise_variant

    sources = {"baseline": extract(args.baseline, tmp), "today": Path(__file__).parents[1] / "src"}
    procs = {
        arm: subprocess.Popen(
            [sys.executable, __file__, "--worker"],
            env={
                **os.environ,
                "PYTHONPATH": str(src),
                "MERGE_RETIME_SRC": str(src),
                "OMP_NUM_THREADS": "1",
            },
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for arm, src in sources.items()
    }
    # One merge at a time, alternating which code goes first, so both see the same machine.
    seconds: dict[str, dict[str, float]] = {arm: {} for arm in sources}
    recorded_dirs = {}
    try:
        for index, r in enumerate(rows):
            key = f"{r['target']}/seed{r['seed']}"
            recorded_dirs[key] = merged_dir(args.run, r)
            config = json.loads(recorded_dirs[key].with_name("merged.json").read_text())["config"]
            for arm in list(sources)[:: 1 if index % 2 == 0 else -1]:
                out = tmp / arm / key.replace("/", "_")
                zoo = Path(r["library"]) / "zoo" if "library" in r else args.run / "zoo"
                job = {"config": config, "zoo": str(zoo), "out": str(out)}
                proc = procs[arm]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write(json.dumps(job) + "\n")
                proc.stdin.flush()
                answer = proc.stdout.readline()
                if not answer:
                    raise SystemExit(f"the {arm} merge of {key} failed (its error is above)")
                seconds[arm][key] = float(answer)
            baseline, today = seconds["baseline"][key], seconds["today"][key]
            print(f"{key}: baseline {baseline:.1f} s, today {today:.1f} s")
    finally:
        for proc in procs.values():
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait()

    table, new_rows = [], []
    for r in rows:
        key = f"{r['target']}/seed{r['seed']}"
        ratio = seconds["today"][key] / seconds["baseline"][key]
        new_rows.append(retimed(r, ratio))
        name = key.replace("/", "_")
        table.append(
            {
                "row": key,
                "recorded_merge_seconds": r["comparison"]["seconds"]["merge"],
                "baseline_seconds": seconds["baseline"][key],
                "today_seconds": seconds["today"][key],
                "ratio": ratio,
                "retimed_merge_seconds": r["comparison"]["seconds"]["merge"] * ratio,
                "diff_today_vs_trained_from": relative_difference(
                    tmp / "today" / name, recorded_dirs[key]
                ),
                "diff_baseline_vs_trained_from": relative_difference(
                    tmp / "baseline" / name, recorded_dirs[key]
                ),
            }
        )
    before, after = summarise_variant(args.variant, rows), summarise_variant(args.variant, new_rows)
    summary = {
        "variant": args.variant,
        "baseline": args.baseline,
        "rows": len(rows),
        "seeds": sorted({r["seed"] for r in rows}),
        "baseline_seconds_total": sum(t["baseline_seconds"] for t in table),
        "today_seconds_total": sum(t["today_seconds"] for t in table),
        "recorded_merge_seconds_mean": statistics.fmean(t["recorded_merge_seconds"] for t in table),
        "retimed_merge_seconds_mean": statistics.fmean(t["retimed_merge_seconds"] for t in table),
        "max_diff_today_vs_trained_from": max(t["diff_today_vs_trained_from"] for t in table),
        "max_diff_baseline_vs_trained_from": max(t["diff_baseline_vs_trained_from"] for t in table),
        "share_of_wall_clock_recorded": before.share_of_wall_clock,
        "share_of_wall_clock_retimed": after.share_of_wall_clock,
        "share_of_steps": before.share_of_steps,
        "per_row": table,
    }
    return summary


def markdown(s: dict[str, Any], argv: list[str]) -> str:
    ratio = s["today_seconds_total"] / s["baseline_seconds_total"]
    lines = [
        f"Command: `python benchmarks/merge_retime.py {' '.join(argv)}`",
        "",
        f"{s['variant']}, {s['rows']} rows (seeds {', '.join(map(str, s['seeds']))}): every merge "
        f"run again with the merge code of {s['baseline']} and with today's, one merge at "
        "a time on one thread, alternating which goes first.",
        "",
        "| | merge seconds (mean per row) | share of scratch's wall-clock |",
        "|---|---|---|",
        f"| recorded | {s['recorded_merge_seconds_mean']:.1f} | "
        f"{s['share_of_wall_clock_recorded']:.0%} |",
        f"| re-timed (recorded × today / baseline, per row) | "
        f"{s['retimed_merge_seconds_mean']:.1f} | {s['share_of_wall_clock_retimed']:.0%} |",
        "",
        f"Today / baseline over all rows: {s['today_seconds_total']:.0f} s / "
        f"{s['baseline_seconds_total']:.0f} s = {ratio:.2f}. Share of the steps to reach scratch "
        f"(unchanged): {s['share_of_steps']:.0%}.",
        "",
        "Largest difference of a module's update B·A from the adapter the arms trained from, "
        "relative to the module's largest entry: today "
        f"{s['max_diff_today_vs_trained_from']:.1e}, baseline "
        f"{s['max_diff_baseline_vs_trained_from']:.1e}.",
        "",
        "| row | recorded | baseline | today | today / baseline | re-timed |",
        "|---|---|---|---|---|---|",
    ]
    for t in s["per_row"]:
        lines.append(
            f"| {t['row']} | {t['recorded_merge_seconds']:.1f} s | {t['baseline_seconds']:.1f} s "
            f"| {t['today_seconds']:.1f} s | {t['ratio']:.2f} | "
            f"{t['retimed_merge_seconds']:.1f} s |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
