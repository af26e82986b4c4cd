"""``benchmarks/gradient_picks.py``: the gradient metric's picks on several selection samples."""

from __future__ import annotations

import json
from pathlib import Path

from mashup.bench.leave_one_out import LooSettings
from mashup.zoo import Zoo
from tests.bench.conftest import load_script
from tests.factories import make_tiny_lora


def test_picks_per_sample_and_the_count_of_repeats(settings: LooSettings, tmp_path: Path):
    script = load_script("gradient_picks")
    zoo = Zoo.open(tmp_path / "zoo")
    for i, task in enumerate(("piqa", "csqa", "arc_easy")):
        adapter = make_tiny_lora(tmp_path / task, settings.base, seed=i)
        zoo.add(adapter, task=task, name=task)
    args = ["--zoo", str(tmp_path / "zoo"), "--base", str(settings.base), "--targets", "piqa"]
    args += ["--seeds", "0,1", "--n", "8", "--k", "1", "--out", str(tmp_path / "out")]
    script.main(args)
    record = json.loads((tmp_path / "out" / "gradient_picks.json").read_text())
    rows = record["records"]
    assert [r["seed"] for r in rows] == [0, 1]
    for row in rows:
        assert set(row["scores"]) == {"csqa", "arc_easy"}  # the target is left out
        assert row["selected"] == [max(row["scores"], key=row["scores"].get)]
    # Different samples give different gradients, so different scores.
    assert rows[0]["scores"] != rows[1]["scores"]
    table = (tmp_path / "out" / "gradient_picks.md").read_text()
    same = int(rows[0]["selected"] == rows[1]["selected"])
    assert f"| piqa | {rows[0]['selected'][0]} | {rows[1]['selected'][0]} | {same} of 1 |" in table


def test_the_table_counts_repeats_of_sample_zero() -> None:
    script = load_script("gradient_picks")
    records = [
        {"target": "a", "seed": 0, "selected": ["x", "y"]},
        {"target": "a", "seed": 1, "selected": ["y", "x"]},  # the same pair, other order
        {"target": "a", "seed": 2, "selected": ["x", "z"]},
        {"target": "b", "seed": 0, "selected": ["x", "y"]},
        {"target": "b", "seed": 1, "selected": ["x", "y"]},
    ]
    table = script.markdown(records, "cmd")
    assert "| a | x, y | y, x | x, z | 1 of 2 |" in table
    assert "| b | x, y | x, y | — | 1 of 1 |" in table
    assert "on 2 of 3 other samples" in table


def test_each_sample_takes_the_rows_that_trained_its_pairs() -> None:
    script = load_script("gradient_picks")
    records = [
        {"target": "a", "seed": 0, "selected": ["x", "y"]},
        {"target": "a", "seed": 1, "selected": ["y", "z"]},
        {"target": "b", "seed": 0, "selected": ["x", "y"]},
        {"target": "b", "seed": 1, "selected": ["x", "y"]},
        {"target": "a", "seed": 2, "selected": ["x", "z"]},  # never trained
    ]
    rows = [{"variant": "g", "target": "a", "seed": s, "selected": ["x", "y"]} for s in (0, 1)] + [
        {"variant": "g", "target": "b", "seed": 0, "selected": ["y", "x"]},
        {"variant": "g_sample1", "target": "a", "seed": 0, "selected": ["z", "y"]},
        {"variant": "main", "target": "a", "seed": 0, "selected": ["x", "z"]},  # not a g*
    ]
    chosen, missing = script.rows_for_sample(records, rows, 1, "g")
    assert missing == []
    assert [(r["target"], r["seed"], r["selected"], r["variant"]) for r in chosen] == [
        ("a", 0, ["z", "y"], "g"),
        ("b", 0, ["y", "x"], "g"),
    ]
    chosen, missing = script.rows_for_sample(records, rows, 0, "g")
    assert [(r["target"], r["seed"]) for r in chosen] == [("a", 0), ("a", 1), ("b", 0)]
    _, missing = script.rows_for_sample(records, rows, 2, "g")
    assert missing == ["a (x, z)"]


def test_bad_input_is_one_error_line_and_writes_nothing(
    settings: LooSettings, tmp_path: Path, capsys
) -> None:
    import pytest

    script = load_script("gradient_picks")
    out = tmp_path / "out"
    common = ["--base", str(settings.base), "--targets", "piqa", "--out", str(out)]
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"target": "piqa", "variant": "g"}\n')
    cases = [
        (["--zoo", str(tmp_path / "no-zoo")], "no-zoo"),
        (["--seeds", "0,x"], "--seeds '0,x': give integers"),
        (["--rows", str(tmp_path / "missing.jsonl")], "cannot read leave-one-out rows"),
        (["--rows", str(rows)], "line 1 lacks one of"),
        (["--from-record"], "no readable record"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            script.main([*common, *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1]
        assert not out.exists()
