"""``benchmarks/merge_retime.py``: a variant's merges re-run with two versions of the merge code."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from mashup.bench.leave_one_out import LooSettings, load_results, run_benchmark
from mashup.bench.leave_one_out_report import wall_clock_share
from tests.bench.conftest import load_script

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "merge_retime.py"


def _script():
    return load_script("merge_retime")


def _row(reached: bool) -> dict:
    seconds = {
        "selection": 0.0,
        "merge": 8.0,
        "mashup_training_to_reach": 10.0 if reached else None,
        "mashup_training_full": 40.0,
        "scratch_training_full": 40.0,
        "share_of_scratch_wall_clock": 18 / 40 if reached else None,
    }
    return {
        "comparison": {
            "steps": 20,
            "mashup_step_reaching_scratch_final": 5 if reached else None,
            "seconds": seconds,
        }
    }


@pytest.mark.parametrize("reached", [True, False])
def test_a_retimed_row_scales_its_merge_and_redoes_its_wall_clock(reached: bool) -> None:
    row = _row(reached)
    new = _script().retimed(row, 0.5)
    c = new["comparison"]
    assert c["seconds"]["merge"] == 4.0
    assert row["comparison"]["seconds"]["merge"] == 8.0  # the recorded row is left alone
    expected = (4 + (10 if reached else 40)) / 40
    assert wall_clock_share(c) == pytest.approx(expected)
    assert c["seconds"]["share_of_scratch_wall_clock"] == (
        pytest.approx(expected) if reached else None
    )


def test_the_script_merges_again_with_both_codes_and_reports(
    settings: LooSettings, tmp_path: Path
) -> None:
    s = replace(settings, variants=("random_ties",), seeds=(0,))
    rows = list(load_results(run_benchmark(s)).values())
    out = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--run", str(s.out), "--variant", "random_ties"]
        + ["--baseline", "HEAD", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=SCRIPT.parents[1],
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "merge_retime_random_ties.json").read_text())
    assert summary["rows"] == len(rows) == 1
    recorded = rows[0]["comparison"]["seconds"]["merge"]
    assert summary["recorded_merge_seconds_mean"] == recorded
    (per_row,) = summary["per_row"]
    assert per_row["ratio"] == pytest.approx(per_row["today_seconds"] / per_row["baseline_seconds"])
    assert per_row["retimed_merge_seconds"] == pytest.approx(recorded * per_row["ratio"])
    # Both codes rewrite the adapter the arm trained from (to float rounding).
    assert summary["max_diff_today_vs_trained_from"] < 1e-3
    assert summary["max_diff_baseline_vs_trained_from"] < 1e-3
    assert "re-timed" in (out / "merge_retime_random_ties.md").read_text()


def test_bad_input_is_named_and_writes_nothing(settings: LooSettings, tmp_path: Path) -> None:
    s = replace(settings, variants=("random_ties",), seeds=(0,))
    run_benchmark(s)

    def retime(run: Path, variant: str, baseline: str) -> str:
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "--run", str(run), "--variant", variant]
            + ["--baseline", baseline, "--out", str(tmp_path / "results")],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 1
        return done.stderr

    assert "no ties rows" in retime(s.out, "ties", "HEAD")
    assert "no results.jsonl; give a leave-one-out run folder" in retime(
        tmp_path, "random_ties", "HEAD"
    )
    assert "--baseline no-such-commit: git cannot read it here" in retime(
        s.out, "random_ties", "no-such-commit"
    )
    assert not (tmp_path / "results").exists()
