"""What a cheaper selection saves when the paper's accuracy selection picks from the zoo.

For each leave-one-out target, the other six adapters of the library are ranked by accuracy on
the same 128 target train items twice, uncached: scoring every candidate on every item in fp32
(the ``main`` recipe) and with a cheaper arm:

* ``halving``: successive halving (6 → 3 on 32 items, 3 → 2 on 64);
* ``bf16``: every candidate on every item, with the base's weights in bf16 (``--precision bf16``
  of ``mashup select``); the report also counts the candidate-items whose verdict it changes.

The arms alternate which goes first from target to target. A short from-scratch LoRA run of the
benchmark's settings, in the same process, converts seconds into scratch training steps. Then
every finished ``main`` row of the leave-one-out results is priced with each selection cost:
its share of scratch's wall-clock with today's full scoring, and with the cheaper arm where it
picks the same pair (the training runs are then the same; where it picks another pair, only a
new run can tell).

    python benchmarks/selection_arms.py                    # halving, 7 targets
    python benchmarks/selection_arms.py --arm bf16 --base ~/.cache/mashup/models/gemma-3-270m \\
        --precision bf16                                   # the Gemma-3-270M run's library
    python benchmarks/selection_arms.py --targets piqa --timing-steps 6
    python benchmarks/selection_arms.py --report           # rewrite the report from the record

The library, settings and rows are those of the leave-one-out run with the same ``--base`` and
``--precision``. Results: benchmarks/results/selection_<arm><run suffix>.{md,json} (halving on
the default run: selection_halving.{md,json}); resumable per target.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ARMS = {"halving": {"halving": True}, "bf16": {"precision": "bf16"}}


def measure_target(
    settings, zoo_dir: Path, target: str, cheaper: str, order: int, timing_steps: int
) -> dict:
    from mashup.bench.leave_one_out import arm_config, task_files
    from mashup.select.core import select_entries
    from mashup.train.trainer import train_model

    train_file, val_file = task_files(target)
    arms = ("full", cheaper) if order % 2 == 0 else (cheaper, "full")
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
            use_cache=False,
            **(ARMS[arm] if arm != "full" else {}),
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
    row["same_pair"] = sorted(runs["full"].selected) == sorted(runs[cheaper].selected)
    if cheaper == "bf16":
        row["verdicts_changed"] = verdicts_changed(zoo_dir, runs["full"], runs["bf16"])
    return row


def verdicts_changed(zoo_dir: Path, full, other) -> list[int]:
    """Candidate-items right in one scoring and wrong in the other, and the candidate-items
    compared (from the per-item verdicts each scoring stored in the catalog)."""
    from mashup.zoo import Zoo

    zoo = Zoo.open(zoo_dir, create=False)
    a, b = zoo.get_score_records(full.target, "acc"), zoo.get_score_records(other.target, "acc")
    changed = compared = 0
    for name in sorted(set(a) & set(b) & {c.name for c in full.ranking}):
        for (x, _), (y, _) in zip(a[name][1]["items"], b[name][1]["items"], strict=True):
            changed += x != y
            compared += 1
    return [changed, compared]


def pick_gap(arm: dict) -> tuple[int, int]:
    """Items by which the last pick (k = 2) beats the next candidate, and the items both read.

    Candidates cut earlier by halving read fewer items and rank after those cut later.
    """
    scores, items = arm["scores"], arm["items"]
    order = sorted(scores, key=lambda name: (-items[name], -scores[name], name))
    last, runner_up = order[1], order[2]
    n = items[runner_up]
    return round((scores[last] - scores[runner_up]) * n), n


def mean_share(mains: list[dict], selection_steps: float | None = None) -> float:
    """Main's mean share of scratch's wall-clock over its runs, as recorded or with another
    selection cost (in scratch steps)."""
    from mashup.bench.leave_one_out_report import wall_clock_share

    return statistics.fmean(wall_clock_share(r["comparison"], selection_steps) for r in mains)


def price_main_rows(rows: list[dict], loo_rows: list[dict], cheaper: str) -> list[dict]:
    """Per target: main's measured wall-clock share, and re-priced with today's selections
    where they pick main's pair (None where they pick another)."""
    priced = []
    for row in rows:
        mains = [r for r in loo_rows if r["variant"] == "main" and r["target"] == row["target"]]
        if not mains:
            continue
        main_pair = sorted(mains[0]["selected"])
        repriced = {
            arm: mean_share(mains, row[arm]["in_scratch_steps"])
            if sorted(row[arm]["selected"]) == main_pair
            else None
            for arm in ("full", cheaper)
        }
        priced.append(
            {
                "target": row["target"],
                "seeds": len(mains),
                "main_pair": main_pair,
                "recorded": mean_share(mains),
                "full_today": repriced["full"],
                cheaper: repriced[cheaper],
            }
        )
    return priced


def write_report(rows: list[dict], priced: list[dict], cheaper: str, command: str) -> str:
    def pct(x: float | None) -> str:
        return "—" if x is None else f"{x:.0%}"

    c = cheaper
    lines = [
        f"Command: `{command}`",
        "",
        f"| target | scratch step | full: seconds (scratch steps) | {c}: seconds (scratch "
        f"steps) | {c} / full, seconds | {c} / full, LM forwards | full picks "
        f"| {c} picks | same pair | 2nd pick − 3rd, items: full | {c} |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, h = r["full"], r[c]
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
        cheaper_steps = statistics.fmean(r[c]["in_scratch_steps"] for r in rows)
        ratio = statistics.fmean(r[c]["seconds"] / r["full"]["seconds"] for r in rows)
        same = sum(r["same_pair"] for r in rows)
        full_gaps = [pick_gap(r["full"]) for r in rows]
        lines += [
            "",
            f"Mean selection cost: full {full_steps:.0f} scratch steps, {c} "
            f"{cheaper_steps:.0f}; {c} / full {ratio:.2f} (per target, averaged); "
            f"the same pair on {same} of {len(rows)} targets.",
        ]
        changed = [r["verdicts_changed"] for r in rows if "verdicts_changed" in r]
        if changed:
            n_changed, n_compared = (sum(x) for x in zip(*changed, strict=True))
            lines += [
                "",
                f"bf16 weights change the verdict (right or wrong) on {n_changed} of "
                f"{n_compared} candidate-items ({n_changed / n_compared:.1%}).",
            ]
        lines += [
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
            f"scoring | with {c} |",
            "|---|---|---|---|---|---|",
        ]
        for p in priced:
            lines.append(
                f"| {p['target']} | {p['seeds']} | {', '.join(p['main_pair'])} | "
                f"{pct(p['recorded'])} | {pct(p['full_today'])} | {pct(p[c])} |"
            )
        for key, label in (("full_today", "today's full scoring"), (c, c)):
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
    from mashup.bench.leave_one_out import (
        LIBRARY,
        LooSettings,
        budget_tag,
        load_results,
        prepare_library,
    )
    from mashup.data.assets import default_cache_dir, ensure_smollm2, smollm2_dir
    from mashup.errors import MashupError
    from mashup.train.commands import _quiet_transformers

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arm", choices=sorted(ARMS), default="halving", help="the cheaper arm")
    p.add_argument("--targets", default=",".join(LIBRARY))
    p.add_argument("--timing-steps", type=int, default=12)
    p.add_argument("--base", type=Path, default=None, help="default: cached SmolLM2-135M")
    p.add_argument("--precision", default="auto", help="the leave-one-out run's --precision")
    p.add_argument("--out", type=Path, default=None, help="default: the leave-one-out run's")
    p.add_argument("--report", action="store_true", help="only rewrite the report")
    args = p.parse_args()
    _quiet_transformers()
    # A report needs only the base's folder name (the run's suffix), not the model.
    default = smollm2_dir if args.report else ensure_smollm2
    base = args.base.expanduser() if args.base else default()
    targets = args.targets.split(",")
    try:
        settings = LooSettings(
            out=Path(), base=base, precision=args.precision, targets=tuple(targets)
        )
    except ValueError as error:  # an unknown precision or target
        p.error(str(error))
    tag = budget_tag(settings)
    name = f"selection_{args.arm}{tag}"
    record = RESULTS / f"{name}.json"
    rows = json.loads(record.read_text()) if record.is_file() else []
    if args.report and not rows:  # a mistyped --base or --arm names a record never written
        p.error(f"{record}: no record to report; run without --report first")
    done = {r["target"] for r in rows}
    todo = [t for t in targets if t not in done and not args.report]
    if todo:
        out = args.out or default_cache_dir() / "runs" / f"leave_one_out{tag}"
        settings = dataclasses.replace(settings, out=out)
        try:  # the library the leave-one-out rows were trained with, on the same base
            zoo_dir = prepare_library(settings)
        except MashupError as error:  # no model at --base, or another model than the run's
            p.error(str(error))
    for order, target in enumerate(targets):
        if target not in todo:
            continue
        rows.append(measure_target(settings, zoo_dir, target, args.arm, order, args.timing_steps))
        print(json.dumps(rows[-1]), flush=True)
        tmp = record.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1) + "\n")
        tmp.replace(record)
    loo_rows = RESULTS / f"leave_one_out{tag}" / "results.jsonl"
    if not loo_rows.is_file():
        p.error(f"{loo_rows}: no leave-one-out rows to price; copy the run's results.jsonl there")
    loo = list(load_results(loo_rows).values())
    command = "python benchmarks/selection_arms.py"
    if args.arm != "halving":
        command += f" --arm {args.arm}"
    if args.base:
        command += f" --base {args.base}"
    if args.precision != "auto":
        command += f" --precision {args.precision}"
    text = write_report(rows, price_main_rows(rows, loo, args.arm), args.arm, command)
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
