"""Leave-one-out benchmark: seeds, resuming, the reused selection cost and the pooled summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mashup.bench.leave_one_out import (
    LooSettings,
    budget_steps,
    budget_tag,
    load_results,
    run_benchmark,
    select_rows,
    unmatched_filter,
)
from mashup.bench.leave_one_out_report import (
    against_main,
    item_diffs,
    plot,
    plot_title,
    summarise,
)
from mashup.errors import MashupError
from tests.bench.conftest import TASKS
from tests.factories import make_tiny_llama
from tests.train.conftest import write_mc


def test_runs_every_variant_and_seed_then_resumes(settings: LooSettings) -> None:
    results = run_benchmark(settings)
    rows = load_results(results)
    assert set(rows) == {("piqa", v, s) for v in ("main", "k1") for s in (0, 1)}
    for row in rows.values():
        assert len(row["scratch_correct"]) == len(row["mashup_correct"]) == 8
        assert "piqa" not in row["selected"]
        assert row["comparison"]["steps"] == 4
    assert len(rows[("piqa", "k1", 0)]["selected"]) == 1
    # The merged init's accuracy is the mashup arm's curve at step 0.
    for (target, variant, seed), row in rows.items():
        curve = settings.out / f"targets/{target}/seed{seed}/{variant}/mashup/curve.json"
        first = json.loads(curve.read_text())["points"][0]
        assert first["step"] == 0 and row["init_acc"] == first["acc"]
    # The selection sample is fixed, so seed 1 and k1 reuse the cached scores, and the
    # wall-clock comparison reuses the cost measured the first time instead of ~0 s.
    first = rows[("piqa", "main", 0)]
    assert first["selection_seconds_source"] == "measured"
    for key in (("piqa", "main", 1), ("piqa", "k1", 0)):
        assert rows[key]["selection_seconds_source"] == "earlier run"
        assert rows[key]["comparison"]["seconds"]["selection"] == pytest.approx(
            first["comparison"]["seconds"]["selection"]
        )
    # Seeds train different arms.
    seed_dirs = sorted(p.name for p in (settings.out / "targets" / "piqa").glob("seed*"))
    assert seed_dirs == ["seed0", "seed1"]

    before = results.read_text()
    run_benchmark(settings)  # everything is done: nothing is trained or appended
    assert results.read_text() == before

    text = summarise(rows.values())
    assert "| main | 1 × {0, 1} (2 runs)" in text and "| k1 | 1 × {0, 1} (2 runs)" in text
    assert "| piqa | 2 |" in text and "Goals (main" in text


def test_the_embedding_variant_selects_without_the_language_model(
    settings: LooSettings,
) -> None:
    from dataclasses import replace

    from mashup.data.assets import default_cache_dir
    from tests.factories import make_tiny_encoder

    # Where the MiniLM wheel would be unpacked: the benchmark finds it and fetches nothing.
    make_tiny_encoder(default_cache_dir() / "models" / "all-MiniLM-L6-v2")
    variants = ("main", "embedding", "prefilter", "embedding_delta")
    results = run_benchmark(replace(settings, variants=variants, seeds=(0,)))
    rows = load_results(results)
    # Every library entry's data centroid was embedded once, before the first target: the
    # targets' selections embed only their own sample.
    centroids = json.loads((settings.out / "library_centroids.json").read_text())
    key = f"n{settings.select_n}_seed{settings.select_seed}"
    assert centroids[key]["entries"] == ["arc_easy", "csqa", "piqa"]
    assert (
        rows[("piqa", "embedding_delta", 0)]["selected"]
        == rows[("piqa", "embedding", 0)]["selected"]
    )
    merged = settings.out / "targets/piqa/seed0/embedding_delta/merged.json"
    assert json.loads(merged.read_text())["config"]["lora_mode"] == "delta"
    row = rows[("piqa", "embedding", 0)]
    assert row["metric"] == "embedding" and len(row["selected"]) == 2
    assert set(row["selection_scores"]) == {"csqa", "arc_easy"}
    assert all(-1.0 <= v <= 1.0 for v in row["selection_scores"].values())
    assert row["selection_seconds_source"] == "measured"
    report = json.loads(
        (settings.out / "targets/piqa/seed0/embedding/report/report.json").read_text()
    )
    assert report["selection"]["forwards"] == 0
    assert "| embedding | 1 × {0} (1 run)" in summarise(rows.values())
    # The pre-filter variant keeps its own selection cost (embedding + accuracy of the kept).
    assert rows[("piqa", "prefilter", 0)]["prefilter"] == 3
    costs = json.loads((settings.out / "targets/piqa/selection_seconds.json").read_text())
    assert set(costs) == {"acc", "embedding", "acc+prefilter3"}
    # A second run reads the centroids from the catalog and leaves the record alone.
    run_benchmark(replace(settings, variants=("embedding",), seeds=(0,)))
    assert json.loads((settings.out / "library_centroids.json").read_text()) == centroids


def test_the_gradient_variant_selects_on_its_own_sample_with_the_delta_merge(
    settings: LooSettings,
) -> None:
    from dataclasses import replace

    variants = ("main", "gradient_delta", "gradient_delta_sample1")
    rows = load_results(run_benchmark(replace(settings, variants=variants, seeds=(0,))))
    row = rows[("piqa", "gradient_delta", 0)]
    assert row["metric"] == "gradient" and row["n"] == 32 and len(row["selected"]) == 2
    assert set(row["selection_scores"]) == {"csqa", "arc_easy"}
    assert row["selection_seconds_source"] == "measured"
    report = json.loads(
        (settings.out / "targets/piqa/seed0/gradient_delta/report/report.json").read_text()
    )
    # 32 of the target's 40 training items (main reads select_n = 8), in two batches of 16.
    assert report["selection"]["n"] == 32 and report["selection"]["forwards"] == 2
    merged = settings.out / "targets/piqa/seed0/gradient_delta/merged.json"
    assert json.loads(merged.read_text())["config"]["lora_mode"] == "delta"
    costs = json.loads((settings.out / "targets/piqa/selection_seconds.json").read_text())
    assert set(costs) == {"acc", "gradient@32", "gradient@32+sample1"}
    # The sample1 variant draws its 32 items with shuffle seed 1: another sample, other scores.
    other = rows[("piqa", "gradient_delta_sample1", 0)]
    assert other["select_seed"] == 1 and row["select_seed"] == settings.select_seed == 0
    assert other["selection_scores"] != row["selection_scores"]
    report_file = settings.out / "targets/piqa/seed0/gradient_delta_sample1/report/report.json"
    assert "seed=1" in json.loads(report_file.read_text())["selection"]["target"]


def test_load_results_skips_a_torn_line_and_defaults_the_seed(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps({"target": "piqa", "variant": "main"}) + '\n{"target": "cs')
    assert set(load_results(path)) == {("piqa", "main", 0)}


def test_select_rows_filters_and_keeps_main_as_the_reference() -> None:
    rows = [
        {"target": t, "variant": v, "seed": seed}
        for t in ("a", "b")
        for v in ("main", "k3", "ties")
        for seed in (0, 1)
    ]
    rows.append({"target": "a", "variant": "k3"})  # rows from before seeds default to 0

    def keys(selected: list[dict]) -> set[tuple]:
        return {(r["target"], r["variant"], r.get("seed", 0)) for r in selected}

    assert select_rows(rows) == rows
    assert keys(select_rows(rows, variants=["k3"], seeds=[0], targets=["a"])) == {
        ("a", "main", 0),
        ("a", "k3", 0),
    }
    assert len(select_rows(rows, variants=["k3"], seeds=[0], targets=["a"])) == 3
    assert keys(select_rows(rows, seeds=[1])) == {
        (t, v, 1) for t in ("a", "b") for v in ("main", "k3", "ties")
    }
    assert select_rows(rows, targets=["c"]) == []


def test_unmatched_filter_names_the_value_and_the_finished_ones() -> None:
    rows = [{"target": "piqa", "variant": "main", "seed": 0}, {"target": "csqa", "variant": "main"}]
    assert unmatched_filter(rows) is None
    assert unmatched_filter(rows, targets=["piqa"], seeds=[0]) is None
    assert unmatched_filter(rows, targets=["piqa", "hellaswg"]) == (
        "no finished row for target hellaswg; finished: csqa, piqa"
    )
    assert unmatched_filter(rows, seeds=[0, 7]) == "no finished row for seed 7; finished: 0"
    assert unmatched_filter([], seeds=[1]) == "no finished row for seed 1; finished: none"


def test_item_diffs_average_seeds_per_item() -> None:
    rows = [
        {"target": "a", "seed": 0, "mashup_correct": [1, 1, 0], "scratch_correct": [0, 1, 0]},
        {"target": "a", "seed": 1, "mashup_correct": [0, 1, 0], "scratch_correct": [0, 0, 1]},
        {"target": "b", "seed": 0, "mashup_correct": [1], "scratch_correct": [1]},
    ]
    assert item_diffs(rows) == {"a": [0.5, 0.5, -0.5], "b": [0.0]}
    rows[1]["mashup_correct"] = [0, 1]
    with pytest.raises(ValueError, match="unpaired"):
        item_diffs(rows)
    # A run counted twice would weigh twice in every interval.
    with pytest.raises(ValueError, match="b seed 0: two rows for one run"):
        item_diffs([rows[0], rows[2], rows[2]])


def arm_row(variant: str, target: str, seed: int, mashup: list[int]) -> dict:
    """A row with only what the paired comparisons read; scratch gets all of 4 items wrong."""
    return {
        "target": target,
        "variant": variant,
        "seed": seed,
        "mashup_correct": mashup,
        "scratch_correct": [0, 0, 0, 0],
    }


def test_ablations_are_paired_with_main_on_shared_runs_only() -> None:
    rows = [
        arm_row("main", "a", 0, [1, 1, 0, 0]),
        arm_row("main", "b", 0, [1, 0, 0, 0]),
        arm_row("ties", "a", 0, [1, 1, 1, 1]),  # +2 of 4 items over main
        arm_row("ties", "c", 0, [1, 1, 1, 1]),  # no main run for c: left out
        arm_row("k1", "b", 1, [1, 1, 1, 1]),  # main has no seed 1 for b: left out
    ]
    (ties,) = against_main(rows)
    assert ties["variant"] == "ties" and ties["targets"] == ["a"] and ties["seeds"] == [0]
    assert (ties["main"], ties["ablation"], ties["diff"]) == (50.0, 100.0, 50.0)


def test_mashup_arms_are_paired_with_another_folders_on_shared_runs_only() -> None:
    from mashup.bench.leave_one_out_report import against_folder

    here = [
        arm_row("main", "a", 0, [1, 1, 1, 0]),
        arm_row("main", "b", 0, [1, 1, 0, 0]),  # the other folder has no b: left out
        arm_row("k1", "a", 0, [0, 0, 0, 0]),
    ]
    there = (r for r in [arm_row("main", "a", 0, [1, 0, 0, 0]), arm_row("main", "a", 1, [1] * 4)])
    (main,) = against_folder(here, there)  # k1 has no partner there; a generator is read once
    assert main["variant"] == "main" and main["targets"] == ["a"] and main["seeds"] == [0]
    assert (main["main"], main["ablation"], main["diff"]) == (25.0, 75.0, 50.0)
    here_rows = [summary_row("a", 0, [1] * 100, 0)]
    text = summarise(here_rows, against=("/runs/z100", [summary_row("a", 0, [1, 0] * 50, 50)]))
    assert "Mashup arms against /runs/z100's on the same targets and seeds:" in text
    assert "| main | a ({0}) | 50.0 | 100.0 | +50.0 [" in text


def summary_row(
    target: str, seed: int, mashup: list[int], reach: int | None, variant: str = "main"
) -> dict:
    """A finished row as run_one writes it; scratch gets every other of 100 items right."""
    return {
        "target": target,
        "variant": variant,
        "seed": seed,
        "selected": ["x", "y"],
        "mashup_correct": mashup,
        "scratch_correct": [1, 0] * 50,
        "comparison": {
            "acc": {"base": 0.25, "scratch": 0.5, "mashup": sum(mashup) / 100},
            "steps": 100,
            "mashup_step_reaching_scratch_final": reach,
            "share_of_steps": None if reach is None else reach / 100,
            "seconds": {
                "selection": 10.0,
                "merge": 0.0,
                "mashup_training_full": 100.0,
                "scratch_training_full": 100.0,
                "share_of_scratch_wall_clock": None if reach is None else 0.5,
            },
        },
    }


def test_a_verdict_needs_three_seeds_and_five_hundred_items() -> None:
    better, same = [1] * 100, [1, 0] * 50
    # Five targets of 100 items, three seeds each: ablation k1 beats main everywhere.
    main = [summary_row(t, s, same, 40) for t in "abcde" for s in (0, 1, 2)]
    k1 = [summary_row(t, s, better, 20, "k1") for t in "abcde" for s in (0, 1, 2)]
    (full,) = against_main(main + k1)
    assert full["items"] == 500
    line = next(
        x for x in summarise(main + k1).splitlines() if x.startswith("| k1 | a, b, c, d, e")
    )
    assert line.endswith("| better |")
    # The same difference on four targets (400 items) is reported but not called.
    short = [r for r in main + k1 if r["target"] != "e"]
    line = next(x for x in summarise(short).splitlines() if x.startswith("| k1 | a, b, c, d"))
    assert line.endswith("| no claim (3 seeds, 400 items; interval says better) |")


def test_a_gain_that_one_seed_carries_is_a_tie() -> None:
    # Five targets × three seeds, 100 items each: seed 0 wins 40 more items, seeds 1 and 2
    # score as scratch. Over items the +13 points is "better"; seeds and items say tie.
    seed0 = [1] * 80 + [1, 0] * 10
    same = [1, 0] * 50
    rows = [summary_row(t, 0, seed0, 20) for t in "abcde"]
    rows += [summary_row(t, s, same, 40) for t in "abcde" for s in (1, 2)]
    main = next(x for x in summarise(rows).splitlines() if x.startswith("| main"))
    assert "| +13.3 [+11.9, +14.8] | [+0.0, +" in main and main.split(" | ")[6] == "tie"


def test_summary_calls_ties_and_counts_never_reached(tmp_path: Path) -> None:
    better = [1] * 100  # right on every item scratch misses
    text = summarise([summary_row("a", 0, better, 20), summary_row("a", 1, [1, 0] * 50, None)])
    main = next(line for line in text.splitlines() if line.startswith("| main"))
    # Items averaged over seeds: +0.5 on half the items, 0 on the rest: +25 points, and the
    # item interval excludes 0. But seed 1 gains nothing: resampling the seeds too draws it
    # twice in a quarter of the samples, so that interval reaches 0 and says tie (2 seeds and
    # 100 items are below the bar for a claim anyway).
    assert "+25.0 [+20.0, +30.0] | [+0.0, +" in main
    assert "| no claim (2 seeds, 100 items; interval says tie) |" in main
    # Never reaching counts as all steps and as the whole run plus overhead.
    assert "| 60% | 80% | 10 | 1 |" in main  # selection 10 s = 10 steps of 1 s
    assert "20, never of 100 | 80% | 25% |" in text
    # Seed 0 gets the 50 items scratch misses, seed 1 scores as scratch: a 25 % bound on the gain.
    assert "The two arms score 25.0% of the items differently" in text
    # Seeds are averaged within a target first: every target weighs the same.
    rows = [
        summary_row("a", 0, better, 20),
        summary_row("a", 1, [1, 0] * 50, 40),
        summary_row("b", 0, [1, 0] * 50, 40),
    ]
    main = next(line for line in summarise(rows).splitlines() if line.startswith("| main"))
    assert "| 50.0 | 62.5 | +12.5" in main
    assert "Ablations against main" not in summarise(rows)
    ties = {
        **summary_row("a", 0, [1, 0] * 50, 40),
        "variant": "ties",
    }  # main's seed 0 got every item
    ablation = next(
        line for line in summarise([*rows, ties]).splitlines() if line.startswith("| ties | a")
    )
    assert "| 100.0 | 50.0 | -50.0" in ablation
    assert "| no claim (1 seed, 100 items; interval says worse) |" in ablation
    plot(rows, tmp_path / "loo.png")
    assert (tmp_path / "loo.png").stat().st_size > 0
    assert ", 100 steps per arm\n(" in plot_title(rows)
    longer = {**rows[0], "comparison": {**rows[0]["comparison"], "steps": 200}}
    assert ", arm steps by target\n(" in plot_title([*rows, longer])
    assert plot_title(rows).startswith("Leave-one-out, SmolLM2-135M + LoRA")
    gemma = [{**r, "base": "gemma-3-270m", "precision": "bf16"} for r in rows]
    assert plot_title(gemma).startswith("Leave-one-out, gemma-3-270m + LoRA, bf16, 100")


def test_the_halving_variant_measures_its_own_selection_cost(
    settings: LooSettings, tmp_path: Path
) -> None:
    from dataclasses import replace

    from mashup.data.assets import benchmark_path

    # Five tasks: four candidates for piqa, so halving has something to cut (4 → 2 on 4 items).
    extra = ("hellaswag", "openbookqa")
    for seed, task in enumerate(extra, start=7):
        for split in ("train", "val"):
            path = benchmark_path(task, split)
            write_mc(path, 40, seed=10 * seed + (split == "val"), gold_first=seed % 2 == 0)
    results = run_benchmark(
        replace(settings, tasks=(*TASKS, *extra), variants=("main", "halving"), seeds=(0,))
    )
    rows = load_results(results)
    main, race = rows[("piqa", "main", 0)], rows[("piqa", "halving", 0)]
    assert len(race["selected"]) == 2 and set(race["selected"]) <= set(main["selection_scores"])
    assert race["selection_seconds_source"] == "measured"  # not main's cached scores
    report = json.loads(
        (settings.out / "targets/piqa/seed0/halving/report/report.json").read_text()
    )
    ranking = report["selection"]["ranking"]
    assert report["selection"]["halving"] is True
    assert sorted(c["items"] for c in ranking) == [4, 4, 4, 4]  # one round on half the sample
    # The second pick against the best one cut, on the 4 items both read.
    margin = race["selection_margin"]
    assert margin["selected"] == race["selected"][1] and margin["items"] == 4
    assert margin["runner_up"] not in race["selected"]
    assert (
        "Selection margin of"
        in (settings.out / "targets/piqa/seed0/halving/report/report.md").read_text()
    )
    line = f"| halving | piqa | {margin['selected']} | {margin['runner_up']} | "
    assert line in summarise(rows.values())
    costs = json.loads((settings.out / "targets/piqa/selection_seconds.json").read_text())
    assert set(costs) == {"acc", "acc+halving"}
    assert "| halving | 1 × {0} (1 run)" in summarise(rows.values())


def test_wall_clock_share_prices_another_selection_cost() -> None:
    from mashup.bench.leave_one_out_report import wall_clock_share

    seconds = {
        "selection": 50.0,
        "merge": 2.0,
        "mashup_training_to_reach": 40.0,
        "mashup_training_full": 200.0,
        "scratch_training_full": 200.0,
    }
    reached = {"steps": 100, "mashup_step_reaching_scratch_final": 20, "seconds": seconds}
    assert wall_clock_share(reached) == pytest.approx((50 + 2 + 40) / 200)
    # 10 scratch steps of selection at this run's 2 s per step.
    assert wall_clock_share(reached, 10.0) == pytest.approx((20 + 2 + 40) / 200)
    never = {**reached, "mashup_step_reaching_scratch_final": None}
    assert wall_clock_share(never, 0.0) == pytest.approx((2 + 200) / 200)


def test_a_recorded_scratch_arm_is_reused_instead_of_retrained(
    settings: LooSettings,
) -> None:
    import shutil
    from dataclasses import replace

    results = run_benchmark(replace(settings, variants=("main",), seeds=(0,)))
    main = load_results(results)[("piqa", "main", 0)]
    assert main["scratch_arm"] == "trained"
    # A fresh machine: the checkpoints are gone, the results file is not.
    shutil.rmtree(settings.out / "targets" / "piqa" / "seed0" / "scratch")
    run_benchmark(replace(settings, variants=("k1",), seeds=(0,), reuse_scratch=True))
    k1 = load_results(results)[("piqa", "k1", 0)]
    assert not (settings.out / "targets" / "piqa" / "seed0" / "scratch").exists()
    assert k1["scratch_arm"] == "recorded"
    assert k1["scratch_recorded_at"] == main["finished_at"]
    assert k1["scratch_correct"] == main["scratch_correct"]
    c = k1["comparison"]
    assert c["acc"]["scratch"] == pytest.approx(sum(main["scratch_correct"]) / 8)
    # Scratch's time is taken to be the mashup arm's: the same steps on this machine.
    assert c["seconds"]["scratch_training_full"] == c["seconds"]["mashup_training_full"]
    assert "| k1 | 1 × {0} (1 run)" in summarise(load_results(results).values())

    # Other training settings make another arm: it is trained, not taken from the row.
    other = replace(settings, variants=("k1",), seeds=(0,), lr=1e-3, reuse_scratch=True)
    other = replace(other, out=settings.out.with_name("loo-other"))
    other.out.mkdir()
    (other.out / "results.jsonl").write_text(json.dumps(main) + "\n")
    rows = load_results(run_benchmark(other))
    assert rows[("piqa", "k1", 0)]["scratch_arm"] == "trained"


def test_scratch_arms_come_from_another_folder_whose_library_differs(
    settings: LooSettings,
) -> None:
    from dataclasses import replace

    first = replace(settings, variants=("main",), seeds=(0,))
    with pytest.raises(MashupError, match="has no results.jsonl"):  # a typo, before any training
        run_benchmark(replace(first, out=settings.out.with_name("x"), scratch_from=first.out))
    main = load_results(run_benchmark(first))[("piqa", "main", 0)]
    # A stronger library in a folder of its own, paired with the first folder's scratch arms.
    probe = replace(first, out=settings.out.with_name("loo-zoo5"), zoo_steps=5)
    probe = replace(probe, scratch_from=first.out, seeds=(0, 1))
    rows = load_results(run_benchmark(probe))
    assert (probe.out / "zoo" / "runs" / "csqa").is_dir()  # its own library was trained
    row = rows[("piqa", "main", 0)]
    assert row["zoo_steps"] == 5
    assert row["scratch_arm"] == "recorded"
    assert row["scratch_recorded_in"] == str(first.out)
    assert row["scratch_correct"] == main["scratch_correct"]
    assert not (probe.out / "targets" / "piqa" / "seed0" / "scratch").exists()
    # Seed 1 has no row there: its scratch arm is trained here.
    assert rows[("piqa", "main", 1)]["scratch_arm"] == "trained"
    assert (probe.out / "targets" / "piqa" / "seed1" / "scratch").is_dir()


def test_the_recorded_scratch_row_prefers_main_then_the_earliest() -> None:
    from mashup.bench.leave_one_out import recorded_scratch_row

    s = LooSettings(out=Path(), base=Path(), eval_n=2)

    def row(variant: str, at: str, **changes: object) -> dict:
        r = {
            "target": "piqa",
            "variant": variant,
            "seed": 1,
            "steps": s.steps,
            "batch_size": s.batch_size,
            "lr": s.lr,
            "finished_at": at,
            "comparison": {"eval_n": 2},
            "scratch_correct": [1, 0],
        }
        return {**r, **changes}

    rows = [row("ties", "2026-01-02"), row("k1", "2026-01-01"), row("main", "2026-01-03")]
    assert recorded_scratch_row(rows, s, "piqa", 1)["variant"] == "main"
    assert recorded_scratch_row(rows[:2], s, "piqa", 1)["variant"] == "k1"
    assert recorded_scratch_row(rows, s, "piqa", 0) is None  # another seed
    assert recorded_scratch_row(rows, s, "csqa", 1) is None
    assert recorded_scratch_row([row("main", "x", steps=50)], s, "piqa", 1) is None
    assert recorded_scratch_row([row("main", "x", scratch_arm="recorded")], s, "piqa", 1) is None
    # An arm trained in one format is no stand-in for the other (rows without one are mc).
    letter = LooSettings(out=Path(), base=Path(), eval_n=2, format="letter")
    assert recorded_scratch_row(rows, letter, "piqa", 1) is None
    assert recorded_scratch_row([row("k1", "x", format="letter")], letter, "piqa", 1) is not None
    assert recorded_scratch_row([row("k1", "x", format="letter")], s, "piqa", 1) is None
    # Nor is an arm trained on another base (rows without one are the default SmolLM2's).
    gemma = LooSettings(out=Path(), base=Path("/models/gemma-3-270m"), eval_n=2)
    assert recorded_scratch_row(rows, gemma, "piqa", 1) is None
    assert recorded_scratch_row([row("k1", "x", base="gemma-3-270m")], gemma, "piqa", 1)
    assert recorded_scratch_row([row("k1", "x", base="gemma-3-270m")], s, "piqa", 1) is None


def test_a_verdict_needs_three_seeds_on_every_target() -> None:
    better, same = [1] * 100, [1, 0] * 50
    main = [summary_row(t, s, same, 40) for t in "abcde" for s in (0, 1, 2)]
    # Seeds 1 and 2 finished on two of the five targets only.
    ties = [summary_row(t, 0, better, 20, "ties") for t in "abcde"]
    ties += [summary_row(t, s, better, 20, "ties") for t in "ab" for s in (1, 2)]
    text = summarise(main + ties)
    line = next(x for x in text.splitlines() if x.startswith("| ties | 5 × {0, 1, 2} (9 runs)"))
    assert "| no claim (1–3 seeds per target, 500 items; interval says better) |" in line
    line = next(x for x in text.splitlines() if x.startswith("| ties | a, b, c, d, e"))
    assert line.endswith("| no claim (1–3 seeds per target, 500 items; interval says better) |")
    # Once every target has three, the same interval is a verdict.
    ties += [summary_row(t, s, better, 20, "ties") for t in "cde" for s in (1, 2)]
    line = next(x for x in summarise(main + ties).splitlines() if x.startswith("| ties | 5 ×"))
    assert "| better |" in line


def test_an_epoch_budget_sets_each_tasks_steps_from_its_train_split(
    settings: LooSettings,
) -> None:
    from dataclasses import replace

    from mashup.data.assets import ensure_benchmark

    # 40 train items per task at batch 4: half an epoch is 5 steps, a quarter 3 (rounded up).
    s = replace(settings, variants=("main",), seeds=(0,), epochs=0.5, zoo_epochs=0.25)
    train = ensure_benchmark("piqa", "train")
    assert budget_steps(s, train) == 5 and budget_steps(s, train, zoo=True) == 3
    assert budget_steps(settings, train) == settings.steps  # a step budget is taken as is
    row = load_results(run_benchmark(s))[("piqa", "main", 0)]
    assert row["steps"] == row["comparison"]["steps"] == 5
    assert row["epochs"] == 0.5 and row["zoo_epochs"] == 0.25 and "zoo_steps" not in row
    assert json.loads((s.out / "settings.json").read_text())["arms"] == {"epochs": 0.5}


def test_a_folder_refuses_a_second_budget_and_keeps_its_rows(settings: LooSettings) -> None:
    from dataclasses import replace

    results = run_benchmark(replace(settings, variants=("main",), seeds=(0,)))
    # Same budget, other targets, variants or seeds: the folder takes them.
    run_benchmark(replace(settings, variants=("main",), seeds=(0,), targets=("csqa",)))
    assert set(load_results(results)) == {("piqa", "main", 0), ("csqa", "main", 0)}
    before = results.read_text()
    # Another learning rate would otherwise find (piqa, main, 0) done and skip it.
    with pytest.raises(MashupError, match=r"holds runs of another budget \(lr 0.005 here"):
        run_benchmark(replace(settings, variants=("main",), seeds=(0,), lr=1e-3))
    with pytest.raises(MashupError, match=r"arms \{'steps': 4\} here, \{'epochs': 1.0\}"):
        run_benchmark(replace(settings, variants=("main",), seeds=(0,), epochs=1.0))
    # A folder recorded before precision was a choice holds "auto" runs: bf16 is refused.
    with pytest.raises(MashupError, match=r"precision None here, 'bf16' asked"):
        run_benchmark(replace(settings, variants=("main",), seeds=(0,), precision="bf16"))
    # Another base model would otherwise find the first base's rows and library done.
    other = settings.base.with_name("gemma-3-270m")
    other.mkdir()  # a model folder: refused for its budget, not for being missing or empty
    (other / "config.json").write_bytes((settings.base / "config.json").read_bytes())
    with pytest.raises(MashupError, match=r"base 'base' here, 'gemma-3-270m' asked"):
        run_benchmark(replace(settings, variants=("main",), seeds=(0,), base=other))
    assert results.read_text() == before


def test_budget_tag_names_what_differs_from_the_default(tmp_path: Path) -> None:
    from dataclasses import replace

    s = LooSettings(out=tmp_path, base=Path())
    assert budget_tag(s) == ""
    assert budget_tag(replace(s, base=tmp_path / "SmolLM2-135M-Instruct")) == ""  # the default
    assert budget_tag(replace(s, base=tmp_path / "gemma-3-270m", steps=200)) == "_s200_gemma-3-270m"
    assert budget_tag(replace(s, format="letter")) == ""  # the format has its own suffix
    assert budget_tag(replace(s, epochs=1, zoo_epochs=1, batch_size=32)) == "_e1_zoo-e1_b32"
    assert budget_tag(replace(s, steps=200, lr=1e-4)) == "_s200_lr0.0001"
    assert budget_tag(replace(s, precision="bf16")) == "_bf16"
    assert budget_tag(replace(s, steps=200, precision="fp32")) == "_s200_fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        replace(s, precision="fp16")
    with pytest.raises(ValueError, match="epochs must be positive"):
        replace(s, epochs=0)


def test_a_run_folder_can_share_another_folders_library(settings: LooSettings) -> None:
    from dataclasses import replace

    first = replace(settings, variants=("main",), seeds=(0,))
    run_benchmark(first)
    entries = sorted(p.name for p in (first.out / "zoo" / "runs").iterdir())
    # Longer arms on the same library: nothing is trained into the library or the new folder's.
    longer = replace(first, out=settings.out.with_name("loo_s6"), steps=6, library=first.out)
    row = load_results(run_benchmark(longer))[("piqa", "main", 0)]
    assert row["comparison"]["steps"] == 6 and row["library"] == str(first.out)
    assert not (longer.out / "zoo").exists()
    assert sorted(p.name for p in (first.out / "zoo" / "runs").iterdir()) == entries
    # A library of another budget, a folder without one, or a library lacking a task: refused.
    with pytest.raises(MashupError, match=r"another budget \(lr 0.005 there, 0.001 here\)"):
        run_benchmark(replace(longer, out=settings.out.with_name("loo_lr"), lr=1e-3))
    fresh = settings.out.with_name("loo_fresh")
    nowhere = settings.base.with_name("nowhere")
    with pytest.raises(MashupError, match="nowhere: base model folder does not exist"):
        run_benchmark(replace(longer, out=fresh, base=nowhere))
    assert not fresh.exists()  # a missing base records no budget in the new folder
    nowhere.mkdir()  # a folder, but no model in it
    with pytest.raises(MashupError, match="nowhere: not a Hugging Face model folder"):
        run_benchmark(replace(longer, out=fresh, base=nowhere))
    assert not fresh.exists()
    with pytest.raises(MashupError, match="is not a leave-one-out run folder with a library"):
        run_benchmark(replace(longer, out=fresh, library=settings.out.with_name("nowhere")))
    assert not fresh.exists()  # refused before the new folder records a budget
    with pytest.raises(MashupError, match="has no entry for mmlu"):
        run_benchmark(replace(longer, tasks=(*TASKS, "mmlu")))
    (first.out / "settings.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(MashupError, match="settings.json is not a readable budget record"):
        run_benchmark(replace(longer, out=fresh))
    assert not fresh.exists()


def test_processes_can_each_train_part_of_one_library(settings: LooSettings) -> None:
    """``prepare_library`` with the tasks split (as parallel processes run it) builds one zoo,
    and a run over every task then trains no library entry again."""
    from dataclasses import replace

    from mashup.bench.leave_one_out import prepare_library
    from mashup.zoo import Zoo

    for part in (TASKS[:1], TASKS[1:]):
        zoo_dir = prepare_library(replace(settings, tasks=part, targets=None))
    assert sorted(e.name for e in Zoo.open(zoo_dir).list()) == sorted(TASKS)
    assert not (settings.out / "results.jsonl").exists()
    trained = {p.name: p.stat().st_mtime_ns for p in (zoo_dir / "runs").iterdir()}
    run_benchmark(replace(settings, variants=("main",), seeds=(0,)))
    assert {p.name: p.stat().st_mtime_ns for p in (zoo_dir / "runs").iterdir()} == trained
    # A second budget in the same folder is refused before anything is trained.
    with pytest.raises(MashupError, match="holds runs of another budget"):
        prepare_library(replace(settings, zoo_steps=5))


def test_parallel_runs_start_big_targets_first_and_first_seeds_first(
    settings: LooSettings,
) -> None:
    from dataclasses import replace

    from mashup.bench.leave_one_out import parallel_jobs
    from mashup.data.assets import benchmark_path

    for n, task in zip((40, 120, 80), TASKS, strict=True):  # piqa, csqa, arc_easy
        write_mc(benchmark_path(task, "train"), n, seed=3)
    s = replace(settings, targets=None, seeds=(0, 1), epochs=1, zoo_epochs=1)
    library, runs = parallel_jobs(s)
    assert library == ["csqa", "arc_easy", "piqa"]
    # Seed 0 largest first (they end last); later seeds smallest first.
    assert runs == [
        ("csqa", 0), ("arc_easy", 0), ("piqa", 0), ("piqa", 1), ("arc_easy", 1), ("csqa", 1),
    ]  # fmt: skip
    # A shared library has nothing to train here.
    assert parallel_jobs(replace(s, library=s.out))[0] == []


def test_the_script_runs_as_parallel_processes(settings: LooSettings) -> None:
    import subprocess
    import sys

    script = Path(__file__).parents[2] / "benchmarks" / "mashup_leave_one_out.py"
    s = settings
    flags = {
        "--out": s.out, "--base": s.base, "--tasks": ",".join(s.tasks), "--targets": "piqa",
        "--seeds": "0,1", "--zoo-steps": s.zoo_steps, "--steps": s.steps,
        "--batch-size": s.batch_size, "--lr": s.lr, "--eval-n": s.eval_n,
        "--eval-every": s.eval_every, "--select-n": s.select_n,
    }  # fmt: skip
    argv = [str(v) for pair in flags.items() for v in pair]
    done = subprocess.run(
        [sys.executable, str(script), *argv, "--jobs", "2"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert set(load_results(s.out / "results.jsonl")) == {("piqa", "main", 0), ("piqa", "main", 1)}
    events = (s.out / "logs" / "parallel.log").read_text().splitlines()
    order = [" ".join(line.split()[1:]) for line in events]
    assert sum(o.startswith("start library_") for o in order) == 3
    last_library_end = max(i for i, o in enumerate(order) if o.startswith("end library_"))
    assert order.index("start piqa_seed0") > last_library_end
    assert order.index("start piqa_seed1") > order.index("end piqa_seed0 (exit 0)")
    # The parent summarises once; its processes only append rows.
    assert "Command:" in done.stdout
    for log in ("piqa_seed0.log", "piqa_seed1.log"):
        assert "Command:" not in (s.out / "logs" / log).read_text()


def test_a_failed_process_is_named_with_its_log(settings: LooSettings) -> None:
    import sys

    from mashup.bench.leave_one_out import run_parallel

    failing = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with pytest.raises(MashupError, match=r"library training failed: .*library_\w+\.log"):
        run_parallel(settings, 2, failing)


def test_a_bf16_run_trains_library_and_arms_in_bf16(settings: LooSettings) -> None:
    import json
    from dataclasses import replace

    s = replace(settings, variants=("main",), seeds=(0,), precision="bf16")
    row = load_results(run_benchmark(s))[("piqa", "main", 0)]
    assert row["precision"] == "bf16"
    configs = [json.loads(p.read_text())["config"] for p in s.out.rglob("train_result.json")]
    assert len(configs) == len(TASKS) + 2  # the library, then scratch and mashup
    assert all(c["precision"] == "bf16" for c in configs)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--against", "/nowhere"], "--against only goes with --report"),
        (["--rows-only", "--report"], "--rows-only runs rows and summarises none"),
        (["--report", "--save", "all"], "--save only goes with a filtered --report"),
        (["--report", "--seeds", "0", "--save", "../up"], "give a plain name"),
    ],
)
def test_the_script_refuses_flags_that_do_not_go_together(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    import subprocess
    import sys

    script = Path(__file__).parents[2] / "benchmarks" / "mashup_leave_one_out.py"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path / "run"), *flags],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_a_folder_refuses_another_model_of_the_same_folder_name(settings: LooSettings) -> None:
    from dataclasses import replace

    first = replace(settings, variants=("main",), seeds=(0,))
    results = run_benchmark(first)
    record = first.out / "settings.json"
    held = json.loads(record.read_text())["base_weights"]
    assert held.startswith("sha256:")
    # Another model in a folder of the same name: the budget alone (base 'base') matches.
    other = make_tiny_llama(settings.base.parent / "elsewhere" / "base", seed=1)
    before = results.read_text()
    with pytest.raises(MashupError, match=r"--out .* holds runs on another model than .*base"):
        run_benchmark(replace(first, base=other))
    probe = replace(first, out=settings.out.with_name("probe"), base=other)
    with pytest.raises(MashupError, match="--library .* holds runs on another model"):
        run_benchmark(replace(probe, library=first.out))
    with pytest.raises(MashupError, match="--scratch-from .* holds runs on another model"):
        run_benchmark(replace(probe, scratch_from=first.out))
    assert results.read_text() == before
    assert not probe.out.exists()  # refused before the new folder records a budget
    # A folder from before the weights were recorded takes its base's on the next run, and
    # refuses the other model from then on.
    budget = {k: v for k, v in json.loads(record.read_text()).items() if k != "base_weights"}
    record.write_text(json.dumps(budget), encoding="utf-8")
    run_benchmark(first)  # every row is done: nothing is trained
    assert json.loads(record.read_text())["base_weights"] == held
    assert results.read_text() == before
    with pytest.raises(MashupError, match="holds runs on another model"):
        run_benchmark(replace(first, base=other))


def test_weights_digest_reads_the_bytes_not_the_file_times(tmp_path: Path) -> None:
    import os

    from mashup.zoo.fingerprint import weights_digest

    one = make_tiny_llama(tmp_path / "one", seed=0)
    same = make_tiny_llama(tmp_path / "same", seed=0)
    other = make_tiny_llama(tmp_path / "other", seed=1)
    assert weights_digest(one) == weights_digest(same)  # written twice, same bytes
    assert weights_digest(one) != weights_digest(other)
    weights = next(one.glob("*.safetensors"))
    os.utime(weights, (0, 0))
    assert weights_digest(one) == weights_digest(same)
    weights.unlink()
    with pytest.raises(MashupError, match="no weight files"):
        weights_digest(one)


def test_the_script_refuses_to_pair_folders_of_two_base_models(tmp_path: Path) -> None:
    import subprocess
    import sys

    for name, weights in (("run", "sha256:aa"), ("other", "sha256:bb")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "settings.json").write_text(json.dumps({"base_weights": weights}))
        (tmp_path / name / "results.jsonl").write_text("")
    script = Path(__file__).parents[2] / "benchmarks" / "mashup_leave_one_out.py"
    flags = ["--out", str(tmp_path / "run"), "--report", "--against", str(tmp_path / "other")]
    done = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True)
    assert done.returncode == 2
    assert "holds runs on another base model" in done.stderr
    (tmp_path / "other" / "settings.json").write_text("{not json")
    done = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True)
    assert done.returncode == 2
    assert "error: " in done.stderr and "is not a readable budget record" in done.stderr
    assert "Traceback" not in done.stderr


def test_rows_without_the_init_accuracy_take_it_from_their_curve_file(tmp_path: Path) -> None:
    from mashup.bench.leave_one_out import with_curve_records

    arm = tmp_path / "targets/piqa/seed1/main/mashup"
    arm.mkdir(parents=True)
    points = [{"step": 0, "acc": 0.5}, {"step": 2, "acc": 0.75}]
    (arm / "curve.json").write_text(json.dumps({"points": points}))
    old = summary_row("piqa", 1, [1] * 100, reach=0)
    lost = summary_row("csqa", 1, [1] * 100, reach=0)  # its arm folder is gone
    piqa, csqa = with_curve_records([old, lost], tmp_path)
    assert piqa["init_acc"] == 0.5 and "init_acc" not in csqa
    text = summarise([piqa, csqa])
    assert "| piqa | 1 |" in text and "| 50.0 | 0 of" in text
    assert "| – | 0 of" in text  # csqa: not recorded
    assert "the merged init scores 50.0" in text and "1 target whose rows record it" in text
    assert "other variants' merged inits" not in text
    # Another variant's init is given beside main's where each of its rows records one.
    k1 = {**piqa, "variant": "k1", "init_acc": 0.25}
    with_k1 = summarise([piqa, csqa, k1])
    assert "The other variants' merged inits: k1 25.0." in with_k1
    # Each variant has its own per-target table, k1's giving its init.
    assert "Per target (main):" in with_k1
    assert "Per target (k1):" in with_k1.split("Per target (main):")[1]
    assert "| 25.0 | 0 of" in with_k1.split("Per target (k1):")[1]
    unrecorded = {k: v for k, v in k1.items() if k != "init_acc"}
    assert "other variants'" not in summarise([piqa, csqa, unrecorded])
    # A curve that does not start at step 0 (no evaluation before training) records nothing.
    (arm / "curve.json").write_text(json.dumps({"points": points[1:]}))
    assert "init_acc" not in with_curve_records([old], tmp_path)[0]


def test_the_summary_command_names_a_recorded_evaluation_interval(tmp_path: Path) -> None:
    from mashup.bench.leave_one_out import eval_every_flags, with_curve_records

    arm = tmp_path / "targets/piqa/seed0/main/mashup"
    arm.mkdir(parents=True)
    steps = [{"step": step, "acc": 0.5} for step in (0, 10, 20)]
    (arm / "curve.json").write_text(json.dumps({"points": steps}))
    old = summary_row("piqa", 0, [1] * 100, reach=0)  # written before rows recorded it
    (row,) = with_curve_records([old], tmp_path)
    assert row["eval_every"] == 10
    assert eval_every_flags([row]) == ["--eval-every", "10"]
    assert eval_every_flags([{**row, "eval_every": 20}]) == []  # the default needs no flag
    assert eval_every_flags([row, {**row, "eval_every": 5}]) == []  # no one interval
    # Two points (step 0 and the last) cannot tell the interval from the run's length.
    (arm / "curve.json").write_text(json.dumps({"points": steps[::2]}))
    assert "eval_every" not in with_curve_records([old], tmp_path)[0]


def test_parallel_processes_share_the_cores_unless_the_caller_set_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from mashup.bench.leave_one_out import process_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert process_threads(2, {}) == {"OMP_NUM_THREADS": "4"}
    assert process_threads(3, {}) == {"OMP_NUM_THREADS": "2"}
    assert process_threads(16, {}) == {"OMP_NUM_THREADS": "1"}
    assert process_threads(2, {"OMP_NUM_THREADS": "3"}) == {}


def test_each_parallel_process_runs_with_its_share_of_threads(
    settings: LooSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from mashup.bench.leave_one_out import process_threads, run_parallel

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    expected = process_threads(2, {})["OMP_NUM_THREADS"]
    # Each library process fails unless it sees the share; the failure names its log.
    check = [
        sys.executable,
        "-c",
        f"import os, sys; sys.exit(os.environ.get('OMP_NUM_THREADS') != {expected!r})",
    ]
    run_parallel(settings, 2, check, library_only=True)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with pytest.raises(MashupError, match="library training failed"):
        run_parallel(settings, 2, check, library_only=True)


def test_a_parallel_run_embeds_the_library_once_before_its_processes(
    settings: LooSettings,
) -> None:
    import sys
    from dataclasses import replace

    from mashup.bench.leave_one_out import prepare_library, run_parallel
    from mashup.data.assets import default_cache_dir
    from tests.factories import make_tiny_encoder

    make_tiny_encoder(default_cache_dir() / "models" / "all-MiniLM-L6-v2")
    s = replace(settings, seeds=(0,), variants=("embedding_delta",))
    prepare_library(s)
    echo = [sys.executable, "-c", "import sys; print(' '.join(sys.argv[1:]))"]
    run_parallel(s, 2, echo)
    record = json.loads((s.out / "library_centroids.json").read_text())
    assert record[f"n{s.select_n}_seed{s.select_seed}"]["entries"] == sorted(TASKS)


def test_another_variants_runs_keep_main_logs(settings: LooSettings) -> None:
    import sys
    from dataclasses import replace

    from mashup.bench.leave_one_out import run_parallel

    # The command stands in for the benchmark: each process writes nothing but its log.
    echo = [sys.executable, "-c", "import sys; print(' '.join(sys.argv[1:]))"]
    s = replace(settings, seeds=(0,), variants=("main",))
    run_parallel(s, 2, echo)
    run_parallel(replace(s, variants=("random", "k3")), 2, echo)
    logs = s.out / "logs"
    assert (logs / "piqa_seed0.log").is_file()
    assert (logs / "piqa_seed0_random-k3.log").is_file()


def test_random_selection_variants_merge_the_random_pair_their_own_way(
    settings: LooSettings,
) -> None:
    from dataclasses import replace

    variants = ("random", "random_delta", "random_ties")
    rows = load_results(run_benchmark(replace(settings, variants=variants, seeds=(1,))))
    picked = {v: rows[("piqa", v, 1)]["selected"] for v in variants}
    assert picked["random_delta"] == picked["random_ties"] == picked["random"]
    for variant, method in zip(variants, ("linear", "linear", "ties"), strict=True):
        merged = settings.out / f"targets/piqa/seed1/{variant}/merged.json"
        config = json.loads(merged.read_text())["config"]
        assert config["merge_method"] == method
        assert config["lora_mode"] == ("ab_mean" if variant == "random" else "delta")
    inits = {v: rows[("piqa", v, 1)]["init_acc"] for v in variants}
    assert all(0.0 <= a <= 1.0 for a in inits.values())
    assert "| random_ties | 1 × {1} (1 run)" in summarise(rows.values())


def test_goals_by_variant_need_every_goal_and_do_not_round_a_miss_up() -> None:
    def gaining(points: int) -> list[int]:
        mashup = [1, 0] * 50
        for odd in range(1, 2 * points, 2):  # items scratch misses, now right
            mashup[odd] = 1
        return mashup

    # Target a gains 2 points on every seed, target b 2, 2 and 1: 1.83 on average.
    near = [(t, s, 2 if (t, s) != ("b", 2) else 1) for t in "ab" for s in (0, 1, 2)]
    rows = [summary_row(t, s, gaining(p), 40) for t, s, p in near]
    rows += [summary_row(t, s, gaining(p), 40, "random_delta") for t, s, p in near]
    rows += [summary_row(t, s, [1] * 100, 20, "ties") for t in "ab" for s in (0, 1, 2)]
    text = summarise(rows)
    table = {
        line.split(" | ")[0].removeprefix("| "): line
        for line in text.split("Goals by variant")[1].split("\n\n")[1].splitlines()
        if line.startswith("| ") and not line.startswith("| variant")
    }
    assert table["random_delta"] == (
        "| random_delta | +1.83, not met | 40%, met | 50%, met | 2 of 3 |"
    )
    assert table["ties"] == "| ties | +50.00, met | 20%, met | 50%, met | 3 of 3 (all) |"
    assert "Goals by variant" not in summarise(rows[:6])  # one variant: main's line says it
