"""Successive-halving selection: the schedule, the race on fake scores, and the real scorer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mashup.cli import app
from mashup.errors import MashupError
from mashup.select.core import halving_rounds, select_entries, successive_halving
from mashup.zoo import Zoo


@dataclass
class FakeEntry:
    name: str


@dataclass
class FakeScore:
    """What the race reads of an ItemScore."""

    correct: bool
    answer: int = 0
    loglikelihoods: tuple[float, ...] = (0.0,)
    gold_tokens: int = 1


def run_race(matrix: list[list[bool]], k: int, cache: dict | None = None):
    """Race candidates c00, c01, ... whose per-item correctness is ``matrix``; returns the
    ranking and how many candidate-items were scored."""
    entries = [FakeEntry(f"c{i:02d}") for i in range(len(matrix))]
    by_name = {e.name: row for e, row in zip(entries, matrix, strict=True)}
    sample = list(range(len(matrix[0])))
    scored = {"items": 0}
    store = cache if cache is not None else {}

    def scorer(entry: FakeEntry, items: list[int]) -> list[FakeScore]:
        scored["items"] += len(items)
        return [FakeScore(by_name[entry.name][i]) for i in items]

    ranking = successive_halving(
        entries,
        sample,  # type: ignore[arg-type]
        k,
        "acc",
        scorer,
        lambda name, upto: store.get((name, upto)),
        lambda name, upto, value, per_item: store.__setitem__((name, upto), value),
    )
    return ranking, scored["items"]


def test_schedule_halves_candidates_and_doubles_items() -> None:
    assert halving_rounds(6, 2, 128) == [32, 64]  # 6 → 3 on 32 items, 3 → 2 on 64
    assert halving_rounds(3, 2, 128) == [64]
    assert halving_rounds(20, 2, 128) == [8, 16, 32, 64]
    assert halving_rounds(7, 1, 256) == [32, 64, 128]
    assert halving_rounds(2, 2, 128) == []  # nothing to cut
    assert halving_rounds(6, 2, 3) == [1, 2]  # never fewer than one item


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 9).flatmap(
        lambda m: st.tuples(
            st.integers(1, m - 1),
            st.lists(st.lists(st.booleans(), min_size=24, max_size=24), min_size=m, max_size=m),
        )
    )
)
def test_race_keeps_k_and_scores_only_its_schedule(case: tuple[int, list[list[bool]]]) -> None:
    k, matrix = case
    m, n = len(matrix), len(matrix[0])
    ranking, scored = run_race(matrix, k)
    rounds = halving_rounds(m, k, n)
    assert sorted(r.entry.name for r in ranking) == [f"c{i:02d}" for i in range(m)]
    # Candidates per round: all, then the better half (at least k) of the previous round.
    alive, expected, before = m, 0, 0
    for upto in rounds:
        expected += alive * (upto - before)
        alive, before = max(k, -(-alive // 2)), upto
    assert scored == expected <= m * n
    survivors = ranking[:k]
    assert all(r.out_in_round is None and r.items == rounds[-1] for r in survivors)
    assert all(r.out_in_round is not None for r in ranking[k:])
    # Each score is the accuracy on the items that candidate read.
    for r in ranking:
        row = matrix[int(r.entry.name[1:])]
        assert r.score == pytest.approx(sum(row[: r.items]) / r.items)
    # The survivors are the best of the last round on its items (ties broken by name).
    last = [r for r in ranking if r.items == rounds[-1]]
    best = sorted(last, key=lambda r: (-r.score, r.entry.name))[:k]
    assert [r.entry.name for r in survivors] == [r.entry.name for r in best]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 5),
    st.lists(st.lists(st.booleans(), min_size=16, max_size=16), min_size=6, max_size=6),
)
def test_a_candidate_right_on_every_item_is_always_selected(
    k: int, others: list[list[bool]]
) -> None:
    ranking, _ = run_race([[True] * 16, *others], k)
    assert "c00" in [r.entry.name for r in ranking[:k]]


def test_cached_prefix_scores_are_reused() -> None:
    matrix = [[i % (j + 2) == 0 for i in range(32)] for j in range(6)]
    cache: dict = {}
    first, scored = run_race(matrix, 2, cache)
    again, rescored = run_race(matrix, 2, cache)
    assert scored > 0 and rescored == 0
    assert [r.entry.name for r in again] == [r.entry.name for r in first]
    assert all(r.cached for r in again)
    # A cache that holds only the first round: later rounds re-read from the first item.
    first_round = halving_rounds(6, 2, 32)[0]
    partial = {key: v for key, v in cache.items() if key[1] == first_round}
    mixed, rescored = run_race(matrix, 2, partial)
    assert [r.entry.name for r in mixed] == [r.entry.name for r in first]
    assert rescored == 3 * halving_rounds(6, 2, 32)[1]


def test_select_by_halving_on_real_adapters(tiny: dict[str, Path], zoo: Path) -> None:
    # Three candidates, k = 1: two rounds, on 4 and then 8 of the 16 items.
    race = select_entries(tiny["train"], zoo, tiny["base"], k=1, n=16, halving=True)
    assert race.halving and race.n == 16
    assert [c.items for c in race.ranking] == [8, 8, 4]
    assert race.selected == [race.ranking[0].name]
    # A survivor's score is its accuracy on the first 8 items, as a full scoring of 8 gives.
    full8 = select_entries(tiny["train"], zoo, tiny["base"], k=1, n=8, use_cache=False)
    by_name = {c.name: c.score for c in full8.ranking}
    for c in race.ranking[:2]:
        assert c.score == pytest.approx(by_name[c.name])
    assert race.selected == full8.selected
    # Fewer forwards than scoring all three candidates on all 16 items.
    full16 = select_entries(tiny["train"], zoo, tiny["base"], k=1, n=16, use_cache=False)
    assert 0 < race.forwards < full16.forwards
    # The prefix scores are cached: the same race again runs no forward pass.
    again = select_entries(tiny["train"], zoo, tiny["base"], k=1, n=16, halving=True)
    assert again.forwards == 0 and all(c.cached for c in again.ranking)
    assert again.selected == race.selected
    assert Zoo.open(zoo).get_scores(full8.target, "acc") == pytest.approx(by_name)


def test_halving_with_nothing_to_cut_scores_everything(tiny: dict[str, Path], zoo: Path) -> None:
    result = select_entries(tiny["train"], zoo, tiny["base"], k=3, n=8, halving=True)
    assert not result.halving and len(result.selected) == 3
    assert all(c.items is None for c in result.ranking)


def test_halving_refuses_metrics_it_cannot_race(tiny: dict[str, Path], zoo: Path) -> None:
    for metric in ("embedding", "random"):
        with pytest.raises(MashupError, match="--halving is for an acc or nll score"):
            select_entries(tiny["train"], zoo, tiny["base"], k=1, metric=metric, halving=True)


def test_cli_halving(tiny: dict[str, Path], zoo: Path) -> None:
    runner = CliRunner()
    args = ["select", "--target", str(tiny["train"]), "--zoo", str(zoo), "--base"]
    args += [str(tiny["base"]), "--n", "16", "--k", "1", "--metric", "nll", "--halving"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["halving"] is True
    assert [c["items"] for c in data["ranking"]] == [8, 8, 4]
    scores = [c["score"] for c in data["ranking"][:2]]
    assert scores == sorted(scores)  # lower NLL first
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "items" in table.output
    bad = runner.invoke(app, [*args[:-3], "--metric", "random", "--halving"])
    assert bad.exit_code == 2 and "error: --halving is for an acc or nll score" in bad.output
