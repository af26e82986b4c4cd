"""Comparing two training runs and writing the report (Markdown, HTML, JSON, learning curve)."""

from __future__ import annotations

import html
import json
import os
import random
from pathlib import Path
from typing import Any

from mashup.train.config import CurvePoint, TrainResult


def paired_bootstrap(
    a: list[bool], b: list[bool], *, samples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired items and its 95 % percentile bootstrap interval."""
    if len(a) != len(b) or not a:
        raise ValueError("paired bootstrap needs two equally long, non-empty lists")
    n = len(a)
    diffs = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    lo = means[int(0.025 * samples)]
    hi = means[min(samples - 1, int(0.975 * samples))]
    return sum(diffs) / n, lo, hi


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
    reach = first_step_reaching(mashup.curve, scratch_acc) if scratch_acc is not None else None
    overhead = selection_seconds + merge_seconds
    to_reach = overhead + reach.train_seconds if reach is not None else None
    return {
        "eval_n": len(scratch.final_correct),
        "acc": {"base": base_acc, "scratch": scratch_acc, "mashup": mashup_acc},
        "mashup_minus_scratch": {
            "diff": diff,
            "ci95": [lo, hi],
            "significant": not (lo <= 0.0 <= hi),
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


def report_markdown(report: dict[str, Any]) -> str:
    cmp = report["comparison"]
    acc, sec, delta = cmp["acc"], cmp["seconds"], cmp["mashup_minus_scratch"]
    sel = report["selection"]
    lines = [
        f"# Mashup report: {Path(report['target']).name}",
        "",
        f"Base `{report['base']}`, zoo `{report['zoo']}`; selected {', '.join(sel['selected'])} "
        f"by {sel['metric']} on {sel['n']} target train items"
        + (" (successive halving)" if sel.get("halving") else "")
        + f"; merge `{report['merge_method']}`; "
        f"{cmp['steps']} steps at lr {report['lr']}, batch {report['batch_size']}, seed "
        f"{report['seed']}; evaluated on {cmp['eval_n']} held-out items"
        + (" in the letter format" if report.get("format") == "letter" else "")
        + ".",
        "",
        *([f"Selection {sel['margin']['text']}.", ""] if sel.get("margin") else []),
        "| model | accuracy |",
        "|---|---|",
        f"| base | {_fmt(acc['base'])} |",
        f"| scratch | {_fmt(acc['scratch'])} |",
        f"| mashup | {_fmt(acc['mashup'])} |",
        "",
        f"mashup − scratch: {delta['diff']:+.3f} (paired bootstrap 95 % CI "
        f"[{delta['ci95'][0]:+.3f}, {delta['ci95'][1]:+.3f}]"
        + ("" if delta["significant"] else "; a tie")
        + ")",
        "",
        f"Mashup first reaches scratch's final accuracy at step "
        f"{_fmt(cmp['mashup_step_reaching_scratch_final'])} of {cmp['steps']}"
        + (
            f" ({cmp['share_of_steps']:.0%} of the steps)."
            if cmp["share_of_steps"] is not None
            else " (never, within the budget)."
        ),
        "",
        "| wall-clock | seconds |",
        "|---|---|",
        f"| selection | {_fmt(sec['selection'], 1)} |",
        f"| merge | {_fmt(sec['merge'], 1)} |",
        f"| mashup training to that step | {_fmt(sec['mashup_training_to_reach'], 1)} |",
        f"| mashup total to that step | {_fmt(sec['mashup_total_to_reach'], 1)} |",
        f"| mashup full training | {_fmt(sec['mashup_training_full'], 1)} |",
        f"| scratch full training | {_fmt(sec['scratch_training_full'], 1)} |",
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
