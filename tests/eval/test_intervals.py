"""Paired intervals and verdicts (``mashup.eval.intervals``)."""

from __future__ import annotations

import math

import pytest

from mashup.eval.intervals import T_975, bootstrap_ci, seeds_and_items_ci, seeds_t_interval, verdict


def test_bootstrap_ci_holds_the_mean_and_shrinks_with_more_items() -> None:
    small = [1.0, 0.0, -1.0, 1.0, 0.0] * 4
    mean, lo, hi = bootstrap_ci(small)
    assert lo <= mean <= hi and mean == pytest.approx(0.2)
    _, lo_big, hi_big = bootstrap_ci(small * 25)
    assert hi_big - lo_big < (hi - lo) / 3
    assert bootstrap_ci([0.5] * 10)[1:] == (0.5, 0.5)


def test_the_seeds_and_items_interval_widens_with_run_to_run_variance() -> None:
    # Three runs of one target: every item gains 1, 0 and 1 point. Averaged per item, every
    # item gains 2/3 and resampling items alone gives a zero-width interval; resampling the
    # runs too gives one as wide as the runs disagree.
    runs = {0: [1] * 200, 1: [0] * 200, 2: [1] * 200}
    assert bootstrap_ci([2 / 3] * 200)[1:] == pytest.approx((2 / 3, 2 / 3))
    lo, hi = seeds_and_items_ci({"a": runs})
    assert lo == pytest.approx(0.0) and hi == pytest.approx(1.0)
    # Runs that agree item by item leave only the item noise: about the items-only interval.
    items = [1, 0, -1, 1, 0] * 40
    _, item_lo, item_hi = bootstrap_ci(items)
    lo, hi = seeds_and_items_ci({"a": {0: items, 1: items, 2: items}})
    assert lo < 0.2 < hi
    assert hi - lo == pytest.approx(item_hi - item_lo, rel=0.15)
    # Targets pool their items, weighing each item the same.
    lo, hi = seeds_and_items_ci({"a": {0: [1] * 300}, "b": {0: [0] * 100}})
    assert (lo, hi) == pytest.approx((0.75, 0.75))
    with pytest.raises(ValueError, match="at least one"):
        seeds_and_items_ci({"a": {}})


def test_one_seed_is_drawn_for_every_target_that_ran_the_same_seeds() -> None:
    # Seed 0 gains on all targets, seed 1 on none. Drawn together, the targets' seed-0
    # runs come and go at once (a sample with seed 1 twice gains nothing anywhere); drawn per
    # target, the two targets' draws would average out and the interval would be narrower.
    together = {t: {0: [1] * 100, 1: [0] * 100} for t in "abc"}
    assert seeds_and_items_ci(together) == pytest.approx((0.0, 1.0))
    # Other seed sets: each target draws its own, so the ends need all three targets' draws
    # to agree (1 in 64 each) and the interval sits inside.
    apart = {t: {0: [1] * 100, other: [0] * 100} for t, other in zip("abc", (1, 2, 3), strict=True)}
    lo, hi = seeds_and_items_ci(apart)
    assert lo > 0.0 and hi < 1.0


def test_a_verdict_needs_three_seeds_and_five_hundred_items_on_every_target() -> None:
    assert verdict((0.1, 0.3), [3, 3], 500) == "better"
    assert verdict((-0.3, -0.1), [3], 500) == "worse"
    assert verdict((-0.1, 0.3), [5], 900) == "tie"
    assert verdict((0.1, 0.3), [3], 499) == "no claim (3 seeds, 499 items; interval says better)"
    assert verdict((0.1, 0.3), [1, 3], 600) == (
        "no claim (1–3 seeds per target, 600 items; interval says better)"
    )


def test_the_seeds_t_interval_is_students() -> None:
    mean, lo, hi = seeds_t_interval([0.1, 0.2, 0.3])
    # sd 0.1, n 3: half-width t(0.975, 2) · 0.1 / √3.
    assert mean == pytest.approx(0.2) and hi - mean == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert mean - lo == pytest.approx(hi - mean)
    assert seeds_t_interval([0.5])[1:] == (-math.inf, math.inf)
    with pytest.raises(ValueError, match="at least one seed"):
        seeds_t_interval([])


def test_the_t_table_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df, value in enumerate(T_975, start=1):
        assert value == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4)
