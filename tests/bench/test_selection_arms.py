"""``benchmarks/selection_arms.py``'s refusals: a report with no record behind it writes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "selection_arms.py"


def test_a_report_without_a_record_is_refused(tmp_path: Path) -> None:
    # A mistyped --base names a run (by its folder name) that was never measured.
    results = SCRIPT.parent / "results"
    before = sorted(p.name for p in results.iterdir())
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--report", "--base", str(tmp_path / "no-such-model")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert "selection_halving_no-such-model.json: no record to report" in done.stderr
    assert "run without --report first" in done.stderr
    assert sorted(p.name for p in results.iterdir()) == before
