"""What successive halving saves when the paper's accuracy selection picks from the zoo.

For each leave-one-out target, the other six adapters of the library are ranked by accuracy on
the same 128 target train items twice, uncached: scoring every candidate on every item (the
``main`` recipe) and by successive halving (6 → 3 on 32 items, 3 → 2 on 64). The arms alternate
which goes first from target to target. A short from-scratch LoRA run of the benchmark's
settings, in the same process, converts seconds into scratch training steps. Then every finished
``main`` row of the leave-one-out results is priced with each selection cost: its share of
scratch's wall-clock with today's full scoring, and with halving where halving picks the same
pair (the training runs are then the same; where it picks another pair, only a new run can
tell).

    python benchmarks/selection_halving.py                 # 7 targets, after the library is built
    python benchmarks/selection_halving.py --targets piqa --timing-steps 6
    python benchmarks/selection_halving.py --report         # rewrite the report from the record

Results: benchmarks/results/selection_halving.{md,json}; resumable per target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def measure_target(settings, zoo_dir: Path, target: str, order: int, timing_steps: int) -> dict:
    from mashup.bench.leave_one_out import arm_config, task_files
    from mashup.select.core import select_entries
    from mashup.train.trainer import train_model

    train_file, val_file = task_files(target)
    arms = ("full", "halving") if order % 2 == 0 else ("halving", "full")
    runs = {}
    for arm in arms:
        runs[arm] = select_entries(
            train_file,
            zoo_dir,
            settings.base,
            k=2,
            metric="acc",
            exclude=[target],
            n=settings.select_n,
            seed=settings.select_seed,
            halving=arm == "halving",
            use_cache=False,
        )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = arm_config(
            settings, train_file, val_file, Path(tmp) / "scratch", None, timing_steps, 10**9, 0
        )
        cfg = cfg.model_copy(update={"eval_at_start": False, "val_n": 8})
        timing = train_model(cfg, label=f"{target} timing")
    step_seconds = timing.train_seconds / timing.steps
    row = {"target": target, "first": arms[0], "scratch_step_seconds": step_seconds}
    for arm, result in runs.items():
        row[arm] = {
            "selected": result.selected,
            "scores": {c.name: c.score for c in result.ranking},
            "items": {c.name: c.items or result.n for c in result.ranking},
            "seconds": result.seconds,
            "forwards": result.forwards,
            "in_scratch_steps": result.seconds / step_seconds,
            "margin": result.margin.to_dict() if result.margin is not None else None,
        }
    row["same_pair"] = sorted(runs["full"].selected) == sorted(runs["halving"].selected)
    return row


def pick_gap(arm: dict) -> tuple[int, int]:
    """Items by which the last pick (k = 2) beats the next candidate, and the items both read.

    Candidates cut earlier by halving read fewer items and rank after those cut later.
    """
    scores, items = arm["scores"], arm["items"]
    order = sorted(scores, key=lambda name: (-items[name], -scores[name], name))
    last, runner_up = order[1], order[2]
    n = items[runner_up]
    return round((scores[last] - scores[runner_up]) * n), n


def price_main_rows(rows: list[dict], loo_rows: list[dict]) -> list[dict]:
    """Per target: main's measured wall-clock share, and re-priced with today's selections."""
    from mashup.bench.leave_one_out import wall_clock_share

    priced = []
    for row in rows:
        mains = [r for r in loo_rows if r["variant"] == "main" and r["target"] == row["target"]]
        if not mains:
            continue
        main_pair = sorted(mains[0]["selected"])
        halving_same = sorted(row["halving"]["selected"]) == main_pair
        full_same = sorted(row["full"]["selected"]) == main_pair

        def share(steps: float | None, runs: list[dict] = mains) -> float:
            return statistics.fmean(wall_clock_share(r["comparison"], steps) for r in runs)

        priced.append(
            {
                "target": row["target"],
                "seeds": len(mains),
                "main_pair": main_pair,
                "recorded": share(None),
                "full_today": share(row["full"]["in_scratch_steps"]) if full_same else None,
                "halving": share(row["halving"]["in_scratch_steps"]) if halving_same else None,
            }
        )
    return priced


def write_report(rows: list[dict], priced: list[dict], command: str) -> str:
    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.0%}"

    lines = [
        f"Command: `{command}`",
        "",
        "| target | scratch step | full: seconds (scratch steps) | halving: seconds (scratch "
        "steps) | halving / full, seconds | halving / full, LM forwards | full picks "
        "| halving picks | same pair | 2nd pick − 3rd, items: full | halving |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, h = r["full"], r["halving"]
        lines.append(
            f"| {r['target']} | {r['scratch_step_seconds']:.2f} s | {f['seconds']:.0f} s "
            f"({f['in_scratch_steps']:.0f}) | {h['seconds']:.0f} s ({h['in_scratch_steps']:.0f}) "
            f"| {h['seconds'] / f['seconds']:.2f} | {h['forwards'] / f['forwards']:.2f} "
            f"| {', '.join(f['selected'])} | "
            f"{', '.join(h['selected'])} | {'yes' if r['same_pair'] else 'no'} "
            "| {} of {} | {} of {} |".format(*pick_gap(f), *pick_gap(h))
        )
    if rows:
        full_steps = statistics.fmean(r["full"]["in_scratch_steps"] for r in rows)
        halving_steps = statistics.fmean(r["halving"]["in_scratch_steps"] for r in rows)
        ratio = statistics.fmean(r["halving"]["seconds"] / r["full"]["seconds"] for r in rows)
        same = sum(r["same_pair"] for r in rows)
        full_gaps = [pick_gap(r["full"]) for r in rows]
        lines += [
            "",
            f"Mean selection cost: full {full_steps:.0f} scratch steps, halving "
            f"{halving_steps:.0f}; halving / full {ratio:.2f} (per target, averaged); "
            f"the same pair on {same} of {len(rows)} targets.",
            "",
            "The last pick leads the next candidate by at most "
            f"{max(gap for gap, _ in full_gaps)} items of {full_gaps[0][1]} with full scoring "
            f"(0 on {sum(gap == 0 for gap, _ in full_gaps)} targets, where the tie "
            "is broken by name). A paired bootstrap over the items cannot tell apart two "
            "candidates 3 or fewer items apart of 128 even when every item they disagree on "
            "favours one (`mashup select` prints this margin): on this library the second pick "
            "is the sample's noise.",
        ]
    if priced:
        lines += [
            "",
            "The `main` rows of the leave-one-out results (their own training runs; selection "
            "priced in scratch steps):",
            "",
            "| target | seeds | main's pair | recorded share of wall-clock | with today's full "
            "scoring | with halving |",
            "|---|---|---|---|---|---|",
        ]
        for p in priced:
            lines.append(
                f"| {p['target']} | {p['seeds']} | {', '.join(p['main_pair'])} | "
                f"{pct(p['recorded'])} | {pct(p['full_today'])} | {pct(p['halving'])} |"
            )
        for key, label in (("full_today", "today's full scoring"), ("halving", "halving")):
            values = [p[key] for p in priced if p[key] is not None]
            if values:
                lines.append(
                    f"\nMean over the {len(values)} targets where {label} picks main's pair: "
                    f"{statistics.fmean(values):.0%} (recorded on those targets: "
                    f"{statistics.fmean(p['recorded'] for p in priced if p[key] is not None):.0%})."
                )
    return "\n".join(lines) + "\n"


def main() -> None:
    from mashup.hub import stay_offline

    stay_offline()
    from mashup.bench.leave_one_out import LIBRARY, LooSettings, build_library, load_results
    from mashup.data.assets import default_cache_dir, ensure_smollm2
    from mashup.train.commands import _quiet_transformers

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default=",".join(LIBRARY))
    p.add_argument("--timing-steps", type=int, default=12)
    p.add_argument("--out", type=Path, default=None, help="default: <cache>/runs/leave_one_out")
    p.add_argument("--report", action="store_true", help="only rewrite the report")
    args = p.parse_args()
    _quiet_transformers()
    record = RESULTS / "selection_halving.json"
    rows = json.loads(record.read_text()) if record.is_file() else []
    done = {r["target"] for r in rows}
    todo = [t for t in args.targets.split(",") if t not in done and not args.report]
    if todo:
        out = args.out or default_cache_dir() / "runs" / "leave_one_out"
        settings = LooSettings(out=out, base=ensure_smollm2())
        zoo_dir = build_library(settings)  # the library the leave-one-out rows were trained with
    for order, target in enumerate(args.targets.split(",")):
        if target not in todo:
            continue
        rows.append(measure_target(settings, zoo_dir, target, order, args.timing_steps))
        print(json.dumps(rows[-1]), flush=True)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        tmp.replace(record)
    loo = list(load_results(RESULTS / "leave_one_out" / "results.jsonl").values())
    text = write_report(rows, price_main_rows(rows, loo), "python benchmarks/selection_halving.py")
    (RESULTS / "selection_halving.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
