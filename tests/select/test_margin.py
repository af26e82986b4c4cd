"""Selection margin: the k-th pick against the next one, paired bootstrap on the shared items."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mashup.cli import app
from mashup.select.core import select_entries
from mashup.select.margin import item_values, score_of, selection_margin
from mashup.zoo import Zoo


def acc_values(correct: list[bool]) -> list[tuple[float, float]]:
    return [(float(c), 1.0) for c in correct]


def test_a_clear_winner_is_separated_and_a_copy_is_not() -> None:
    always, never = acc_values([True] * 64), acc_values([False] * 64)
    clear = selection_margin("a", always, "b", never, "acc")
    assert clear.diff == 1.0 and clear.low == clear.high == 1.0 and clear.separated
    same = selection_margin("a", always, "b", always, "acc")
    assert same.diff == 0.0 and not same.separated
    assert "within noise" in same.describe() and "+100.0 points" in clear.describe()


def test_one_item_apart_is_within_noise() -> None:
    a = acc_values([i % 2 == 0 for i in range(128)])
    b = list(a)
    b[0] = (0.0, 1.0)  # b misses one item a gets right
    margin = selection_margin("a", a, "b", b, "acc")
    assert margin.diff == pytest.approx(1 / 128) and margin.items == 128
    assert margin.low <= 0.0 < margin.high and not margin.separated


def test_nll_margin_is_token_weighted_and_favours_the_lower() -> None:
    selected = [(2.0, 4.0), (1.0, 1.0)]  # 3 nats over 5 tokens: 0.6 per token
    runner_up = [(4.0, 4.0), (1.0, 1.0)]  # 1.0 per token
    margin = selection_margin("s", selected, "r", runner_up, "nll")
    assert score_of(selected) == pytest.approx(0.6)
    assert margin.diff == pytest.approx(0.4)  # positive: the selected entry's NLL is lower
    assert "nats/token" in margin.describe()


def test_unpaired_values_are_refused() -> None:
    with pytest.raises(ValueError, match="same items"):
        selection_margin("a", acc_values([True]), "b", acc_values([True, False]), "acc")


@settings(max_examples=50, deadline=None)
@given(
    st.integers(4, 40).flatmap(
        lambda n: st.tuples(
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.lists(st.booleans(), min_size=n, max_size=n),
        )
    )
)
def test_margin_is_the_score_difference_inside_its_interval(
    pair: tuple[list[bool], list[bool]],
) -> None:
    a, b = acc_values(pair[0]), acc_values(pair[1])
    margin = selection_margin("a", a, "b", b, "acc", samples=500)
    assert margin.diff == pytest.approx(score_of(a) - score_of(b))
    assert margin.low - 1e-12 <= margin.diff <= margin.high + 1e-12
    if margin.separated:
        assert margin.diff > 0
    # Swapping the two negates the margin.
    swapped = selection_margin("b", b, "a", a, "acc", samples=500)
    assert swapped.diff == pytest.approx(-margin.diff)


def test_selection_reports_its_margin_and_keeps_it_in_the_cache(
    tiny: dict[str, Path], zoo: Path
) -> None:
    first = select_entries(tiny["train"], zoo, tiny["base"], k=2, n=16)
    margin = first.margin
    assert margin is not None and margin.items == 16
    assert (margin.selected, margin.runner_up) == (first.ranking[1].name, first.ranking[2].name)
    assert margin.diff == pytest.approx(first.ranking[1].score - first.ranking[2].score)
    # A cached ranking has the same margin, from the per-item values stored beside the scores.
    again = select_entries(tiny["train"], zoo, tiny["base"], k=2, n=16)
    assert again.forwards == 0 and again.margin == margin
    # Nothing to compare with when every entry is selected; no per-item values for embedding.
    assert select_entries(tiny["train"], zoo, tiny["base"], k=3, n=16).margin is None
    assert select_entries(tiny["train"], zoo, tiny["base"], k=1, metric="random").margin is None


def test_a_score_cached_without_item_values_has_no_margin(tiny: dict[str, Path], zoo: Path):
    first = select_entries(tiny["train"], zoo, tiny["base"], k=1, n=8)
    catalog = Zoo.open(zoo)
    for c in first.ranking:  # as a catalog written before per-item values were kept
        catalog.set_score(c.name, first.target, "acc", c.score, n=8)
    again = select_entries(tiny["train"], zoo, tiny["base"], k=1, n=8)
    assert again.forwards == 0 and again.selected == first.selected and again.margin is None


def test_halving_margin_compares_the_last_survivor_with_the_last_cut(
    tiny: dict[str, Path], zoo: Path
) -> None:
    # Three candidates, k = 1: rounds on 4 and 8 items; the last cut is made on 8.
    race = select_entries(tiny["train"], zoo, tiny["base"], k=1, n=16, halving=True, metric="nll")
    margin = race.margin
    assert margin is not None and margin.items == 8
    assert (margin.selected, margin.runner_up) == (race.ranking[0].name, race.ranking[1].name)
    assert margin.diff == pytest.approx(race.ranking[1].score - race.ranking[0].score)
    assert margin.diff >= 0  # the survivor's NLL is the lower
    cached = select_entries(tiny["train"], zoo, tiny["base"], k=1, n=16, halving=True, metric="nll")
    assert cached.forwards == 0 and cached.margin == margin


def test_cli_prints_and_returns_the_margin(tiny: dict[str, Path], zoo: Path) -> None:
    runner = CliRunner()
    args = ["select", "--target", str(tiny["train"]), "--zoo", str(zoo), "--base"]
    args += [str(tiny["base"]), "--n", "16", "--k", "1"]
    data = json.loads(runner.invoke(app, [*args, "--json"]).stdout)
    assert data["margin"]["selected"] == data["selected"][0]
    assert data["margin"]["runner_up"] == data["ranking"][1]["name"]
    assert isinstance(data["margin"]["separated"], bool)
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and f"margin of {data['selected'][0]} over" in table.output
    shown = json.loads(
        runner.invoke(app, ["zoo", "show", data["selected"][0], "--zoo", str(zoo), "--json"]).stdout
    )
    assert shown["scores"][0]["meta"]["items"] == 16  # counted, not listed


def test_item_values_match_the_scores_they_stand_for() -> None:
    class Scored:
        def __init__(self, answer: int, lls: list[float], tokens: int) -> None:
            self.answer, self.loglikelihoods, self.gold_tokens = answer, lls, tokens
            self.correct = max(range(len(lls)), key=lls.__getitem__) == answer

    items = [Scored(0, [-1.0, -2.0], 2), Scored(1, [-1.0, -3.0], 3)]
    assert score_of(item_values(items, "acc")) == 0.5
    assert score_of(item_values(items, "nll")) == pytest.approx(4.0 / 5)
    with pytest.raises(ValueError, match="no per-item values"):
        item_values(items, "embedding")


def test_three_items_of_128_are_never_enough() -> None:
    # Even when every item the two disagree on favours the pick, 3 items of 128 stay within
    # noise and 4 separate them: the resamples that miss all 3 are more than 2.5 %.
    never = acc_values([False] * 128)
    for gap, separated in ((3, False), (4, True)):
        pick = acc_values([True] * gap + [False] * (128 - gap))
        assert selection_margin("a", pick, "b", never, "acc").separated is separated
