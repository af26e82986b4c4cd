"""Leave-one-out Mashup benchmark on SmolLM2-135M-Instruct with LoRA (the paper's protocol).

Library: one LoRA adapter per task (ARC-E, CSQA, HellaSwag, OBQA, PIQA, SIQA, WinoGrande), each
fine-tuned on its train split. For each task as target, the other six form the zoo; Mashup
selects, merges and fine-tunes, and is compared with a from-scratch LoRA run of the same steps,
batch and learning rate, evaluated on the same items of the target's validation split.

Variants (``--variants``): ``main`` (acc selection, k=2, LoRA A/B mean — the paper's recipe),
``random`` (random selection), ``k1``/``k3`` (k=1, k=3), ``delta`` and ``ties`` (merge methods
on the exact LoRA updates, re-factorised to rank 8).

Everything is cached under ``--out``: every trained adapter (zoo, scratch, mashup) and every
merge; each (target, variant) result is appended to ``results.jsonl`` as soon as it is done, and
a re-run skips what is there. A killed training run resumes from its last checkpoint.

    nice -n 10 python benchmarks/mashup_leave_one_out.py                          # full
    python benchmarks/mashup_leave_one_out.py --out /tmp/loo-check --tiny         # minutes
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console

LIBRARY = ("arc_easy", "csqa", "hellaswag", "openbookqa", "piqa", "socialiqa", "winogrande")
VARIANTS: dict[str, dict[str, Any]] = {
    "main": {"metric": "acc", "k": 2, "merge": "ab_mean"},
    "random": {"metric": "random", "k": 2, "merge": "ab_mean"},
    "k1": {"metric": "acc", "k": 1, "merge": "ab_mean"},
    "k3": {"metric": "acc", "k": 3, "merge": "ab_mean"},
    "delta": {"metric": "acc", "k": 2, "merge": "delta"},
    "ties": {"metric": "acc", "k": 2, "merge": "ties"},
}
# Mashup Learning (arXiv 2603.10156), LoRA, average over targets: scratch -> mashup accuracy and
# the share of scratch's steps mashup needs to reach scratch's final accuracy.
PAPER = {
    "Gemma-3-1B": {"scratch": 70.0, "mashup": 71.8, "share_of_steps": 0.680},
    "Gemma-2-2B": {"scratch": 80.8, "mashup": 81.5, "share_of_steps": 0.726},
    "Gemma-3-4B": {"scratch": 83.2, "mashup": 84.2, "share_of_steps": 0.704},
}
TARGETS = {"gain_points": 2.0, "share_of_steps": 0.50, "share_of_wall_clock": 0.55}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--out", type=Path, default=None, help="default: <mashup cache>/runs/leave_one_out"
    )
    p.add_argument("--base", type=Path, default=None, help="default: cached SmolLM2-135M")
    p.add_argument("--tasks", default=",".join(LIBRARY))
    p.add_argument("--targets", default=None, help="default: every task")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--zoo-steps", type=int, default=200)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--eval-n", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=None, help="default: steps/10")
    p.add_argument("--select-n", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="a minutes-long end-to-end check")
    args = p.parse_args()
    if args.tiny:
        args.zoo_steps, args.steps, args.eval_n, args.select_n = 4, 6, 16, 16
        args.eval_every = 3
        args.targets = args.targets or "arc_easy"
        args.variants = "main,random,k1,k3,delta,ties"
    return args


def _train_config(
    args: argparse.Namespace,
    base: Path,
    data: Path,
    val: Path,
    out: Path,
    init: Path | None,
    steps: int,
    eval_every: int | None,
):
    from mashup.train.config import TrainConfig

    return TrainConfig(
        base=base,
        data=data,
        val=val,
        out=out,
        init=init,
        steps=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        val_n=args.eval_n,
        eval_every=eval_every,
        train_limit=steps * args.batch_size,
        seed=args.seed,
    )


def build_library(args: argparse.Namespace, base: Path, tasks: list[str], console: Console):
    """One LoRA adapter per task, registered in OUT/zoo (cached)."""
    from mashup.data.assets import ensure_benchmark
    from mashup.train.trainer import train_model
    from mashup.zoo import Zoo

    zoo = Zoo.open(args.out / "zoo")
    registered = {e.name for e in zoo.list()}
    for task in tasks:
        if task in registered:
            continue
        train_file = ensure_benchmark(task, "train")
        val_file = ensure_benchmark(task, "val")
        cfg = _train_config(
            args,
            base,
            train_file,
            val_file,
            args.out / "zoo" / "runs" / task,
            None,
            args.zoo_steps,
            10**9,
        )
        cfg = cfg.model_copy(update={"eval_at_start": False, "val_n": min(args.eval_n, 100)})
        console.print(f"[bold]library[/] {task}: {args.zoo_steps} steps")
        result = train_model(cfg, console=console, label=f"zoo {task}")
        zoo.add(
            cfg.out,
            task=task,
            dataset=str(train_file),
            name=task,
            metrics={"val_acc": result.final_acc or 0.0},
        )
    return args.out / "zoo"


def done_results(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(r["target"], r["variant"]): r for r in rows}


def run_target(
    args: argparse.Namespace,
    base: Path,
    zoo_dir: Path,
    target: str,
    variants: list[str],
    results_file: Path,
    console: Console,
) -> None:
    from mashup.data.assets import ensure_benchmark
    from mashup.select.core import select_entries
    from mashup.train.pipeline import evaluate_base, merge_selected
    from mashup.train.report import compare_runs, write_report
    from mashup.train.trainer import train_model

    done = done_results(results_file)
    todo = [v for v in variants if (target, v) not in done]
    if not todo:
        return
    train_file = ensure_benchmark(target, "train")
    val_file = ensure_benchmark(target, "val")
    root = args.out / "targets" / target
    root.mkdir(parents=True, exist_ok=True)
    base_eval = evaluate_base(base, val_file, args.eval_n, root / "base_eval.json")
    console.print(f"[bold]{target}[/] base acc {base_eval['acc']:.3f} (n={base_eval['n']})")
    scratch = train_model(
        _train_config(
            args, base, train_file, val_file, root / "scratch", None, args.steps, args.eval_every
        ),
        console=console,
        label=f"{target} scratch",
    )
    for variant in todo:
        spec = VARIANTS[variant]
        selection = select_entries(
            train_file,
            zoo_dir,
            base,
            k=spec["k"],
            metric=spec["metric"],
            exclude=[target],
            n=args.select_n,
            seed=args.seed,
            console=console,
        )
        vdir = root / variant
        vdir.mkdir(exist_ok=True)
        init, merge_seconds, merge_cfg = merge_selected(
            selection.selected, zoo_dir, base, spec["merge"], vdir / "merged", args.seed
        )
        mashup = train_model(
            _train_config(
                args, base, train_file, val_file, vdir / "mashup", init, args.steps, args.eval_every
            ),
            console=console,
            label=f"{target} {variant}",
        )
        comparison = compare_runs(
            scratch,
            mashup,
            base_acc=base_eval["acc"],
            selection_seconds=selection.seconds,
            merge_seconds=merge_seconds,
        )
        record = {
            "target": target,
            "variant": variant,
            **spec,
            "selected": selection.selected,
            "selection_scores": {c.name: c.score for c in selection.ranking},
            "comparison": comparison,
            "steps": args.steps,
            "zoo_steps": args.zoo_steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        report = {
            "target": target,
            "base": str(base),
            "zoo": str(zoo_dir),
            "merge_method": spec["merge"],
            "merge_config": merge_cfg,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "selection": selection.to_dict(),
            "comparison": comparison,
        }
        write_report(report, {"scratch": scratch.curve, "mashup": mashup.curve}, vdir / "report")
        with results_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        acc = comparison["acc"]
        console.print(
            f"  {variant}: scratch {acc['scratch']:.3f} mashup {acc['mashup']:.3f} "
            f"reach step {comparison['mashup_step_reaching_scratch_final']}"
        )


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def summarise(results_file: Path, out: Path) -> str:
    rows = list(done_results(results_file).values())
    lines = [
        "| variant | targets | scratch acc | mashup acc | gain (points) | targets with CI > 0 "
        "| share of steps to reach scratch | share of wall-clock (incl. selection+merge) "
        "| never reached |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        if not mine:
            continue
        cmp = [r["comparison"] for r in mine]
        scratch = _mean([c["acc"]["scratch"] for c in cmp])
        mashup = _mean([c["acc"]["mashup"] for c in cmp])
        # A target that never reaches scratch's accuracy counts as needing all steps.
        share = _mean(
            [c["share_of_steps"] if c["share_of_steps"] is not None else 1.0 for c in cmp]
        )
        wall = _mean([c["seconds"]["share_of_scratch_wall_clock"] for c in cmp])
        never = sum(c["share_of_steps"] is None for c in cmp)
        significant = sum(c["mashup_minus_scratch"]["ci95"][0] > 0 for c in cmp)
        lines.append(
            f"| {variant} | {len(mine)} | {100 * scratch:.1f} | {100 * mashup:.1f} | "
            f"{100 * (mashup - scratch):+.1f} | {significant}/{len(mine)} | {share:.0%} | "
            + (f"{wall:.0%}" if wall is not None else "—")
            + f" | {never} |"
        )
    lines += [
        "",
        "Per target (main):",
        "",
        "| target | selected | base | scratch | mashup | diff [95% CI] | reach step |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted((r for r in rows if r["variant"] == "main"), key=lambda r: r["target"]):
        c = r["comparison"]
        d = c["mashup_minus_scratch"]
        lines.append(
            f"| {r['target']} | {', '.join(r['selected'])} | {c['acc']['base']:.3f} | "
            f"{c['acc']['scratch']:.3f} | {c['acc']['mashup']:.3f} | {d['diff']:+.3f} "
            f"[{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | "
            f"{c['mashup_step_reaching_scratch_final']} / {c['steps']} |"
        )
    lines += ["", "Paper (LoRA, average over its 8 targets):", ""]
    for model, p in PAPER.items():
        lines.append(
            f"- {model}: {p['scratch']} → {p['mashup']} "
            f"({p['mashup'] - p['scratch']:+.1f}), {p['share_of_steps']:.0%} of steps"
        )
    lines.append(
        f"- issue targets: gain ≥ +{TARGETS['gain_points']} points, ≤ "
        f"{TARGETS['share_of_steps']:.0%} of steps, ≤ "
        f"{TARGETS['share_of_wall_clock']:.0%} of wall-clock"
    )
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text, encoding="utf-8")
    return text


def main() -> None:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mashup.data.assets import ensure_smollm2
    from mashup.train.commands import _quiet_transformers

    _quiet_transformers()
    args = parse_args()
    if args.out is None:
        from mashup.data.assets import default_cache_dir

        # Trained adapters are large: keep them out of the source tree.
        args.out = default_cache_dir() / "runs" / "leave_one_out"
    console = Console(stderr=True)
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.base or ensure_smollm2(console=console)
    tasks = [t for t in args.tasks.split(",") if t]
    targets = [t for t in (args.targets or args.tasks).split(",") if t]
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant {unknown}; choose from {', '.join(VARIANTS)}")
    (args.out / "benchmark_args.json").write_text(json.dumps(vars(args), default=str, indent=2))
    started = time.perf_counter()
    zoo_dir = build_library(args, base, tasks, console)
    results_file = args.out / "results.jsonl"
    # Variant by variant, so the paper's recipe finishes on every target before the ablations.
    for variant in variants:
        for target in targets:
            run_target(args, base, zoo_dir, target, [variant], results_file, console)
    console.print(f"done in {time.perf_counter() - started:.0f} s")
    print(summarise(results_file, args.out))


if __name__ == "__main__":
    main()
