"""Leave-one-out Mashup benchmark on SmolLM2-135M-Instruct with LoRA (resumable).

For each of ARC-E, CSQA, HellaSwag, OBQA, PIQA, SIQA and WinoGrande as target, the other six
form the zoo; Mashup (select → merge → fine-tune) is compared with from-scratch LoRA at the same
steps, batch and learning rate. Variants: ``main`` (acc selection, k=2, LoRA A/B mean: the
paper's recipe), ``random``, ``k1``, ``k3``, ``delta``, ``ties``, and ``embedding`` (MiniLM
selection, no LM forward; not in the paper). See mashup.bench.leave_one_out.

    python benchmarks/mashup_leave_one_out.py --seeds 0,1,2               # main recipe
    python benchmarks/mashup_leave_one_out.py --variants random,k1,k3,delta,ties
    python benchmarks/mashup_leave_one_out.py --seeds 1 --targets piqa &  # processes can share
    python benchmarks/mashup_leave_one_out.py --variants ties --seeds 1,2 --reuse-scratch
    python benchmarks/mashup_leave_one_out.py --format letter --targets arc_easy,openbookqa
    python benchmarks/mashup_leave_one_out.py --epochs 1 --zoo-epochs 1 --batch-size 32  # paper
    python benchmarks/mashup_leave_one_out.py --precision bf16            # bf16 training
    python benchmarks/mashup_leave_one_out.py --steps 200 --eval-every 40 \
        --library ~/.cache/mashup/runs/leave_one_out      # longer arms, the default's library
    python benchmarks/mashup_leave_one_out.py --zoo-steps 300 --seeds 0,1,2 \
        --scratch-from ~/.cache/mashup/runs/leave_one_out # stronger library, same scratch arms
    python benchmarks/mashup_leave_one_out.py --zoo-steps 300 --report \
        --against ~/.cache/mashup/runs/leave_one_out      # its mashup arms against the default's
    python benchmarks/mashup_leave_one_out.py --report                    # summary only
    python benchmarks/mashup_leave_one_out.py --zoo-steps 300 --report --rescore 500
                                          # trained arms scored on 500 items, not retrained
    python benchmarks/mashup_leave_one_out.py --report --seeds 1,2        # of those rows, no file
    python benchmarks/mashup_leave_one_out.py --report --variants k3      # k3 and main, no file
    python benchmarks/mashup_leave_one_out.py --out /tmp/loo --tiny       # minutes-long check

Trained adapters stay under ~/.cache/mashup/runs/leave_one_out (``--out``); each finished
(target, variant, seed) is one line of its results.jsonl, copied with the summary to
benchmarks/results/leave_one_out/ (with summary.md and leave_one_out.png). Another format,
budget or base than the default gets folders of its own (``leave_one_out_e1_zoo-e1_b32`` for
the paper's budget, ``leave_one_out_bf16`` for bf16 training, ``leave_one_out_gemma-3-270m``
for ``--base .../gemma-3-270m``), and a folder refuses runs of a budget other than its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from mashup.bench.leave_one_out import (
    LIBRARY,
    VARIANTS,
    LooSettings,
    budget_tag,
    changed_budget,
    eval_every_flags,
    load_results,
    prepare_library,
    recorded_weights,
    run_benchmark,
    run_parallel,
    select_rows,
    unmatched_filter,
    with_curve_records,
)
from mashup.bench.leave_one_out_report import plot, summarise
from mashup.data.items import FORMATS
from mashup.errors import MashupError
from mashup.files import write_text
from mashup.train.config import PRECISIONS

RESULTS = Path(__file__).parent / "results" / "leave_one_out"


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give integers, e.g. 0,1,2") from None


def _variants(text: str) -> tuple[str, ...]:
    names = _csv(text)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}"
        )
    return names


def _settings(args: argparse.Namespace) -> LooSettings:
    return LooSettings(
        out=args.out or Path(),
        base=args.base or Path(),
        tasks=_csv(args.tasks),
        targets=_csv(args.targets) if args.targets else None,
        variants=args.variants or ("main",),
        seeds=args.seeds or (0,),
        zoo_steps=args.zoo_steps,
        steps=args.steps,
        zoo_epochs=args.zoo_epochs,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        eval_n=args.eval_n,
        eval_every=args.eval_every,
        select_n=args.select_n,
        reuse_scratch=args.reuse_scratch,
        scratch_from=args.scratch_from,
        library=args.library,
        format=args.format,
        precision=args.precision,
    )


def _without_jobs(argv: list[str]) -> list[str]:
    """``argv`` less its ``--jobs N``: what each process of a parallel run is given."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--jobs":
            skip = True
        elif not arg.startswith("--jobs="):
            kept.append(arg)
    return kept


def _budget_flags(settings: LooSettings) -> list[str]:
    """The flags that set this run's format and budget, for the summary's command line."""
    flags = []
    for key, value in changed_budget(settings).items():
        if key == "base":  # the folder's tag is the name; the command needs the path
            flags += ["--base", str(settings.base)]
            continue
        if key in ("arms", "zoo"):
            ((unit, value),) = value.items()
            flags.append(f"--{'zoo-' if key == 'zoo' else ''}{unit}")
        else:
            flags.append("--" + key.replace("_", "-"))
        flags.append(value if key in ("format", "precision") else f"{value:g}")
    return flags


def _rescore(
    settings: LooSettings,
    out: Path,
    rows: list[dict],
    against: tuple[str, list[dict]] | None,
    n: int,
    console: Console,
    retrain: bool,
) -> tuple[list[dict], tuple[str, list[dict]] | None, str]:
    """Rows (and --against's rows on the same targets and seeds) with their arms re-scored on
    ``n`` items, and the note that heads their summary."""
    from mashup.bench.leave_one_out_rescore import rescore_rows
    from mashup.data.assets import ensure_smollm2

    base = settings.base if settings.base != Path() else ensure_smollm2(console=console)
    mine = replace(settings, out=out, base=base)
    rows, agreement = rescore_rows(mine, rows, n, console, retrain)
    if against is not None:
        runs = {(r["target"], r["seed"]) for r in rows}
        theirs = [r for r in against[1] if (r["target"], r["seed"]) in runs]
        theirs, their_agreement = rescore_rows(
            replace(mine, out=Path(against[0])), theirs, n, console, retrain
        )
        against, agreement = (against[0], theirs), agreement + their_agreement
    scored = sorted({r["scored_on_run_items"] for r in rows})
    init = (
        "the merged init is scored on the same items"
        if all("init_acc" in r for r in rows)
        else "the merged init is left out where the runs kept no merged adapter (its step-0 "
        "accuracy was scored on the runs' items only)"
    )
    note = (
        f"Re-scored: every arm's final adapter on the first {n} validation items of its "
        f"target (the runs scored the first {', '.join(map(str, scored))}; on those, "
        f"{agreement.text()}). "
        f"Steps and wall-clock to reach scratch still come from the runs' learning curves; "
        f"{init}.\n\n"
    )
    return rows, against, note


def main() -> None:
    from mashup.hub import stay_offline

    stay_offline()
    defaults = LooSettings(out=Path(), base=Path())
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="default: <cache>/runs/leave_one_out")
    p.add_argument("--base", type=Path, default=None, help="default: cached SmolLM2-135M")
    p.add_argument("--tasks", default=",".join(LIBRARY))
    p.add_argument("--targets", default=None, help="default: every task")
    p.add_argument(
        "--variants", type=_variants, default=None, help="default: main (with --report: every one)"
    )
    p.add_argument("--seeds", type=_seeds, default=None, help="default: 0")
    p.add_argument("--zoo-steps", type=int, default=defaults.zoo_steps)
    p.add_argument("--steps", type=int, default=defaults.steps)
    p.add_argument(
        "--zoo-epochs", type=float, default=None, help="library budget in epochs (not --zoo-steps)"
    )
    p.add_argument(
        "--epochs", type=float, default=None, help="arms' budget in epochs (not --steps)"
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--eval-n", type=int, default=defaults.eval_n)
    p.add_argument("--eval-every", type=int, default=defaults.eval_every)
    p.add_argument("--select-n", type=int, default=defaults.select_n)
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="mc",
        help="letter: the paper's chat prompt with lettered choices (own folders and results)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="training arithmetic; bf16 is faster on CPUs with AVX512-BF16 or AMX (README: "
        "1.7x per step, 1.4x per run) (own folders and results)",
    )
    p.add_argument(
        "--reuse-scratch",
        action="store_true",
        help="take a (target, seed)'s from-scratch arm from a finished row instead of retraining",
    )
    p.add_argument(
        "--scratch-from",
        type=Path,
        default=None,
        help="take the from-scratch arms from finished rows of this run folder (same arm "
        "settings; its library may differ) instead of training them",
    )
    p.add_argument(
        "--library",
        type=Path,
        default=None,
        help="use the library of this run folder (same library budget) instead of training one",
    )
    p.add_argument(
        "--library-only",
        action="store_true",
        help="train the library entries of --tasks and stop (processes can split the tasks)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run as this many processes at once (library entries, then target and seed runs)",
    )
    p.add_argument("--report", action="store_true", help="only summarise finished rows")
    p.add_argument(
        "--rows-only",
        action="store_true",
        help="run what is missing and append its rows, then stop: no summary, no results "
        "folder (what each --jobs process does; the parent summarises once at the end)",
    )
    p.add_argument(
        "--against",
        type=Path,
        default=None,
        help="with --report: also pair each variant's mashup arm with the same variant's in "
        "this run folder (same targets, seeds and items); writes no file unless --save",
    )
    p.add_argument(
        "--rescore",
        type=int,
        default=None,
        metavar="N",
        help="with --report: score each finished row's two trained arms on the first N "
        "validation items (a superset of the run's own; cached beside each adapter, resumable) "
        "and summarise on those; the full report writes rescored_N.jsonl and "
        "summary_rescored_N.md to the results folder",
    )
    p.add_argument(
        "--retrain-scratch",
        action="store_true",
        help="with --rescore: train a from-scratch arm whose adapter is gone again, with its "
        "row's settings and seed (marked; its agreement with the row's verdicts is reported)",
    )
    p.add_argument(
        "--save",
        default=None,
        metavar="NAME",
        help="with a filtered --report (--targets, --seeds, --variants or --against): also "
        "write it to summary_NAME.md in the results folder (with --out: in that run folder), "
        "so numbers quoted from it keep their source",
    )
    p.add_argument("--tiny", action="store_true", help="a minutes-long end-to-end check")
    args = p.parse_args()
    if args.against is not None and not args.report:
        p.error("--against only goes with --report (it compares finished rows)")
    if args.rescore is not None and not args.report:
        p.error("--rescore only goes with --report (it re-scores finished rows)")
    if args.retrain_scratch and args.rescore is None:
        p.error("--retrain-scratch only goes with --rescore (it retrains arms to re-score)")
    if args.save is not None:
        if not (args.report and (args.targets or args.seeds or args.variants or args.against)):
            p.error(
                "--save only goes with a filtered --report (--targets, --seeds, --variants or "
                "--against); the full report writes its own files"
            )
        if not args.save or Path(args.save).name != args.save or args.save.startswith("."):
            p.error(f"--save {args.save!r}: give a plain name, such as seeds_0-2, not a path")
    if args.rows_only and args.report:
        p.error("--rows-only runs rows and summarises none; --report only summarises: give one")
    if args.tiny:
        args.zoo_steps, args.steps, args.eval_n, args.select_n, args.eval_every = 4, 6, 16, 16, 3
        args.targets = args.targets or "arc_easy"
        args.variants = tuple(VARIANTS)

    from mashup.data.assets import default_cache_dir, ensure_smollm2
    from mashup.train.commands import _quiet_transformers

    _quiet_transformers()
    console = Console(stderr=True)
    try:
        settings = _settings(args)
    except ValueError as error:  # targets outside the library, a budget that is not positive
        p.error(str(error))
    suffix = ("" if args.format == "mc" else f"_{args.format}") + budget_tag(settings)
    out = args.out or default_cache_dir() / "runs" / f"leave_one_out{suffix}"
    results_dir = RESULTS.with_name(RESULTS.name + suffix)
    if not args.report:
        base = args.base or ensure_smollm2(console=console)
        try:
            settings = replace(settings, out=out, base=base)
            if args.jobs > 1:
                child = [sys.executable, __file__, *_without_jobs(sys.argv[1:]), "--rows-only"]
                run_parallel(settings, args.jobs, child, console, args.library_only)
                if args.library_only:
                    return
            elif args.library_only:
                zoo_dir = prepare_library(settings, console)
                console.print(f"library ready in {zoo_dir}")
                return
            else:
                run_benchmark(settings, console)
        except MashupError as error:  # the folder holds another budget
            p.error(str(error))
        if args.rows_only:
            return
    results = out / "results.jsonl"
    if not results.is_file():
        p.error(f"no finished run in {out}: run the benchmark with this format and budget first")
    rows = with_curve_records(load_results(results).values(), out)
    script = "python benchmarks/mashup_leave_one_out.py"
    command = " ".join([script, *_budget_flags(settings), *eval_every_flags(rows)])
    # --report with --targets, --seeds or --variants summarises those rows only (main's always,
    # as the ablations' reference) and rewrites no file (--save writes one of its own).
    subset = args.report and bool(args.targets or args.seeds or args.variants)
    if subset:
        targets = _csv(args.targets) if args.targets else None
        problem = unmatched_filter(rows, targets=targets, seeds=args.seeds)
        if problem:
            p.error(problem)
        rows = select_rows(rows, targets=targets, seeds=args.seeds, variants=args.variants)
        command = " ".join([script, *sys.argv[1:]])
    against = None
    if args.against is not None:
        other = args.against / "results.jsonl"
        if not other.is_file():
            p.error(f"--against {args.against} has no results.jsonl; give a run folder's --out")
        try:
            theirs, mine = recorded_weights(args.against), recorded_weights(out)
        except MashupError as error:  # an unreadable settings.json
            p.error(str(error))
        if theirs is not None and mine is not None and theirs != mine:
            p.error(
                f"--against {args.against} holds runs on another base model than {out} (their "
                "settings.json record other base weights); compare run folders of one base"
            )
        against = (str(args.against), list(load_results(other).values()))
        command = " ".join([script, *sys.argv[1:]])
    note = ""
    if args.rescore is not None and not (subset or against):
        # The re-scored numbers need the re-scoring flags to be measured again.
        command += " --report --rescore " + str(args.rescore)
        command += " --retrain-scratch" if args.retrain_scratch else ""
    if args.rescore is not None:
        try:
            rows, against, note = _rescore(
                settings, out, rows, against, args.rescore, console, args.retrain_scratch
            )
        except MashupError as error:
            p.error(str(error))
    try:
        text = summarise(rows, command, against)
    except ValueError as error:  # --against a folder whose rows scored other items
        p.error(str(error))
    text = note + text
    # Only the full report of the benchmark's own folder updates the results folder.
    full_report = not args.tiny and args.out is None and not subset and against is None
    if full_report and args.rescore is not None:
        results_dir.mkdir(parents=True, exist_ok=True)
        name = f"rescored_{args.rescore}"
        write_text(results_dir / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        write_text(results_dir / f"summary_{name}.md", text)
    elif full_report:
        results_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(results, results_dir / "results.jsonl")
        write_text(results_dir / "summary.md", text)
        plot(rows, results_dir / "leave_one_out.png")
    if args.save is not None:  # a run folder of its own (--out, --tiny) keeps its reports
        where = results_dir if args.out is None and not args.tiny else out
        where.mkdir(parents=True, exist_ok=True)
        saved = where / f"summary_{args.save}.md"
        write_text(saved, text)
        console.print(f"saved {saved}")
    print(text)


if __name__ == "__main__":
    main()
