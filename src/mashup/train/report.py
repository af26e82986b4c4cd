"""Comparing two training runs and writing the report (Markdown, HTML, JSON, learning curve)."""

from __future__ import annotations

import html
import json
import os
import statistics
from pathlib import Path
from typing import Any

from mashup.eval.intervals import (
    CLAIM_ITEMS,
    CLAIM_SEEDS,
    bootstrap_ci,
    paired_intervals,
    verdict,
)
from mashup.train.config import CurvePoint, TrainResult


def paired_bootstrap(
    a: list[bool], b: list[bool], *, samples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired items and its 95 % percentile bootstrap interval."""
    if len(a) != len(b) or not a:
        raise ValueError("paired bootstrap needs two equally long, non-empty lists")
    diffs = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    return bootstrap_ci(diffs, samples=samples, seed=seed)


def first_step_reaching(curve: list[CurvePoint], target: float) -> CurvePoint | None:
    """The first evaluated point whose accuracy is at least ``target``."""
    for point in curve:
        if point.acc >= target - 1e-12:
            return point
    return None


def compare_runs(
    scratch: TrainResult,
    mashup: TrainResult,
    *,
    base_acc: float | None,
    selection_seconds: float,
    merge_seconds: float,
) -> dict[str, Any]:
    """The numbers of the report: accuracies, paired CI, steps and wall-clock to parity."""
    scratch_acc = scratch.final_acc
    mashup_acc = mashup.final_acc
    diff, lo, hi = paired_bootstrap(mashup.final_correct, scratch.final_correct)
    n = len(scratch.final_correct)
    reach = first_step_reaching(mashup.curve, scratch_acc) if scratch_acc is not None else None
    overhead = selection_seconds + merge_seconds
    to_reach = overhead + reach.train_seconds if reach is not None else None
    return {
        "eval_n": n,
        "acc": {"base": base_acc, "scratch": scratch_acc, "mashup": mashup_acc},
        "mashup_minus_scratch": {
            "diff": diff,
            "ci95": [lo, hi],
            "significant": not (lo <= 0.0 <= hi),
            # One training run per arm: the interval holds training fixed, so no claim.
            "verdict": verdict((lo, hi), [1], n),
        },
        "steps": scratch.steps,
        "mashup_step_reaching_scratch_final": reach.step if reach else None,
        "share_of_steps": (reach.step / scratch.steps) if reach and scratch.steps else None,
        "seconds": {
            "selection": selection_seconds,
            "merge": merge_seconds,
            "mashup_training_to_reach": reach.train_seconds if reach else None,
            "mashup_total_to_reach": to_reach,
            "mashup_training_full": mashup.train_seconds,
            "scratch_training_full": scratch.train_seconds,
            "share_of_scratch_wall_clock": (
                to_reach / scratch.train_seconds if to_reach and scratch.train_seconds else None
            ),
        },
    }


def compare_seeds(
    arms: list[tuple[int, TrainResult, TrainResult]],
    *,
    base_acc: float | None,
    selection_seconds: float,
    merge_seconds: float,
) -> dict[str, Any]:
    """Both arms trained once per seed, ``(seed, scratch, mashup)``, on the same items.

    Each seed's own comparison goes to ``runs``; the rest summarises them: accuracies averaged
    over seeds, the difference with an interval over items (each item's difference averaged
    over the seeds) and one over seeds and items, which the verdict reads.
    """
    runs = [
        {
            "seed": seed,
            **compare_runs(
                scratch,
                mashup,
                base_acc=base_acc,
                selection_seconds=selection_seconds,
                merge_seconds=merge_seconds,
            ),
        }
        for seed, scratch, mashup in arms
    ]
    diffs = {
        seed: [
            int(m) - int(c)
            for m, c in zip(mashup.final_correct, scratch.final_correct, strict=True)
        ]
        for seed, scratch, mashup in arms
    }
    if len({len(d) for d in diffs.values()}) != 1:
        raise ValueError("every seed's arms must be evaluated on the same items")
    pooled = paired_intervals({"target": diffs})
    seeds_lo, seeds_hi = pooled.seeds_and_items

    def mean_acc(arm: str) -> float | None:
        values = [r["acc"][arm] for r in runs]
        return None if None in values else statistics.fmean(values)

    return {
        "eval_n": pooled.n_items,
        "seeds": [r["seed"] for r in runs],
        "acc": {"base": base_acc, "scratch": mean_acc("scratch"), "mashup": mean_acc("mashup")},
        "mashup_minus_scratch": {
            "diff": pooled.mean,
            "ci95": list(pooled.items),
            "ci95_seeds_and_items": [seeds_lo, seeds_hi],
            "significant": not (seeds_lo <= 0.0 <= seeds_hi),
            "verdict": verdict(pooled.seeds_and_items, [len(runs)], pooled.n_items),
        },
        "steps": runs[0]["steps"],
        # A run that never reaches scratch's accuracy counts as all its steps.
        "share_of_steps": statistics.fmean(
            1.0 if r["share_of_steps"] is None else r["share_of_steps"] for r in runs
        ),
        "never_reached": sum(r["share_of_steps"] is None for r in runs),
        "runs": runs,
    }


def plot_curves(curves: dict[str, list[CurvePoint]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for label, curve in curves.items():
        ax.plot([p.step for p in curve], [p.acc for p in curve], marker="o", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# The wall-clock table's rows: label, key in a comparison's "seconds".
WALL_CLOCK_ROWS = (
    ("selection", "selection"),
    ("merge", "merge"),
    ("mashup training to that step", "mashup_training_to_reach"),
    ("mashup total to that step", "mashup_total_to_reach"),
    ("mashup full training", "mashup_training_full"),
    ("scratch full training", "scratch_training_full"),
)


def _ci(interval: list[float]) -> str:
    return f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def report_markdown(report: dict[str, Any]) -> str:
    cmp = report["comparison"]
    # One training seed keeps the single comparison; several keep each seed's under "runs".
    runs = cmp.get("runs") or [{"seed": report["seed"], **cmp}]
    several = len(runs) > 1
    acc, delta = cmp["acc"], cmp["mashup_minus_scratch"]
    sel = report["selection"]
    trained = report.get("config", {}).get("train_seeds") or [report["seed"]]
    seed_text = (
        f"seed {report['seed']}"
        if trained == [report["seed"]]
        else f"training seed{'s' if several else ''} {', '.join(map(str, trained))} "
        f"(split, selection sample and merge: seed {report['seed']})"
    )
    lines = [
        f"# Mashup report: {Path(report['target']).name}",
        "",
        f"Base `{report['base']}`, zoo `{report['zoo']}`; selected {', '.join(sel['selected'])} "
        f"by {sel['metric']} on {sel['n']} target train items"
        + (" (successive halving)" if sel.get("halving") else "")
        + f"; merge `{report['merge_method']}`; "
        f"{cmp['steps']} steps at lr {report['lr']}, batch {report['batch_size']}, "
        f"{seed_text}; evaluated on {cmp['eval_n']} held-out items"
        + (" in the letter format" if report.get("format") == "letter" else "")
        + ".",
        "",
        *([f"Selection {sel['margin']['text']}.", ""] if sel.get("margin") else []),
        f"| model | accuracy{f' (mean over {len(runs)} seeds)' if several else ''} |",
        "|---|---|",
        f"| base | {_fmt(acc['base'])} |",
        f"| scratch | {_fmt(acc['scratch'])} |",
        f"| mashup | {_fmt(acc['mashup'])} |",
        "",
    ]
    if several:
        lines += [
            "| seed | scratch | mashup | mashup − scratch [95 % CI, items] "
            "| step reaching scratch's final |",
            "|---|---|---|---|---|",
            *(
                f"| {r['seed']} | {_fmt(r['acc']['scratch'])} | {_fmt(r['acc']['mashup'])} | "
                f"{r['mashup_minus_scratch']['diff']:+.3f} {_ci(r['mashup_minus_scratch']['ci95'])}"
                f" | {_fmt(r['mashup_step_reaching_scratch_final'])} of {r['steps']} |"
                for r in runs
            ),
            "",
            f"mashup − scratch over {len(runs)} seeds and {cmp['eval_n']} items: "
            f"{delta['diff']:+.3f} (paired bootstrap 95 % CI over items {_ci(delta['ci95'])}, "
            f"over seeds and items {_ci(delta['ci95_seeds_and_items'])}): {delta['verdict']}.",
        ]
    else:
        lines.append(
            f"mashup − scratch: {delta['diff']:+.3f} (paired bootstrap 95 % CI over items "
            f"{_ci(delta['ci95'])}): {delta['verdict']}."
        )
    if delta["verdict"].startswith("no claim"):
        lines.append(
            f"Below {CLAIM_SEEDS} training seeds (--seeds) and {CLAIM_ITEMS} evaluation items "
            "(--eval-n) a difference is reported but not called: another draw of training runs "
            "or of items could overturn it."
        )
    lines.append("")
    if several:
        never = cmp["never_reached"]
        lines.append(
            f"Mashup first reaches scratch's final accuracy at {cmp['share_of_steps']:.0%} of the "
            "steps, on average over the seeds"
            + (
                f" (never, within the budget, in {never} of {len(runs)}; counted as all)"
                if never
                else ""
            )
            + "."
        )
    else:
        lines.append(
            f"Mashup first reaches scratch's final accuracy at step "
            f"{_fmt(cmp['mashup_step_reaching_scratch_final'])} of {cmp['steps']}"
            + (
                f" ({cmp['share_of_steps']:.0%} of the steps)."
                if cmp["share_of_steps"] is not None
                else " (never, within the budget)."
            )
        )
    header = " | ".join(f"seed {r['seed']}" for r in runs) if several else "seconds"
    lines += [
        "",
        f"| wall-clock{', seconds' if several else ''} | {header} |",
        "|---|" + "---|" * len(runs),
        *(
            f"| {label} | " + " | ".join(_fmt(r["seconds"][key], 1) for r in runs) + " |"
            for label, key in WALL_CLOCK_ROWS
        ),
        "",
        "Training times count optimizer steps only (validation excluded).",
        "",
        "![learning curve](learning_curve.png)",
        "",
    ]
    return "\n".join(lines)


def report_html(markdown_text: str, title: str) -> str:
    """A self-contained HTML page: the Markdown's tables rendered, other lines as paragraphs."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if not table:
            return
        head, *rows = table
        body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
        for row in rows:
            body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        body.append("</table>")
        table.clear()

    for line in markdown_text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        flush()
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("!["):
            body.append('<img src="learning_curve.png" alt="learning curve">')
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;max-width:50em;"
        "margin:2em auto}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:.2em .6em}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )


def write_report(report: dict[str, Any], curves: dict[str, list[CurvePoint]], out: Path) -> None:
    """Write report.json, report.md, report.html and learning_curve.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    name = Path(report["target"]).name
    plot_curves(curves, out / "learning_curve.png", f"target: {name}")
    markdown_text = report_markdown(report)
    files = {
        "report.json": json.dumps(report, indent=2, default=str) + "\n",
        "report.md": markdown_text,
        "report.html": report_html(markdown_text, f"Mashup report: {name}"),
    }
    for name, text in files.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
