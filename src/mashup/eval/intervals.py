"""Paired intervals and verdicts for comparing two training arms on the same items.

Two arms (mashup and scratch, or two variants) score the same evaluation items, once per
training seed. ``bootstrap_ci`` resamples items; ``seeds_and_items_ci`` resamples the seeds as
well; ``verdict`` calls better / worse / tie from an interval, and only above the bar of
``CLAIM_SEEDS`` seeds and ``CLAIM_ITEMS`` items.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Below this many seeds or evaluation items a difference is reported but not called: the item
# bootstrap holds the trained runs fixed and cannot see how much a single training run varies.
CLAIM_SEEDS = 3
CLAIM_ITEMS = 500


def bootstrap_ci(
    values: list[float], *, samples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` and its 95 % percentile bootstrap interval."""
    import numpy as np

    if not values:
        raise ValueError("bootstrap needs at least one value")
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(samples, len(data)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(data.mean()), float(lo), float(hi)


def seeds_and_items_ci(
    matrices: dict[str, dict[int, list[int]]], *, samples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """95 % interval of the mean difference over items when the runs' seeds are resampled too.

    ``matrices`` maps each target to ``{seed: [difference per item]}``; a target's seeds score
    the same items, in the same order. Resampling items alone (``bootstrap_ci`` on the
    per-item means over seeds) holds the trained runs fixed: it says how another draw of items
    would move the result, not another draw of training runs, and in the leave-one-out
    benchmark the second is as large as the first (seed 0's gains that seeds 1 and 2 did not
    repeat). A target's seeds and items are crossed (every seed scores every item), so each
    bootstrap sample draws seeds and items independently, with replacement, and averages every
    (seed, item) pair drawn: the pigeonhole bootstrap (Owen 2007). It errs slightly wide with
    many seeds, but resampling 3 seeds sees about 2/3 of their variance, so it is no upper
    bound. One seed trains every target's arms from the same adapter init, so when all targets
    ran the same seeds, one draw of seeds serves them all; otherwise each target draws its own.
    Items weigh the same across targets, as in the pooled item interval; with one seed only the
    items vary.
    """
    import numpy as np

    if not matrices or not all(matrices.values()):
        raise ValueError("bootstrap needs at least one (target, seed) run")
    rng = np.random.default_rng(seed)
    seed_sets = {tuple(sorted(per_seed)) for per_seed in matrices.values()}
    shared = seed_sets.pop() if len(seed_sets) == 1 else None

    def draw_seeds(n: int) -> Any:
        return rng.multinomial(n, np.full(n, 1 / n), size=samples)

    shared_counts = draw_seeds(len(shared)) if shared else None
    total, items = np.zeros(samples), 0
    for target in sorted(matrices):
        per_seed = matrices[target]
        d = np.asarray([per_seed[s] for s in sorted(per_seed)], dtype=np.float64)  # seeds × items
        n_seeds, n_items = d.shape
        seed_counts = shared_counts if shared_counts is not None else draw_seeds(n_seeds)
        item_counts = rng.multinomial(n_items, np.full(n_items, 1 / n_items), size=samples)
        total += ((seed_counts @ d) * item_counts).sum(axis=1) / n_seeds
        items += n_items
    lo, hi = np.percentile(total / items, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass(frozen=True)
class PairedIntervals:
    """A mean paired difference over items and its two 95 % intervals."""

    mean: float
    items: tuple[float, float]  # resampling items, each item's difference averaged over seeds
    seeds_and_items: tuple[float, float]  # resampling seeds too: the one verdicts read
    n_items: int


def item_means(per_seed: dict[int, list[int]]) -> list[float]:
    """One target's differences per item, averaged over its seeds (which score the same items,
    so they are not independent samples: averaging first and resampling items is the paired,
    clustered bootstrap)."""
    return [statistics.fmean(column) for column in zip(*per_seed.values(), strict=True)]


def paired_intervals(matrices: dict[str, dict[int, list[int]]]) -> PairedIntervals:
    """``matrices`` (as for ``seeds_and_items_ci``) summarised: each item's difference averaged
    over its seeds, items pooled over targets in name order, and both intervals."""
    per_item = [mean for target in sorted(matrices) for mean in item_means(matrices[target])]
    mean, lo, hi = bootstrap_ci(per_item)
    return PairedIntervals(mean, (lo, hi), seeds_and_items_ci(matrices), len(per_item))


# Student's t at 0.975 by degrees of freedom 1..30 (a two-sided 95 % interval); beyond, 1.96.
T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def seeds_t_interval(diffs: list[float]) -> tuple[float, float, float]:
    """Mean of paired per-seed differences and its 95 % Student t interval.

    For arms scored on so many items that the item noise is small next to the run-to-run
    noise (an MQAR run answers thousands of queries), the seeds are the sample: each seed's
    two runs share their data and differ only in the arm. One seed gives no interval (±inf).
    """
    import math
    import statistics

    if not diffs:
        raise ValueError("an interval needs at least one seed")
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, -math.inf, math.inf
    df = len(diffs) - 1
    half = (
        (T_975[df - 1] if df <= len(T_975) else 1.96)
        * statistics.stdev(diffs)
        / math.sqrt(len(diffs))
    )
    return mean, mean - half, mean + half


def verdict(ci: tuple[float, float], seed_counts: Iterable[int], items: int) -> str:
    """better / worse / tie from ``ci`` (the seeds-and-items interval), or "no claim" below
    the bar of ``CLAIM_SEEDS`` seeds and ``CLAIM_ITEMS`` items.

    ``seed_counts`` holds each target's number of seeds. The bar is on the least-covered
    target: three seeds on one target and one on the others is one seed's worth of run-to-run
    variance for most of the items.
    """
    word = "better" if ci[0] > 0 else "worse" if ci[1] < 0 else "tie"
    counts = list(seed_counts)
    fewest, most = min(counts), max(counts)
    if fewest < CLAIM_SEEDS or items < CLAIM_ITEMS:
        seeds = f"{fewest}" if fewest == most else f"{fewest}–{most}"
        plural = "s" if most != 1 else ""
        per = " per target" if fewest != most else ""
        return f"no claim ({seeds} seed{plural}{per}, {items} items; interval says {word})"
    return word
