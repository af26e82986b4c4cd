"""Summaries of leave-one-out rows: paired intervals, verdicts, goals, tables and the plot.

Works on the rows ``mashup.bench.leave_one_out`` appends to ``results.jsonl``, as loaded by its
caller: ``summarise`` returns the Markdown summary and ``plot`` draws the learning curves to the
path it is given. Neither reads nor changes a run folder.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mashup.bench.leave_one_out import GOALS, PAPER, VARIANTS
from mashup.eval.intervals import item_means, paired_intervals, seeds_and_items_ci, verdict


def diff_matrices(rows: Iterable[dict[str, Any]]) -> dict[str, dict[int, list[int]]]:
    """Per target and seed, mashup − scratch per item.

    Every seed of a target is scored on the same items, so the lists line up item by item.
    """
    by_target: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for row in rows:
        target, seed = row["target"], int(row.get("seed", 0))
        mashup, scratch = row["mashup_correct"], row["scratch_correct"]
        if len(mashup) != len(scratch) or not mashup:
            raise ValueError(f"{target} seed {seed}: unpaired correctness lists")
        if seed in by_target[target]:
            raise ValueError(f"{target} seed {seed}: two rows for one run")
        by_target[target][seed] = [m - c for m, c in zip(mashup, scratch, strict=True)]
    for target, per_seed in by_target.items():
        if len({len(d) for d in per_seed.values()}) != 1:
            raise ValueError(f"{target}: seeds were evaluated on different numbers of items")
    return dict(by_target)


def item_diffs(rows: Iterable[dict[str, Any]]) -> dict[str, list[float]]:
    """Per target, mashup − scratch per validation item, averaged over the seeds present."""
    return {target: item_means(per_seed) for target, per_seed in diff_matrices(rows).items()}


@dataclass
class VariantSummary:
    """One variant over every finished (target, seed) row."""

    variant: str
    rows: int
    targets: list[str]
    seeds: list[int]
    scratch: float
    mashup: float
    gain: float  # points, mashup − scratch, items weighted equally
    ci: tuple[float, float]  # points, resampling items (seeds averaged per item)
    ci_seeds: tuple[float, float]  # points, resampling seeds and items: the verdict's
    items: int  # evaluation items pooled over targets (seeds averaged per item)
    share_of_steps: float  # never reaching scratch's accuracy counts as all steps
    share_of_wall_clock: float
    selection_in_steps: float  # selection cost in scratch training steps (of the same run)
    # Share of items one arm gets right and the other wrong: no gain can exceed it.
    scored_differently: float
    never_reached: int
    per_target: dict[str, dict[str, Any]] = field(default_factory=dict)
    seed_counts: dict[str, int] = field(default_factory=dict)  # finished seeds per target


def wall_clock_share(c: dict[str, Any], selection_steps: float | None = None) -> float:
    """Mashup's time to reach scratch's final accuracy (selection + merge + training), as a
    share of scratch's training time; a run that never reaches it counts its whole training.

    ``selection_steps`` replaces the run's selection cost by another one measured in scratch
    training steps (a ratio measured in another run), to price a different selection procedure
    on the same training run.
    """
    sec = c["seconds"]
    scratch = sec["scratch_training_full"]
    selection = (
        sec["selection"] if selection_steps is None else selection_steps * scratch / c["steps"]
    )
    reached = c["mashup_step_reaching_scratch_final"] is not None
    training = sec["mashup_training_to_reach"] if reached else sec["mashup_training_full"]
    return (selection + sec["merge"] + training) / scratch


def _row_numbers(c: dict[str, Any]) -> dict[str, float]:
    """Accuracies, share of steps, share of wall-clock and selection cost of one run."""
    sec = c["seconds"]
    wall = sec["share_of_scratch_wall_clock"]
    if wall is None:  # never reached: at least the whole run plus the overhead
        wall = wall_clock_share(c)
    return {
        "scratch": c["acc"]["scratch"],
        "mashup": c["acc"]["mashup"],
        # Never reaching scratch's accuracy counts as all steps (a lower bound).
        "share_of_steps": c["share_of_steps"] if c["share_of_steps"] is not None else 1.0,
        "share_of_wall_clock": wall,
        "selection_in_steps": sec["selection"] / (sec["scratch_training_full"] / c["steps"]),
    }


def scored_differently(row: dict[str, Any]) -> float:
    """Share of the evaluation items one arm of a run gets right and the other wrong.

    It bounds the run's gain either way: on the other items both arms score alike."""
    pairs = list(zip(row["scratch_correct"], row["mashup_correct"], strict=True))
    return sum(a != b for a, b in pairs) / len(pairs)


def summarise_variant(variant: str, rows: list[dict[str, Any]]) -> VariantSummary:
    """Means over seeds per target, then over targets (every target weighs the same)."""
    matrices = diff_matrices(rows)
    pooled = paired_intervals(matrices)
    per_target = {}
    for target in sorted(matrices):
        mine = [r for r in rows if r["target"] == target]
        numbers = [_row_numbers(r["comparison"]) for r in mine]
        own = paired_intervals({target: matrices[target]})
        per_target[target] = {
            "seeds": sorted(r["seed"] for r in mine),
            "selected": sorted({", ".join(r["selected"]) for r in mine}),
            "base": mine[0]["comparison"]["acc"]["base"],
            **{key: statistics.fmean(n[key] for n in numbers) for key in numbers[0]},
            "diff": own.mean,
            "ci": own.items,
            "ci_seeds": own.seeds_and_items,
            "reach": [r["comparison"]["mashup_step_reaching_scratch_final"] for r in mine],
            "steps": mine[0]["comparison"]["steps"],
            "scored_differently": statistics.fmean(scored_differently(r) for r in mine),
            # The merged init before training, on the arms' items (None: not recorded).
            "init": (
                statistics.fmean(r["init_acc"] for r in mine)
                if all("init_acc" in r for r in mine)
                else None
            ),
        }

    def over_targets(key: str) -> float:
        return statistics.fmean(t[key] for t in per_target.values())

    return VariantSummary(
        variant=variant,
        rows=len(rows),
        targets=sorted(matrices),
        seeds=sorted({r["seed"] for r in rows}),
        seed_counts=seeds_per_target(rows),
        scratch=100 * over_targets("scratch"),
        mashup=100 * over_targets("mashup"),
        gain=100 * pooled.mean,
        ci=_points(pooled.items),
        ci_seeds=_points(pooled.seeds_and_items),
        items=pooled.n_items,
        share_of_steps=over_targets("share_of_steps"),
        share_of_wall_clock=over_targets("share_of_wall_clock"),
        selection_in_steps=over_targets("selection_in_steps"),
        scored_differently=over_targets("scored_differently"),
        never_reached=sum(r["comparison"]["share_of_steps"] is None for r in rows),
        per_target=per_target,
    )


def goals_met(v: VariantSummary) -> dict[str, bool]:
    """Which of the benchmark's three goals a variant meets (the gain needs its interval over
    seeds and items above zero as well as the +2 points)."""
    return {
        "gain": v.gain >= GOALS["gain_points"] and v.ci_seeds[0] > 0,
        "steps": v.share_of_steps <= GOALS["share_of_steps"],
        "wall": v.share_of_wall_clock <= GOALS["share_of_wall_clock"],
    }


def against_main(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each ablation against main's mashup arm on the (target, seed) runs both finished.

    Same items, same scratch: the paired difference isolates the ablated choice (selection
    metric, k or merge method), which comparing both gains over scratch would blur.
    """
    rows = list(rows)
    main = {(r["target"], r["seed"]): r for r in rows if r["variant"] == "main"}
    out = []
    for variant in VARIANTS:
        if variant == "main":
            continue
        paired = _paired_mashup_arms([r for r in rows if r["variant"] == variant], main)
        if paired is not None:
            out.append({"variant": variant, **paired})
    return out


def against_folder(
    rows: Iterable[dict[str, Any]], other: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each variant's mashup arm against the same variant's in another run folder.

    For two folders that differ in the library only (``scratch_from``), this isolates the
    library: same targets, seeds and items. ``main`` holds the other folder's accuracy and
    ``ablation`` this one's, as in ``against_main``.
    """
    rows, other = list(rows), list(other)
    out = []
    for variant in VARIANTS:
        there = {(r["target"], r["seed"]): r for r in other if r["variant"] == variant}
        paired = _paired_mashup_arms([r for r in rows if r["variant"] == variant], there)
        if paired is not None:
            out.append({"variant": variant, **paired})
    return out


def _paired_mashup_arms(
    rows: list[dict[str, Any]], reference: dict[tuple[str, int], dict[str, Any]]
) -> dict[str, Any] | None:
    """``rows``' mashup arms against ``reference``'s on the (target, seed) runs both have."""
    pairs = [
        {
            "target": r["target"],
            "seed": r["seed"],
            "mashup_correct": r["mashup_correct"],
            "scratch_correct": reference[(r["target"], r["seed"])]["mashup_correct"],
        }
        for r in rows
        if (r["target"], r["seed"]) in reference
    ]
    if not pairs:
        return None
    matrices = diff_matrices(pairs)
    pooled = paired_intervals(matrices)

    def accuracy(key: str) -> float:
        per_target = defaultdict(list)
        for pair in pairs:
            per_target[pair["target"]].append(statistics.fmean(pair[key]))
        return 100 * statistics.fmean(statistics.fmean(v) for v in per_target.values())

    return {
        "targets": sorted(matrices),
        "seeds": sorted({p["seed"] for p in pairs}),
        "seed_counts": seeds_per_target(pairs),
        "main": accuracy("scratch_correct"),
        "ablation": accuracy("mashup_correct"),
        "diff": 100 * pooled.mean,
        "ci": _points(pooled.items),
        "ci_seeds": _points(pooled.seeds_and_items),
        "items": pooled.n_items,
    }


def _points(interval: tuple[float, float]) -> tuple[float, float]:
    return (100 * interval[0], 100 * interval[1])


def seeds_per_target(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many seeds each target has finished (a claim needs enough on every target)."""
    seeds: dict[str, set[int]] = defaultdict(set)
    for row in rows:
        seeds[row["target"]].add(int(row.get("seed", 0)))
    return {target: len(s) for target, s in seeds.items()}


def _interval(ci: tuple[float, float], scale: float = 1.0) -> str:
    return f"[{scale * ci[0]:+.1f}, {scale * ci[1]:+.1f}]"


def _margin_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The last pick's lead over the next candidate, per (variant, target) that recorded it."""
    from mashup.select.margin import Margin

    margins = {}
    for row in rows:
        if row.get("selection_margin"):
            margins[(row["variant"], row["target"])] = row["selection_margin"]
    if not margins:
        return []
    lines = [
        "",
        "Selection margins (the last pick over the best candidate left out, on the selection "
        "sample; paired bootstrap over its items):",
        "",
        "| variant | target | last pick | next | lead [95 % CI] | items | separated |",
        "|---|---|---|---|---|---|---|",
    ]
    for (variant, target), data in sorted(margins.items()):
        m = Margin.from_dict(data)
        lines.append(
            f"| {variant} | {target} | {m.selected} | {m.runner_up} | {m.lead(digits=1)} "
            f"| {m.items} | {'yes' if m.separated else 'no'} |"
        )
    return lines


def summarise(
    rows: Iterable[dict[str, Any]],
    command: str = "",
    against: tuple[str, Iterable[dict[str, Any]]] | None = None,
) -> str:
    """The README's Markdown: variants against scratch, main per target, paper and goals.

    ``against`` (a name, its rows) adds each variant's mashup arm against the same variant's in
    another run folder, on the (target, seed) runs both finished."""
    rows = list(rows)
    by_variant = {
        v: summarise_variant(v, [r for r in rows if r["variant"] == v])
        for v in VARIANTS
        if any(r["variant"] == v for r in rows)
    }
    lines = [f"Command: `{command}`", ""] if command else []
    lines += [
        "| variant | targets × seeds | scratch acc | mashup acc | gain, points [95 % CI, items] "
        "| [95 % CI, seeds and items] | verdict | share of steps to reach scratch "
        "| share of wall-clock (incl. selection + merge) | selection cost, in scratch steps "
        "| never reached |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in by_variant.values():
        lines.append(
            f"| {v.variant} | {len(v.targets)} × {{{', '.join(map(str, v.seeds))}}} "
            f"({v.rows} run{'s' if v.rows != 1 else ''}) | "
            f"{v.scratch:.1f} | {v.mashup:.1f} | {v.gain:+.1f} "
            f"{_interval(v.ci)} | {_interval(v.ci_seeds)} | "
            f"{verdict(v.ci_seeds, v.seed_counts.values(), v.items)} | "
            f"{v.share_of_steps:.0%} | {v.share_of_wall_clock:.0%} | "
            f"{v.selection_in_steps:.0f} | {v.never_reached} |"
        )
    # Every variant's own per-target table: the ablations' gains come from their own targets.
    for v in by_variant.values():
        lines += [
            "",
            f"Per target ({v.variant}):",
            "",
            "| target | seeds | selected | base | scratch | mashup | diff, points [95 % CI, items] "
            "| [95 % CI, seeds and items] | merged init (step 0) "
            "| step reaching scratch's final (per seed) | wall-clock vs scratch "
            "| items scored differently |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for target, t in v.per_target.items():
            reach = ", ".join("never" if r is None else str(r) for r in t["reach"])
            # When training ends below the base, "reaching scratch" is reached by the init.
            below = " (scratch ends below base)" if t["scratch"] < t["base"] else ""
            init = "–" if t["init"] is None else f"{100 * t['init']:.1f}"
            lines.append(
                f"| {target} | {len(t['seeds'])} | {'; '.join(t['selected'])} | "
                f"{100 * t['base']:.0f} | {100 * t['scratch']:.1f}{below} | "
                f"{100 * t['mashup']:.1f} | {100 * t['diff']:+.1f} "
                f"{_interval(t['ci'], 100)} | "
                f"{_interval(t['ci_seeds'], 100)} | {init} | "
                f"{reach} of {t['steps']} | {t['share_of_wall_clock']:.0%} "
                f"| {t['scored_differently']:.0%} |"
            )
    main = by_variant.get("main")
    if main is not None:
        met = goals_met(main)
        lines += [
            "",
            "Goals (main, averaged over targets): "
            f"gain ≥ +{GOALS['gain_points']:.0f} points: {'met' if met['gain'] else 'not met'} "
            f"({main.gain:+.1f}); ≤ {GOALS['share_of_steps']:.0%} of steps: "
            f"{'met' if met['steps'] else 'not met'} ({main.share_of_steps:.0%}); "
            f"≤ {GOALS['share_of_wall_clock']:.0%} of wall-clock: "
            f"{'met' if met['wall'] else 'not met'} ({main.share_of_wall_clock:.0%}).",
            "",
            f"The two arms score {main.scored_differently:.1%} of the items differently (one "
            "right, the other wrong; mean over seeds, then targets): no gain can exceed that.",
        ]
        inits = {k: v for k, v in main.per_target.items() if v["init"] is not None}
        if inits:
            mean = {
                key: 100 * statistics.fmean(v[key] for v in inits.values())
                for key in ("base", "init", "scratch", "mashup")
            }
            lines += [
                "",
                f"Before any training on the target, the merged init scores {mean['init']:.1f} "
                f"against the base's {mean['base']:.1f} (scratch ends at {mean['scratch']:.1f}, "
                f"mashup at {mean['mashup']:.1f}; {len(inits)} target"
                f"{'s' if len(inits) != 1 else ''} whose rows record it, on the same items as "
                "the arms).",
            ]
            # The other variants' inits say how much of their gain is the head start.
            others = []
            for v in by_variant.values():
                starts = [t["init"] for t in v.per_target.values()]
                if v.variant != "main" and None not in starts:
                    others.append(f"{v.variant} {100 * statistics.fmean(starts):.1f}")
            if others:
                lines[-1] += f" The other variants' merged inits: {', '.join(others)}."
    if len(by_variant) > 1:
        lines += [
            "",
            f"Goals by variant (gain ≥ +{GOALS['gain_points']:.0f} points with its "
            f"seeds-and-items interval above 0; ≤ {100 * GOALS['share_of_steps']:.0f} % of the "
            f"steps; ≤ {100 * GOALS['share_of_wall_clock']:.0f} % of the wall-clock; averaged "
            "over targets, the gain unrounded so that a miss by a hair reads as one):",
            "",
            "| variant | gain, points | share of steps | share of wall-clock | goals met |",
            "|---|---|---|---|---|",
        ]
        word = {True: "met", False: "not met"}
        for v in by_variant.values():
            met = goals_met(v)
            lines.append(
                f"| {v.variant} | {v.gain:+.2f}, {word[met['gain']]} "
                f"| {v.share_of_steps:.0%}, {word[met['steps']]} "
                f"| {v.share_of_wall_clock:.0%}, {word[met['wall']]} "
                f"| {sum(met.values())} of 3{' (all)' if all(met.values()) else ''} |"
            )
    ablations = against_main(rows)
    if ablations:
        lines += [
            "",
            "Ablations against main (acc top-2, ab_mean) on the same targets and seeds:",
            "",
            "| variant | targets (seeds) | main acc | variant acc "
            "| variant − main, points [95 % CI, items] | [95 % CI, seeds and items] | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for a in ablations:
            lines.append(
                f"| {a['variant']} | {', '.join(a['targets'])} "
                f"({{{', '.join(map(str, a['seeds']))}}}) | {a['main']:.1f} | "
                f"{a['ablation']:.1f} | {a['diff']:+.1f} {_interval(a['ci'])} "
                f"| {_interval(a['ci_seeds'])} "
                f"| {verdict(a['ci_seeds'], a['seed_counts'].values(), a['items'])} |"
            )
    if against is not None:
        name, other = against
        lines += [
            "",
            f"Mashup arms against {name}'s on the same targets and seeds:",
            "",
            "| variant | targets (seeds) | there | here | here − there, points [95 % CI, items] "
            "| [95 % CI, seeds and items] | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for a in against_folder(rows, other):
            lines.append(
                f"| {a['variant']} | {', '.join(a['targets'])} "
                f"({{{', '.join(map(str, a['seeds']))}}}) | {a['main']:.1f} | "
                f"{a['ablation']:.1f} | {a['diff']:+.1f} {_interval(a['ci'])} "
                f"| {_interval(a['ci_seeds'])} "
                f"| {verdict(a['ci_seeds'], a['seed_counts'].values(), a['items'])} |"
            )
    lines += _margin_lines(rows)
    lines += ["", "Paper (LoRA, average over its targets):", ""]
    for model, p in PAPER.items():
        lines.append(
            f"- {model}: {p['scratch']} → {p['mashup']} "
            f"({p['mashup'] - p['scratch']:+.1f}), {p['share_of_steps']:.0%} of steps"
        )
    return "\n".join(lines) + "\n"


def plot_title(rows: Iterable[dict[str, Any]]) -> str:
    """The plot's title, naming the base and the arms' budget: plots of two runs look alike
    otherwise. Rows name their base unless it is the default SmolLM2-135M-Instruct."""
    rows = list(rows)
    steps = {r["comparison"]["steps"] for r in rows}
    budget = f"{steps.pop()} steps per arm" if len(steps) == 1 else "arm steps by target"
    bases = sorted({r.get("base") or "SmolLM2-135M" for r in rows})
    precision = {r.get("precision") for r in rows} - {None, "auto"}
    model = " / ".join(bases) + " + LoRA" + "".join(f", {p}" for p in sorted(precision))
    return f"Leave-one-out, {model}, {budget}\n(mean over seeds, 95 % CI over seeds and items)"


def plot(rows: Iterable[dict[str, Any]], path: Path) -> None:
    """Mashup − scratch per target (points, 95 % CI over seeds and items), one marker per
    variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    targets = sorted({r["target"] for r in rows})
    fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        matrices = diff_matrices(r for r in rows if r["variant"] == variant)
        xs, means, errs = [], [], [[], []]
        for x, target in enumerate(targets):
            if target not in matrices:
                continue
            mean = statistics.fmean(d for run in matrices[target].values() for d in run)
            lo, hi = seeds_and_items_ci({target: matrices[target]})
            xs.append(x - 0.4 + width * (i + 0.5))
            means.append(100 * mean)
            errs[0].append(100 * (mean - lo))
            errs[1].append(100 * (hi - mean))
        ax.errorbar(xs, means, yerr=errs, fmt="o", capsize=3, label=variant)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(targets)), targets, rotation=20)
    ax.set_ylabel("mashup − scratch, accuracy points")
    ax.set_title(plot_title(rows))
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
