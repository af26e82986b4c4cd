"""Re-scoring finished leave-one-out arms on more validation items."""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import pytest

from mashup.bench import leave_one_out_rescore as rescore
from mashup.bench.leave_one_out import LooSettings, load_results, run_benchmark
from mashup.bench.leave_one_out_report import summarise
from mashup.errors import MashupError


@pytest.fixture()
def finished(settings: LooSettings) -> tuple[LooSettings, list[dict]]:
    """One finished (piqa, main, seed 0) run scored on 8 of its 40 validation items."""
    s = replace(settings, variants=("main",), seeds=(0,))
    return s, list(load_results(run_benchmark(s)).values())


def test_arms_are_scored_on_more_items_whose_first_are_the_runs_own(
    finished: tuple[LooSettings, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    s, rows = finished
    (row,) = rows
    out, agreement = rescore.rescore_rows(s, rows, 24)
    (new,) = out
    assert len(new["scratch_correct"]) == len(new["mashup_correct"]) == 24
    # The run's own 8 items come first and score as they were recorded.
    assert new["scratch_correct"][:8] == row["scratch_correct"]
    assert new["mashup_correct"][:8] == row["mashup_correct"]
    assert agreement.kept == [1.0, 1.0] and agreement.retrained == []
    assert "scratch_arm" not in new or new["scratch_arm"] == row["scratch_arm"]
    c = new["comparison"]
    assert c["eval_n"] == 24 and new["scored_on_run_items"] == 8
    assert c["acc"]["mashup"] == pytest.approx(statistics.fmean(new["mashup_correct"]))
    assert 0.0 <= c["acc"]["base"] <= 1.0
    assert "mashup_minus_scratch" not in c  # the run's interval was over its own items
    assert c["steps"] == row["comparison"]["steps"]  # the curves' numbers stay
    # The merged init is scored on the same 24 items; its first 8 give the recorded step-0 score.
    init = json.loads((rescore.init_dir(s, row) / "rescore_arm_mc_24.json").read_text())
    assert len(init["correct"]) == 24
    assert statistics.fmean(init["correct"][:8]) == pytest.approx(row["init_acc"], abs=0.03)
    assert new["init_acc"] == pytest.approx(statistics.fmean(init["correct"]))
    # Each arm's score is cached beside its adapter: a second pass scores nothing.
    arms = rescore.arm_dirs(s, row)
    assert all((arm / "rescore_arm_mc_24.json").is_file() for arm in arms.values())

    def no_forward(*args: object) -> None:
        raise AssertionError("scored again")

    real_score = rescore._score
    monkeypatch.setattr(rescore, "_score", no_forward)
    again, _ = rescore.rescore_rows(s, rows, 24)
    assert again == out
    # A corrupt cache file is read again from the folder-wide copy, not a traceback.
    monkeypatch.setattr(rescore, "_score", real_score)
    (arms["mashup"] / "rescore_arm_mc_24.json").write_text('{"correct": [1, 0')
    assert rescore.rescore_rows(s, rows, 24)[0] == out
    assert json.loads((arms["mashup"] / "rescore_arm_mc_24.json").read_text())["n"] == 24
    assert "| main | 1 × {0} (1 run)" in summarise(out)


def test_a_changed_adapter_is_scored_again(
    finished: tuple[LooSettings, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file, save_file

    s, rows = finished
    rescore.rescore_rows(s, rows, 16)
    weights = rescore.arm_dirs(s, rows[0])["mashup"] / "adapter_model.safetensors"
    tensors = load_file(weights)
    save_file({k: v + 1e-3 for k, v in tensors.items()}, weights)
    scored = []
    real = rescore._score
    monkeypatch.setattr(rescore, "_score", lambda d, *a: scored.append(d) or real(d, *a))
    rescore.rescore_rows(s, rows, 16)
    assert scored == [weights.parent]  # the scratch arm and the base come from their caches


def test_the_same_weights_elsewhere_are_scored_once(
    finished: tuple[LooSettings, list[dict]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import re
    import shutil

    from mashup.bench.leave_one_out import task_files

    s, rows = finished
    init = rescore.init_dir(s, rows[0])
    val_file = task_files("piqa")[1]
    first = rescore.rescore_arm(init, s, val_file, 16)
    # The folder-wide copy is named by the weights' hex digest (no colon, a portable name).
    (shared,) = (s.out / "rescores").iterdir()
    assert re.fullmatch(r"[0-9a-f]{64}_rescore_arm_mc_16\.json", shared.name)
    # Another seed's merge of the same adapters is the same file in another folder.
    copy = tmp_path / "seed1_merged"
    shutil.copytree(init, copy, ignore=shutil.ignore_patterns("rescore_*"))
    scored = []
    real = rescore._score
    monkeypatch.setattr(rescore, "_score", lambda d, *a: scored.append(d) or real(d, *a))
    assert rescore.rescore_arm(copy, s, val_file, 16) == first
    assert scored == [] and (copy / "rescore_arm_mc_16.json").is_file()
    # The same weights on another target's items are scored on those.
    other = tmp_path / "other_target"
    shutil.copytree(init, other, ignore=shutil.ignore_patterns("rescore_*"))
    rescore.rescore_arm(other, s, task_files("csqa")[1], 16)
    assert scored == [other]


def test_a_rescore_that_contradicts_the_recorded_verdicts_is_refused(
    finished: tuple[LooSettings, list[dict]],
) -> None:
    s, rows = finished
    flipped = [{**rows[0], "mashup_correct": [1 - c for c in rows[0]["mashup_correct"]]}]
    with pytest.raises(MashupError, match=r"agree with the row's recorded verdicts on only 0%"):
        rescore.rescore_rows(s, flipped, 16)


def test_the_scratch_arm_of_another_folder_is_found_there(tmp_path: Path) -> None:
    s = LooSettings(out=tmp_path / "probe", base=tmp_path / "base")
    row = {"target": "piqa", "seed": 2, "variant": "k1"}
    assert rescore.arm_dirs(s, row) == {
        "scratch": s.out / "targets/piqa/seed2/scratch",
        "mashup": s.out / "targets/piqa/seed2/k1/mashup",
    }
    recorded = {**row, "scratch_recorded_in": str(tmp_path / "default")}
    assert (
        rescore.arm_dirs(s, recorded)["scratch"] == tmp_path / "default/targets/piqa/seed2/scratch"
    )


@pytest.mark.parametrize(
    ("n", "message"),
    [
        (8, "already scored on 8 items"),
        (41, "piqa has 40 validation items"),
    ],
)
def test_an_item_count_the_rows_or_files_cannot_give_is_refused(
    finished: tuple[LooSettings, list[dict]], n: int, message: str
) -> None:
    s, rows = finished
    with pytest.raises(MashupError, match=message):
        rescore.rescore_rows(s, rows, n)
    assert not list(s.out.rglob("rescore_*"))  # refused before anything is scored


def test_a_lost_adapter_is_named(finished: tuple[LooSettings, list[dict]]) -> None:
    import shutil

    s, rows = finished
    scratch = rescore.arm_dirs(s, rows[0])["scratch"]
    shutil.rmtree(scratch)
    with pytest.raises(MashupError, match=f"{scratch}: no trained adapter to re-score"):
        rescore.rescore_rows(s, rows, 16)


def test_a_lost_scratch_arm_is_retrained_with_its_rows_settings(
    finished: tuple[LooSettings, list[dict]],
) -> None:
    import shutil

    s, rows = finished
    scratch = rescore.arm_dirs(s, rows[0])["scratch"]
    shutil.rmtree(scratch)
    # Another lr on the command line: the row's own settings train the arm, which then
    # reproduces the row's recorded verdicts (checked inside rescore_rows).
    (new,), agreement = rescore.rescore_rows(replace(s, lr=1.0), rows, 16, retrain=True)
    assert (scratch / "adapter_model.safetensors").is_file()
    config = json.loads((scratch / "train_result.json").read_text())["config"]
    assert config["lr"] == rows[0]["lr"] and config["seed"] == 0 and config["steps"] == 4
    # Marked as retrained: on one machine and code version it reproduces the row's verdicts.
    assert (
        json.loads((scratch / "retrained.json").read_text())["row_finished_at"]
        == (rows[0]["finished_at"])
    )
    assert (
        new["scratch_arm"] == "retrained"
        and new["scratch_correct"][:8] == (rows[0]["scratch_correct"])
    )
    assert agreement.retrained == [1.0] and agreement.kept == [1.0]  # the mashup arm's
    # Across code versions a retrain is another draw: its disagreement is reported, not refused.
    flipped = [{**rows[0], "scratch_correct": [1 - c for c in rows[0]["scratch_correct"]]}]
    _, agreement = rescore.rescore_rows(s, flipped, 16)
    assert agreement.retrained == [0.0]
    assert "1 from-scratch arm whose adapters were lost was trained again" in agreement.text()
    assert "on 0% (a retrain is not bit-identical)" in agreement.text()


def test_the_script_rescores_and_summarises(finished: tuple[LooSettings, list[dict]]) -> None:
    import subprocess
    import sys

    s, _ = finished
    script = Path(__file__).parents[2] / "benchmarks" / "mashup_leave_one_out.py"
    flags = {
        "--out": s.out, "--base": s.base, "--tasks": ",".join(s.tasks), "--zoo-steps": s.zoo_steps,
        "--steps": s.steps, "--batch-size": s.batch_size, "--lr": s.lr, "--eval-n": s.eval_n,
        "--eval-every": s.eval_every, "--select-n": s.select_n,
    }  # fmt: skip
    argv = [str(v) for pair in flags.items() for v in pair]
    refused = subprocess.run(
        [sys.executable, str(script), *argv, "--rescore", "16"], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "--rescore only goes with --report" in refused.stderr
    refused = subprocess.run(
        [sys.executable, str(script), *argv, "--report", "--retrain-scratch"],
        capture_output=True,
        text=True,
    )
    assert (
        refused.returncode == 2 and "--retrain-scratch only goes with --rescore" in refused.stderr
    )
    done = subprocess.run(
        [sys.executable, str(script), *argv, "--report", "--rescore", "16"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("Re-scored: every arm's final adapter on the first 16")
    assert "the runs scored the first 8" in done.stdout
    assert "the merged init is scored on the same items" in done.stdout
    assert "| main | 1 × {0} (1 run)" in done.stdout
    # The command beside the re-scored numbers is the one that measures them again.
    assert "--report --rescore 16`" in done.stdout
    # --out is a scratch folder: nothing is written to the benchmark's results folders.
    assert not any(p.name.startswith("rescored_") for p in s.out.rglob("*"))
    cached = json.loads(
        (rescore.arm_dirs(s, {"target": "piqa", "seed": 0, "variant": "main"})["mashup"]
         / "rescore_arm_mc_16.json").read_text()
    )  # fmt: skip
    assert len(cached["correct"]) == 16 and cached["n"] == 16
    # --against re-scores the other folder's arms too, so both sides pair on the same 16 items.
    paired = subprocess.run(
        [
            sys.executable,
            str(script),
            *argv,
            "--report",
            "--rescore",
            "16",
            "--against",
            str(s.out),
        ],
        capture_output=True,
        text=True,
    )
    assert paired.returncode == 0, paired.stderr[-2000:]
    assert f"Mashup arms against {s.out}'s" in paired.stdout
    assert "| main | piqa ({0}) |" in paired.stdout and "+0.0 [+0.0, +0.0]" in paired.stdout
    # --save keeps a filtered report, here beside the rows of the --out folder.
    saved = subprocess.run(
        [sys.executable, str(script), *argv, "--report", "--seeds", "0", "--save", "seed0"],
        capture_output=True,
        text=True,
    )
    assert saved.returncode == 0, saved.stderr[-2000:]
    text = (s.out / "summary_seed0.md").read_text()
    assert "| main | 1 × {0} (1 run)" in text and text in saved.stdout
    assert "--seeds 0 --save seed0`" in text  # its command re-measures it


def test_the_merged_init_is_left_out_where_it_was_not_kept_and_refused_if_it_changed(
    finished: tuple[LooSettings, list[dict]],
) -> None:
    import shutil

    s, rows = finished
    (row,) = rows
    moved = {**row, "init_acc": (row["init_acc"] + 0.5) % 1.0}  # another init, 4 of 8 items off
    with pytest.raises(MashupError, match="the merged init scores"):
        rescore.rescore_rows(s, [moved], 16)
    shutil.rmtree(rescore.init_dir(s, row))
    (new,), _ = rescore.rescore_rows(s, rows, 16)
    assert "init_acc" not in new  # recorded on the run's 8 items only: not beside the 16
