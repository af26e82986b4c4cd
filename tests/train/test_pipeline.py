"""End to end: zoo build, mashup run (report files and numbers), bad input, report maths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mashup.cli import app
from mashup.train.config import CurvePoint, TrainResult
from mashup.train.pipeline import merge_config_for
from mashup.train.report import compare_seeds, first_step_reaching, paired_bootstrap
from mashup.zoo import Zoo
from tests.factories import make_tiny_llama, make_tiny_lora
from tests.train.conftest import fake_benchmarks, write_mc


@pytest.fixture()
def built_zoo(tiny: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`mashup zoo build` on two tasks whose cached benchmark files are tiny generated data."""
    from mashup.data.assets import benchmark_path

    cache = tmp_path / "cache"
    fake_benchmarks(
        monkeypatch,
        cache,
        ("piqa", "csqa"),
        lambda path, i, task, _: write_mc(path, 32, seed=100 + i, gold_first=task == "piqa"),
    )
    zoo = tmp_path / "zoo"
    args = ["zoo", "build", "--base", str(tiny["base"]), "--tasks", "piqa,csqa", "--zoo", str(zoo)]
    args += ["--steps", "3", "--val-n", "8", "--lr", "5e-3", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["task"] for r in rows] == ["piqa", "csqa"]
    entries = {e.name: e for e in Zoo.open(zoo).list()}
    assert set(entries) == {"piqa", "csqa"}
    assert entries["piqa"].kind == "adapter" and "val_acc" in entries["piqa"].metrics
    assert entries["piqa"].dataset == str(benchmark_path("piqa", "train", cache))
    return zoo


def run_args(tiny: dict[str, Path], zoo: Path, out: Path, eval_n: int) -> list[str]:
    """`mashup run` on the tiny model and target: 2 steps, validated at the end, 8 items to
    select on."""
    args = ["run", str(out), "--target", str(tiny["train"]), "--zoo", str(zoo)]
    args += ["--base", str(tiny["base"]), "--eval-n", str(eval_n), "--steps", "2"]
    return [*args, "--eval-every", "2", "--select-n", "8"]


def test_run_selects_and_trains_in_the_precisions_asked(
    tiny: dict[str, Path], built_zoo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    args = run_args(tiny, built_zoo, out, eval_n=8)
    args += ["--select-precision", "bf16", "--precision", "bf16", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["selection"]["precision"] == "bf16"
    for arm in ("scratch", "mashup"):
        config = json.loads((out / arm / "train_result.json").read_text())["config"]
        assert config["precision"] == "bf16"
    for option in ("--precision", "--select-precision"):
        bad = CliRunner().invoke(app, [*args[:-1], option, "fp16"])
        assert bad.exit_code == 2 and f"unknown {option} 'fp16'" in bad.output


def test_run_selects_by_gradient_and_merges_the_updates(
    tiny: dict[str, Path], built_zoo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    args = run_args(tiny, built_zoo, out, eval_n=8)
    args += ["--metric", "gradient", "--k", "2", "--merge-method", "delta", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    selection = json.loads(result.stdout)["selection"]
    assert selection["metric"] == "gradient" and selection["forwards"] >= 1
    scores = [c["score"] for c in selection["ranking"]]
    assert len(selection["selected"]) == 2 and scores == sorted(scores, reverse=True)
    merged = json.loads((out / "merged.json").read_text())
    assert merged["config"]["lora_mode"] == "delta"


def test_run_end_to_end(tiny: dict[str, Path], built_zoo: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["run", str(out), "--target", str(tiny["train"]), "--zoo", str(built_zoo)]
    args += ["--base", str(tiny["base"]), "--eval-n", "16", "--steps", "4", "--eval-every", "2"]
    args += ["--select-n", "8", "--lr", "5e-3", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for name in ("report.json", "report.md", "report.html", "learning_curve.png"):
        assert (out / name).is_file()
    assert not out.with_name("report.partial").exists()
    cmp = report["comparison"]
    assert cmp["eval_n"] == 16 and cmp["steps"] == 4
    assert set(cmp["acc"]) == {"base", "scratch", "mashup"}
    lo, hi = cmp["mashup_minus_scratch"]["ci95"]
    assert lo <= cmp["mashup_minus_scratch"]["diff"] <= hi
    # One training run per arm and 16 items: reported, never called.
    assert cmp["mashup_minus_scratch"]["verdict"].startswith("no claim (1 seed, 16 items;")
    assert [p["step"] for p in report["curves"]["mashup"]] == [0, 2, 4]
    assert report["selection"]["selected"] and (out / "merged" / "adapter_config.json").is_file()
    assert "mashup − scratch" in (out / "report.md").read_text()
    # Two candidates, k = 2: nothing left out to measure a selection margin against.
    assert report["selection"]["margin"] is None
    # Both arms saw the same budget and learning rate.
    scratch = json.loads((out / "scratch" / "train_result.json").read_text())["config"]
    mashup = json.loads((out / "mashup" / "train_result.json").read_text())["config"]
    assert scratch["steps"] == mashup["steps"] and scratch["lr"] == mashup["lr"]
    assert mashup["init"] == str(out.with_name("report.partial") / "merged")


def test_run_trains_both_arms_once_per_seed(
    tiny: dict[str, Path], built_zoo: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report"
    args = run_args(tiny, built_zoo, out, eval_n=16)
    args += ["--lr", "5e-3", "--seed", "3", "--seeds", "0,1", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    cmp = report["comparison"]
    assert cmp["seeds"] == [0, 1] and [r["seed"] for r in cmp["runs"]] == [0, 1]
    # Both seeds' arms trained with their own seed, the mashup arms from the one merge, and
    # every arm scored the same 16 items.
    merged = str(out.with_name("report.partial") / "merged")
    for seed in (0, 1):
        for arm in ("scratch", "mashup"):
            saved = json.loads((out / f"seed{seed}" / arm / "train_result.json").read_text())
            assert saved["config"]["seed"] == seed and len(saved["final_correct"]) == 16
            assert saved["config"]["init"] == (merged if arm == "mashup" else None)
    assert not (out / "scratch").exists() and report["seed"] == 3
    for arm in ("scratch", "mashup"):
        mean = sum(r["acc"][arm] for r in cmp["runs"]) / 2
        assert cmp["acc"][arm] == pytest.approx(mean)
    delta = cmp["mashup_minus_scratch"]
    lo, hi = delta["ci95_seeds_and_items"]
    assert lo <= hi and delta["verdict"].startswith("no claim (2 seeds, 16 items;")
    assert set(report["curves"]) == {f"{a} seed {s}" for a in ("scratch", "mashup") for s in (0, 1)}
    text = (out / "report.md").read_text()
    assert "| seed | scratch | mashup |" in text and "over seeds and items" in text
    assert "training seeds 0, 1 (split, selection sample and merge: seed 3)" in text
    assert "Below 3 training seeds (--seeds) and 500 evaluation items (--eval-n)" in text
    # Seeds that are not whole numbers, or one twice: one error line, nothing written.
    for bad, message in (("0,x", "not a list of whole numbers"), ("1,1", "distinct")):
        never = tmp_path / "never"
        again = CliRunner().invoke(app, [*run_args(tiny, built_zoo, never, 16), "--seeds", bad])
        assert again.exit_code == 2 and message in again.output, again.output
        assert not never.exists() and not never.with_name("never.partial").exists()


def test_run_bad_input_writes_nothing(
    tiny: dict[str, Path], built_zoo: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    other = make_tiny_llama(tmp_path / "other", seed=1, vocab_size=80, hidden_size=32)
    cases = [
        (["--target", str(bad)], "bad.jsonl:1"),
        (["--base", str(other)], "no entry fits"),
        # The entries' own base differs from this one: the first differences, not all of them.
        (["--base", str(other)], "base differs from this one (different vocab size: 80 vs 64"),
        (["--k", "3"], "only 2 compatible"),
        (["--base", str(tmp_path / "no-cache")], "no-cache: base model folder does not exist"),
        (["--merge-method", "magic"], "not available"),
        # pydantic's checks, on one line naming the option.
        (
            ["--eval-n", "0"],
            "bad run options: --eval-n: Input should be greater than or equal to 1",
        ),
    ]
    for extra, message in cases:
        out = tmp_path / "never"
        args = ["run", str(out), "--target", str(tiny["train"]), "--zoo", str(built_zoo)]
        args += ["--base", str(tiny["base"]), "--eval-n", "16", "--steps", "2", "--select-n", "8"]
        result = CliRunner().invoke(app, [*args, *extra])
        assert result.exit_code == 2, (extra, result.output)
        assert "error:" in result.output and message in result.output, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "validation error" not in result.output, result.output
        assert not out.exists() and not out.with_name("never.partial").exists()


def test_merge_configs() -> None:
    paths = [Path("a"), Path("b")]
    ab = merge_config_for("ab_mean", paths, "adapter", Path("base"), 8, 0)
    assert ab["lora_mode"] == "ab_mean" and ab["models"][0]["parameters"]["weight"] == 0.5
    ties = merge_config_for("ties", paths, "adapter", Path("base"), 8, 0)
    assert ties["lora_mode"] == "delta" and ties["rank"] == 8
    full = merge_config_for("ties", paths, "model", Path("base"), None, 0)
    assert full["base_model"] == "base" and "lora_mode" not in full


def test_merge_selected_runs_the_merge(tiny: dict[str, Path], tmp_path: Path) -> None:
    from mashup.train.pipeline import merge_selected

    zoo = Zoo.open(tmp_path / "zoo")
    for i in range(2):
        zoo.add(make_tiny_lora(tmp_path / f"l{i}", tiny["base"], seed=i), task=f"t{i}")
    for method in ("ab_mean", "delta", "ties"):
        out, seconds, config = merge_selected(
            ["l0", "l1"], tmp_path / "zoo", tiny["base"], method, tmp_path / method
        )
        assert (out / "adapter_model.safetensors").is_file() and seconds >= 0
    one, seconds, config = merge_selected(
        ["l0"], tmp_path / "zoo", tiny["base"], "ab_mean", tmp_path / "single"
    )
    assert one == (tmp_path / "l0").resolve() and config is None


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=40))
def test_paired_bootstrap_interval_holds_the_mean(pairs: list[tuple[bool, bool]]) -> None:
    a, b = [p[0] for p in pairs], [p[1] for p in pairs]
    diff, lo, hi = paired_bootstrap(a, b, samples=200)
    assert -1 <= lo <= diff <= hi <= 1
    same, lo0, hi0 = paired_bootstrap(a, a, samples=50)
    assert same == lo0 == hi0 == 0


def _result(correct: list[bool], seed: int) -> TrainResult:
    """A finished arm: the curve's last point holds ``correct``'s accuracy."""
    acc = sum(correct) / len(correct)
    curve = [
        CurvePoint(step=step, acc=a, acc_norm=a, nll=0, n=len(correct), train_seconds=step)
        for step, a in ((0, 0.0), (10, acc))
    ]
    return TrainResult(
        out=Path(f"seed{seed}"), kind="adapter", config={"seed": seed}, steps=10,
        train_seconds=10.0, eval_seconds=0.0, wall_seconds=10.0, final_loss=None, curve=curve,
        final_correct=correct,
    )  # fmt: skip


def test_a_gain_one_seed_carries_is_a_tie_over_seeds_and_items() -> None:
    # Three seeds, 600 items: seed 0's mashup arm wins 300 items scratch loses, seeds 1 and 2
    # score as scratch. Averaged per item that is +1/3 on half the items and the item interval
    # excludes zero; drawing the seeds too draws no seed 0 in 8 of 27 samples, which gain
    # nothing, so the interval reaches zero and the verdict is a tie.
    half = [True, False] * 300
    arms = [(0, _result(half, 0), _result([True] * 600, 0))]
    arms += [(seed, _result(half, seed), _result(half, seed)) for seed in (1, 2)]
    cmp = compare_seeds(arms, base_acc=0.4, selection_seconds=1.0, merge_seconds=0.0)
    delta = cmp["mashup_minus_scratch"]
    assert delta["diff"] == pytest.approx(1 / 6) and delta["ci95"][0] > 0.1
    assert delta["ci95_seeds_and_items"][0] == pytest.approx(0.0)
    assert delta["verdict"] == "tie" and not delta["significant"]
    assert cmp["acc"] == pytest.approx({"base": 0.4, "scratch": 0.5, "mashup": 2 / 3})
    # The mashup arms reach scratch's 0.5 at step 10 on seed 0 and on the others.
    assert cmp["share_of_steps"] == 1.0 and cmp["never_reached"] == 0
    # All three seeds gain: better.
    arms = [(seed, _result(half, seed), _result([True] * 600, seed)) for seed in (0, 1, 2)]
    cmp = compare_seeds(arms, base_acc=0.4, selection_seconds=1.0, merge_seconds=0.0)
    assert cmp["mashup_minus_scratch"]["verdict"] == "better"
    with pytest.raises(ValueError, match="same items"):
        compare_seeds(
            [*arms, (3, _result(half[:10], 3), _result(half[:10], 3))],
            base_acc=None, selection_seconds=0.0, merge_seconds=0.0,
        )  # fmt: skip


def test_first_step_reaching() -> None:
    curve = [
        CurvePoint(step=s, acc=a, acc_norm=a, nll=0, n=10, train_seconds=s)
        for s, a in [(0, 0.2), (5, 0.5), (10, 0.4)]
    ]
    assert first_step_reaching(curve, 0.45).step == 5
    assert first_step_reaching(curve, 0.6) is None
