"""Leave-one-out Mashup benchmark (the paper's protocol), resumable, with seeds and ablations.

Library: one LoRA adapter per task, fine-tuned on its train split. For each task as target the
other tasks form the zoo; Mashup selects, merges and fine-tunes, and is compared with a
from-scratch LoRA run of the same steps, batch and learning rate, evaluated on the same items of
the target's validation split.

Layout under ``out``::

    settings.json                         the training budget every run here shares, and
                                          the digest of the base model's weights
    zoo/                                  the library (a mashup zoo), built once with seed 0
                                          (absent when ``library`` names another run's)
    library_centroids.json                seconds the library's data centroids took (the
                                          embedding selection's per-entry part, paid once)
    targets/<task>/base_eval.json         the untouched base on the validation items
    targets/<task>/selection_seconds.json the measured (uncached) selection cost per metric
    targets/<task>/seed<s>/scratch/       the from-scratch arm of training seed s
                                          (absent when ``reuse_scratch`` took a recorded one)
    targets/<task>/seed<s>/<variant>/     merged init, mashup arm and report of one variant
    results.jsonl                         one row per (target, variant, seed), appended when done

Seeds vary the training arms (LoRA init, the training sample and its order). The selection
sample is fixed (``select_seed``), so the scores are computed once per target and cached in the
zoo; the random-selection control draws anew per seed.

This module runs the benchmark and appends rows; ``leave_one_out_report`` turns them into the
summary (intervals, verdicts, goals) and the plot, ``leave_one_out_rescore`` scores finished arms
on more items.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mashup.errors import MashupError

if TYPE_CHECKING:
    from mashup.data.items import Format
    from mashup.train.config import Precision

LIBRARY = ("arc_easy", "csqa", "hellaswag", "openbookqa", "piqa", "socialiqa", "winogrande")
VARIANTS: dict[str, dict[str, Any]] = {
    "main": {"metric": "acc", "k": 2, "merge": "ab_mean"},
    "random": {"metric": "random", "k": 2, "merge": "ab_mean"},
    "k1": {"metric": "acc", "k": 1, "merge": "ab_mean"},
    "k3": {"metric": "acc", "k": 3, "merge": "ab_mean"},
    "delta": {"metric": "acc", "k": 2, "merge": "delta"},
    "ties": {"metric": "acc", "k": 2, "merge": "ties"},
    # Not in the paper: rank by MiniLM similarity of the data, no LM forward, so selection
    # costs seconds instead of a forward pass of every candidate over the sample.
    "embedding": {"metric": "embedding", "k": 2, "merge": "ab_mean"},
    # Not in the paper either: the embedding keeps the nearest 3 of the 6 candidates, and only
    # those are scored by accuracy, which halves the LM forwards of selection.
    "prefilter": {"metric": "acc", "k": 2, "merge": "ab_mean", "prefilter": 3},
    # Not in the paper: accuracy scored by successive halving (6 → 3 candidates on 32 items,
    # 3 → 2 on 64), 288 candidate-items instead of 768.
    "halving": {"metric": "acc", "k": 2, "merge": "ab_mean", "halving": True},
    # Random selection (free) with the exact-update merges: the same pair as ``random`` at the
    # same seed, so against it they isolate the merge.
    "random_delta": {"metric": "random", "k": 2, "merge": "delta"},
    "random_ties": {"metric": "random", "k": 2, "merge": "ties"},
    # Not in the paper: the embedding's pair (selection that reads the target, at the cost of
    # embedding its sample) merged by the mean of the updates; against ``embedding`` it
    # isolates the merge, against ``delta`` the selection.
    "embedding_delta": {"metric": "embedding", "k": 2, "merge": "delta"},
    # Not in the paper: the pair whose updates lower the target loss most to first order (one
    # forward and backward pass of the base over 32 items, for any zoo size), merged by the
    # mean of the updates, whose predicted loss change is the mean of its members'.
    "gradient_delta": {"metric": "gradient", "k": 2, "merge": "delta", "n": 32},
    # The same on other 32-item samples (shuffle seeds 1 and 3 instead of the run's
    # select_seed): checks of what the training seeds do not resample.
    **{
        f"gradient_delta_sample{sample}": {
            "metric": "gradient",
            "k": 2,
            "merge": "delta",
            "n": 32,
            "select_seed": sample,
        }
        for sample in (1, 3)
    },
}
# Mashup Learning (arXiv 2603.10156), LoRA, average over its targets: scratch -> mashup accuracy
# and the share of scratch's steps mashup needs to reach scratch's final accuracy.
PAPER = {
    "Gemma-3-1B": {"scratch": 70.0, "mashup": 71.8, "share_of_steps": 0.680},
    "Gemma-2-2B": {"scratch": 80.8, "mashup": 81.5, "share_of_steps": 0.726},
    "Gemma-3-4B": {"scratch": 83.2, "mashup": 84.2, "share_of_steps": 0.704},
}
GOALS = {"gain_points": 2.0, "share_of_steps": 0.50, "share_of_wall_clock": 0.55}
LIBRARY_SEED = 0


@dataclass(frozen=True)
class LooSettings:
    """One benchmark run; the defaults are the budget whose numbers the README reports."""

    out: Path
    base: Path
    tasks: tuple[str, ...] = LIBRARY
    targets: tuple[str, ...] | None = None  # default: every task
    variants: tuple[str, ...] = ("main",)
    seeds: tuple[int, ...] = (0,)
    zoo_steps: int = 100
    steps: int = 100
    # An epoch budget replaces the step count, per task: ceil(epochs × train items / batch).
    # The paper's is one epoch at batch 32, for the library and for both arms.
    zoo_epochs: float | None = None
    epochs: float | None = None
    batch_size: int = 8
    lr: float = 5e-4
    eval_n: int = 100
    eval_every: int | None = 20
    select_n: int = 128
    select_seed: int = 0
    # How every stage reads the items: "mc" (lm-eval) or "letter" (the paper's chat prompt).
    # One results file holds one format: the script keeps them in separate folders.
    format: Format = "mc"
    # Training arithmetic (mashup.train.config.Precision); "bf16" makes a CPU step about 1.7x
    # faster where the CPU has bf16 instructions (README). Anything but "auto" gets own folders.
    precision: Precision = "auto"
    # Take the from-scratch arm of a (target, seed) from a finished row of results.jsonl with the
    # same training settings instead of training it again (a fresh machine has no checkpoints).
    reuse_scratch: bool = False
    # Another run folder whose finished rows hold the from-scratch arms (implies reuse_scratch).
    # The arm does not depend on the library, so a probe that changes only the library (e.g.
    # more library steps) is paired with the very scratch arms it is compared against.
    scratch_from: Path | None = None
    # Another run folder whose library to use instead of training one in ``out``: a budget probe
    # that changes only the arms shares the library it was compared against.
    library: Path | None = None

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant {unknown}; choose from {', '.join(VARIANTS)}")
        missing = [t for t in self.targets or () if t not in self.tasks]
        if missing:
            raise ValueError(f"targets {missing} are not library tasks ({', '.join(self.tasks)})")
        from mashup.train.config import PRECISIONS

        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}; choose {', '.join(PRECISIONS)}"
            )
        for name in ("zoo_epochs", "epochs"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")

    def base_tag(self) -> str | None:
        """The base model's folder name, or None for the default SmolLM2-135M-Instruct.

        A run on another base gets folders of its own (``leave_one_out_gemma-3-270m``): its
        library, rows and scratch arms must never pass for the default base's."""
        from mashup.data.assets import SMOLLM2_DIRNAME

        name = self.base.name
        return None if name in ("", SMOLLM2_DIRNAME) else name

    def budget(self) -> dict[str, Any]:
        """What every run in ``out`` must share: rows, arms and library are reused by it."""
        return {
            "arms": {"epochs": self.epochs} if self.epochs else {"steps": self.steps},
            "zoo": {"epochs": self.zoo_epochs} if self.zoo_epochs else {"steps": self.zoo_steps},
            "batch_size": self.batch_size,
            "lr": self.lr,
            "eval_n": self.eval_n,
            "select_n": self.select_n,
            "select_seed": self.select_seed,
            "format": self.format,
            # Folders from before precision was a choice record none: "auto" keeps them valid.
            **({"precision": self.precision} if self.precision != "auto" else {}),
            # Folders from before the base was recorded hold the default base's runs.
            **({"base": self.base_tag()} if self.base_tag() else {}),
        }


def changed_budget(s: LooSettings) -> dict[str, Any]:
    """The entries of ``s.budget()`` that differ from the default budget's (format: ``mc``)."""
    default = LooSettings(out=s.out, base=Path()).budget()
    return {k: v for k, v in s.budget().items() if v != default.get(k)}


def budget_tag(s: LooSettings) -> str:
    """A folder suffix naming what differs from the default budget (``_e1_zoo-e1_b32``), or "".

    The format is left out: its folders have their own suffix."""
    short = {"arms": "", "zoo": "zoo-", "batch_size": "b", "lr": "lr", "eval_n": "n"}
    short |= {"select_n": "sel", "select_seed": "selseed"}
    parts = []
    for key, value in changed_budget(s).items():
        if key in ("arms", "zoo"):
            ((unit, value),) = value.items()
            parts.append(f"{short[key]}{'e' if unit == 'epochs' else 's'}{value:g}")
        elif key in ("precision", "base"):
            parts.append(value)
        elif key != "format":
            parts.append(f"{short[key]}{value:g}")
    return "_" + "_".join(parts) if parts else ""


def read_budget(record: Path) -> dict[str, Any]:
    """The budget a run folder recorded in ``settings.json``."""
    try:
        held = json.loads(record.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MashupError(
            f"{record} is not a readable budget record ({err}); restore it or delete the folder"
        ) from err
    if not isinstance(held, dict):
        raise MashupError(f"{record} is not a budget record (no JSON object); restore it")
    return held


# settings.json records, beside the budget, a digest of the base's weights: the budget names
# the base by its folder name only, and two models may share one.
BASE_WEIGHTS = "base_weights"


def base_weights(base: Path) -> str:
    """The weights digest of the base model folder (cached per process while the files stay)."""
    if not base.is_dir():
        raise MashupError(
            f"{base} is not a model folder",
            hint="give a Hugging Face model directory with --base, or run mashup data prepare",
        )
    files = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(base.iterdir()))
    return _weights_digest(base.resolve(), files)


@functools.cache
def _weights_digest(base: Path, files: tuple[tuple[str, int, int], ...]) -> str:
    from mashup.zoo.fingerprint import weights_digest

    return weights_digest(base)


def recorded_weights(folder: Path) -> str | None:
    """The base weights digest a run folder recorded, or None (none recorded, or no folder)."""
    record = folder / "settings.json"
    return read_budget(record).get(BASE_WEIGHTS) if record.is_file() else None


def check_same_weights(folder: Path, held: str | None, base: Path, weights: str, flag: str) -> None:
    """Refuse a run folder whose rows were trained on another model than ``base``."""
    if held is not None and held != weights:
        raise MashupError(
            f"{flag} {folder} holds runs on another model than {base} (base weights "
            f"{held.removeprefix('sha256:')[:12]} there, {weights.removeprefix('sha256:')[:12]} "
            "here, whatever the folder names); give another --out for this base, or run with "
            "the model that folder was trained on"
        )


def budget_differences(
    held: dict[str, Any], wanted: dict[str, Any], keys: Iterable[str], held_at: str, wanted_at: str
) -> str:
    """The ``keys`` on which two recorded budgets differ, as ``key HELD held_at, WANTED ...``."""
    return ", ".join(
        f"{k} {held.get(k)!r} {held_at}, {wanted.get(k)!r} {wanted_at}"
        for k in keys
        if held.get(k) != wanted.get(k)
    )


# What a library entry's training depends on; the arms' budget and the evaluation do not matter.
LIBRARY_BUDGET = ("zoo", "batch_size", "lr", "format", "precision", "base")


def library_dir(s: LooSettings) -> Path:
    """The zoo the targets draw from: ``out/zoo``, or that of the run folder ``s.library``.

    A shared library must have been trained with the same library budget; another one would
    pass as this budget's library.
    """
    if s.library is None:
        return s.out / "zoo"
    record = s.library / "settings.json"
    if not record.is_file() or not (s.library / "zoo").is_dir():
        raise MashupError(
            f"{s.library} is not a leave-one-out run folder with a library (no settings.json or "
            "zoo/); give the --out of a run that built one"
        )
    differ = budget_differences(read_budget(record), s.budget(), LIBRARY_BUDGET, "there", "here")
    if differ:
        raise MashupError(
            f"the library in {s.library} was trained with another budget ({differ}); "
            "run without --library to train one, or give a run folder with this library budget"
        )
    check_same_weights(
        s.library, recorded_weights(s.library), s.base, base_weights(s.base), "--library"
    )
    return s.library / "zoo"


def check_budget(s: LooSettings) -> None:
    """Record the budget of ``out`` and its base's weights on first use; refuse others.

    Rows are keyed by (target, variant, seed) and the library by task, so a second budget in the
    same folder would skip its runs as done and report the first budget's numbers. The budget
    names the base by folder name; the weights tell two models of one name apart.
    """
    record = s.out / "settings.json"
    wanted = s.budget()
    if record.is_file():
        held = read_budget(record)
        held_weights = held.pop(BASE_WEIGHTS, None)
        if held != wanted:
            differ = budget_differences(held, wanted, {**held, **wanted}, "here", "asked")
            raise MashupError(
                f"{s.out} holds runs of another budget ({differ}); give another --out "
                "(or run with the budget it holds)"
            )
        weights = base_weights(s.base)
        check_same_weights(s.out, held_weights, s.base, weights, "--out")
        if held_weights is not None:
            return
        # A folder from before the weights were recorded: they were this base's (the budget
        # says which one by name), so record its weights from now on.
        wanted = held
    else:
        weights = base_weights(s.base)
    s.out.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(f".{os.getpid()}.tmp")  # processes may share a folder
    tmp.write_text(json.dumps({**wanted, BASE_WEIGHTS: weights}, indent=1) + "\n", "utf-8")
    tmp.replace(record)


def budget_steps(s: LooSettings, train_file: Path, *, zoo: bool = False) -> int:
    """Training steps of one arm (or library entry) on ``train_file`` under the budget."""
    epochs, steps = (s.zoo_epochs, s.zoo_steps) if zoo else (s.epochs, s.steps)
    if epochs is None:
        return steps
    from mashup.data.items import load_items

    return max(1, math.ceil(epochs * len(load_items(train_file)) / s.batch_size))


def _say(console: Any, message: str) -> None:
    if console is not None:
        console.print(message)


def task_files(task: str) -> tuple[Path, Path]:
    from mashup.data.assets import ensure_benchmark

    return ensure_benchmark(task, "train"), ensure_benchmark(task, "val")


def arm_config(
    s: LooSettings,
    data: Path,
    val: Path,
    out: Path,
    init: Path | None,
    steps: int,
    eval_every: int | None,
    seed: int,
):
    from mashup.train.config import TrainConfig

    return TrainConfig(
        base=s.base,
        data=data,
        val=val,
        out=out,
        init=init,
        steps=steps,
        batch_size=s.batch_size,
        lr=s.lr,
        val_n=s.eval_n,
        eval_every=eval_every,
        train_limit=steps * s.batch_size,
        format=s.format,
        precision=s.precision,
        seed=seed,
    )


def build_library(s: LooSettings, console: Any = None) -> Path:
    """One LoRA adapter per task, registered in ``out/zoo`` (tasks already there are kept).

    A library shared from another run folder gets no new entries: a task it lacks is an error
    (its catalog still caches the selection scores, as any zoo's does)."""
    from mashup.train.trainer import train_model
    from mashup.zoo import Zoo

    zoo_dir = library_dir(s)
    zoo = Zoo.open(zoo_dir)
    registered = {e.name for e in zoo.list()}
    missing = [t for t in s.tasks if t not in registered]
    if s.library is not None and missing:
        raise MashupError(
            f"the library in {s.library} has no entry for {', '.join(missing)}; train them there "
            f"first (run with --out {s.library} and its budget)"
        )
    for task in s.tasks:
        if task in registered:
            continue
        train_file, val_file = task_files(task)
        steps = budget_steps(s, train_file, zoo=True)
        cfg = arm_config(
            s, train_file, val_file, zoo_dir / "runs" / task, None, steps, 10**9,
            LIBRARY_SEED,
        )  # fmt: skip
        cfg = cfg.model_copy(update={"eval_at_start": False, "val_n": min(s.eval_n, 100)})
        _say(console, f"library {task}: {steps} steps")
        result = train_model(cfg, console=console, label=f"zoo {task}")
        metrics = {"val_acc": result.final_acc or 0.0}
        zoo.add(
            cfg.out,
            task=task,
            dataset=str(train_file),
            name=task,
            metrics=metrics,
            extra={"format": s.format},
        )
    return zoo_dir


def load_results(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Finished rows by (target, variant, seed); a torn last line (a kill) is ignored."""
    if not path.is_file():
        return {}
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        rows[(row["target"], row["variant"], int(row.get("seed", 0)))] = row
    return rows


def select_rows(
    rows: Iterable[dict[str, Any]],
    *,
    targets: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    variants: Iterable[str] | None = None,
) -> list[dict[str, Any]]:
    """The rows of these targets, seeds and variants (None: any).

    Naming variants keeps main's rows too: every ablation is reported against main on the same
    runs, and the per-target table is main's.
    """
    wanted_targets = None if targets is None else set(targets)
    wanted_seeds = None if seeds is None else set(seeds)
    wanted_variants = None if variants is None else {*variants, "main"}
    return [
        r
        for r in rows
        if (wanted_targets is None or r["target"] in wanted_targets)
        and (wanted_seeds is None or int(r.get("seed", 0)) in wanted_seeds)
        and (wanted_variants is None or r["variant"] in wanted_variants)
    ]


def unmatched_filter(
    rows: Iterable[dict[str, Any]],
    *,
    targets: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
) -> str | None:
    """Why a --report filter matches no finished row, or None (a typo would print an empty
    table): the first kind of filter with a value no row has, naming the finished ones."""
    rows = list(rows)
    for what, wanted, finished in (
        ("target", targets or (), sorted({r["target"] for r in rows})),
        ("seed", seeds or (), sorted({int(r.get("seed", 0)) for r in rows})),
    ):
        missing = [str(w) for w in wanted if w not in finished]
        if missing:
            return (
                f"no finished row for {what} {', '.join(missing)}; "
                f"finished: {', '.join(map(str, finished)) or 'none'}"
            )
    return None


def _stored_selection_costs(root: Path) -> dict[str, float]:
    """Seconds of the first, uncached run of each selection procedure on this target."""
    record = root / "selection_seconds.json"
    return json.loads(record.read_text()) if record.is_file() else {}


def _selection_cost(root: Path, metric: str, selection: Any) -> tuple[float, str]:
    """Seconds selection costs for this target, and whether measured now or taken from earlier.

    Scores are cached after the first run, so a later seed or variant would report a selection
    that cost nothing; the wall-clock comparison uses the first, uncached measurement instead.
    ``metric`` names the selection procedure (``acc``, ``acc+prefilter3``, ...).
    """
    from mashup.files import write_json

    stored = _stored_selection_costs(root)
    if metric == "random" or any(not c.cached for c in selection.ranking):
        stored[metric] = selection.seconds
        write_json(root / "selection_seconds.json", stored)
        return selection.seconds, "measured"
    if metric in stored:
        return float(stored[metric]), "earlier run"
    return selection.seconds, "cached scores, cost unknown"


def selection_procedure(spec: dict[str, Any]) -> str:
    """Names how a variant selects (``acc``, ``acc+prefilter3``, ``acc+halving``, ...): the key
    of its measured cost, shared by variants that select the same way."""
    name = spec["metric"]
    if "n" in spec:
        name += f"@{spec['n']}"
    if "select_seed" in spec:
        name += f"+sample{spec['select_seed']}"
    if "prefilter" in spec:
        name += f"+prefilter{spec['prefilter']}"
    if spec.get("halving"):
        name += "+halving"
    return name


def run_one(
    s: LooSettings,
    zoo_dir: Path,
    target: str,
    variant: str,
    seed: int,
    console: Any = None,
) -> dict[str, Any]:
    """Train (or reuse) both arms of one (target, variant, seed) and return its result row."""
    from mashup.select.core import select_entries
    from mashup.train.pipeline import evaluate_base, merge_selected
    from mashup.train.report import compare_runs, write_report
    from mashup.train.trainer import train_model

    spec = VARIANTS[variant]
    train_file, val_file = task_files(target)
    root = s.out / "targets" / target
    run_dir = root / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    base_eval = evaluate_base(s.base, val_file, s.eval_n, root / "base_eval.json", s.format)
    steps = budget_steps(s, train_file)
    scratch_dir = run_dir / "scratch"
    recorded = None
    if (s.reuse_scratch or s.scratch_from is not None) and not scratch_dir.exists():
        finished = load_results((s.scratch_from or s.out) / "results.jsonl").values()
        recorded = recorded_scratch_row(finished, s, target, seed, steps)
        if recorded is None and s.scratch_from is not None:
            _say(
                console,
                f"{target} scratch seed {seed}: no finished row with these arm settings in "
                f"{s.scratch_from}; training it",
            )
    if recorded is None:
        scratch = train_model(
            arm_config(s, train_file, val_file, scratch_dir, None, steps, s.eval_every, seed),
            console=console,
            label=f"{target} scratch seed {seed}",
        )
    else:
        _say(console, f"{target} scratch seed {seed}: recorded on {recorded['finished_at']}")
    procedure = selection_procedure(spec)
    measured_before = procedure in _stored_selection_costs(root)
    selection = select_entries(
        train_file,
        zoo_dir,
        s.base,
        k=spec["k"],
        metric=spec["metric"],
        exclude=[target],
        n=spec.get("n", s.select_n),
        seed=seed if spec["metric"] == "random" else spec.get("select_seed", s.select_seed),
        prefilter=spec.get("prefilter"),
        halving=spec.get("halving", False),
        # A procedure's first run on a target ignores scores that another procedure cached,
        # so that its cost is measured whole.
        use_cache=measured_before,
        format=s.format,
        # The gradient is taken in the arms' precision (bf16 autocast when they train so).
        precision="bf16" if spec["metric"] == "gradient" and s.precision == "bf16" else "fp32",
        console=console,
    )
    selection_seconds, selection_source = _selection_cost(root, procedure, selection)
    vdir = run_dir / variant
    vdir.mkdir(exist_ok=True)
    init, merge_seconds, merge_cfg = merge_selected(
        selection.selected, zoo_dir, s.base, spec["merge"], vdir / "merged", seed
    )
    mashup = train_model(
        arm_config(s, train_file, val_file, vdir / "mashup", init, steps, s.eval_every, seed),
        console=console,
        label=f"{target} {variant} seed {seed}",
    )
    if recorded is not None:
        scratch = scratch_from_row(recorded, train_seconds=mashup.train_seconds)
    comparison = compare_runs(
        scratch,
        mashup,
        base_acc=base_eval["acc"],
        selection_seconds=selection_seconds,
        merge_seconds=merge_seconds,
    )
    write_report(
        {
            "target": target,
            "base": str(s.base),
            "zoo": str(zoo_dir),
            "merge_method": spec["merge"],
            "merge_config": merge_cfg,
            "lr": s.lr,
            "batch_size": s.batch_size,
            "format": s.format,
            "seed": seed,
            "selection": selection.to_dict(),
            "comparison": comparison,
        },
        {"scratch": scratch.curve, "mashup": mashup.curve},
        vdir / "report",
    )
    return {
        "target": target,
        "variant": variant,
        **spec,
        "seed": seed,
        "select_seed": spec.get("select_seed", s.select_seed),
        "selected": selection.selected,
        "selection_scores": {c.name: c.score for c in selection.ranking},
        "selection_margin": selection.margin.to_dict() if selection.margin else None,
        "selection_seconds_source": selection_source,
        # "recorded": scratch's final evaluation comes from an earlier row of this seed, and its
        # training time is taken to be the mashup arm's (same steps, batch and evaluations).
        "scratch_arm": "trained" if recorded is None else "recorded",
        **({"scratch_recorded_at": recorded["finished_at"]} if recorded is not None else {}),
        **({"scratch_recorded_in": str(s.scratch_from)} if recorded and s.scratch_from else {}),
        "comparison": comparison,
        "scratch_correct": [int(c) for c in scratch.final_correct],
        "mashup_correct": [int(c) for c in mashup.final_correct],
        **init_accuracy(mashup.curve),
        "steps": steps,
        "eval_every": s.eval_every,  # not part of the budget, but the steps to reach depend on it
        **({"epochs": s.epochs} if s.epochs else {}),
        **({"zoo_epochs": s.zoo_epochs} if s.zoo_epochs else {"zoo_steps": s.zoo_steps}),
        **({"library": str(s.library)} if s.library is not None else {}),  # another run's
        "batch_size": s.batch_size,
        "lr": s.lr,
        **({"format": s.format} if s.format != "mc" else {}),  # rows before formats are mc
        **({"precision": s.precision} if s.precision != "auto" else {}),
        **({"base": s.base_tag()} if s.base_tag() else {}),  # rows before bases are SmolLM2's
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def init_accuracy(curve: Iterable[Any]) -> dict[str, float]:
    """``{"init_acc": ...}``: the mashup arm's accuracy at step 0, i.e. of the merged init before
    any training on the target (empty when the curve does not start at step 0)."""
    first = next(iter(curve), None)
    if first is None:
        return {}
    point = first if isinstance(first, dict) else first.model_dump()
    return {"init_acc": point["acc"]} if point["step"] == 0 else {}


def with_curve_records(rows: Iterable[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """Rows from before rows recorded ``init_acc`` or ``eval_every`` take them from their mashup
    arm's curve file in ``out``, where it is still there: the accuracy at step 0, and the step
    of the first evaluation after it (read only from a curve with a later one, since a curve of
    two points cannot tell the interval from the run's length)."""
    from mashup.train.trainer import CURVE_FILE

    filled = []
    for row in rows:
        curve = out / "targets" / row["target"] / f"seed{row['seed']}" / row["variant"] / "mashup"
        curve = curve / CURVE_FILE
        if ("init_acc" not in row or "eval_every" not in row) and curve.is_file():
            points = json.loads(curve.read_text(encoding="utf-8")).get("points", [])
            if "init_acc" not in row:
                row = {**row, **init_accuracy(points)}
            if "eval_every" not in row and len(points) > 2 and points[0]["step"] == 0:
                row = {**row, "eval_every": points[1]["step"]}
        filled.append(row)
    return filled


def eval_every_flags(rows: Iterable[dict[str, Any]]) -> list[str]:
    """``["--eval-every", N]`` when every row records the same interval and it is not the
    default's, for a summary's command line; otherwise nothing."""
    recorded = {row.get("eval_every") for row in rows}
    default = LooSettings(out=Path(), base=Path()).eval_every
    if len(recorded) != 1 or None in recorded or recorded == {default}:
        return []
    return ["--eval-every", str(recorded.pop())]


def recorded_scratch_row(
    rows: Iterable[dict[str, Any]],
    s: LooSettings,
    target: str,
    seed: int,
    steps: int | None = None,
) -> dict[str, Any] | None:
    """A finished row whose from-scratch arm is the one ``s`` would train for (target, seed).

    The arm depends on the base, the target, the seed and the training settings only, so any
    variant's row with the same ones holds it; main's (the reference every ablation is paired
    with) is preferred, then the earliest finished.
    """
    matching = [
        r
        for r in rows
        if r["target"] == target
        and int(r.get("seed", 0)) == seed
        and r.get("scratch_arm", "trained") == "trained"
        and (r["steps"], r["batch_size"], r["lr"]) == (steps or s.steps, s.batch_size, s.lr)
        and r.get("format", "mc") == s.format
        and r.get("precision", "auto") == s.precision
        and r.get("base") == s.base_tag()
        and r["comparison"]["eval_n"] == s.eval_n
    ]
    matching.sort(key=lambda r: (r["variant"] != "main", r["finished_at"]))
    return matching[0] if matching else None


def scratch_from_row(row: dict[str, Any], *, train_seconds: float) -> Any:
    """The from-scratch arm of a recorded row as a TrainResult: its final evaluation only.

    The row keeps the per-item results and the accuracy of the last evaluation, not the curve,
    so the curve is that one point; acc_norm and nll were not recorded (NaN).
    """
    from mashup.train.config import CurvePoint, TrainResult

    correct = [bool(c) for c in row["scratch_correct"]]
    final = CurvePoint(
        step=row["steps"],
        acc=sum(correct) / len(correct),
        acc_norm=float("nan"),
        nll=float("nan"),
        n=len(correct),
        train_seconds=train_seconds,
    )
    return TrainResult(
        out=Path(),
        kind="adapter",
        config={"recorded_at": row["finished_at"]},
        steps=row["steps"],
        train_seconds=train_seconds,
        eval_seconds=0.0,
        wall_seconds=train_seconds,
        final_loss=None,
        curve=[final],
        final_correct=correct,
    )


def check_run_folder(s: LooSettings) -> None:
    """Refuse a missing base, a wrong ``--library`` or a ``--scratch-from`` of another model
    (before ``out`` records a budget), then ``out``'s budget."""
    from mashup.hub import check_base

    check_base(s.base)
    library_dir(s)
    if s.scratch_from is not None:
        held = recorded_weights(s.scratch_from)
        check_same_weights(s.scratch_from, held, s.base, base_weights(s.base), "--scratch-from")
    check_budget(s)


def prepare_library(s: LooSettings, console: Any = None) -> Path:
    """Check the run folder's budget and train the library entries it lacks; returns the zoo.

    With ``tasks`` narrowed to a few, several processes can train one library at once (each its
    own tasks): the catalog serialises their writes, and each entry has its own run folder.
    """
    check_run_folder(s)
    return build_library(s, console)


def selects_by_embedding(variants: Iterable[str]) -> bool:
    """Whether any of ``variants`` ranks entries with the MiniLM embedding."""
    return any(VARIANTS[v]["metric"] == "embedding" or "prefilter" in VARIANTS[v] for v in variants)


def embed_library(s: LooSettings, zoo_dir: Path, console: Any = None) -> None:
    """Before the first target of a variant that selects by embedding: every library entry's
    training-data centroid, cached in the catalog. A centroid belongs to the entry, not to a
    target, so it is part of building the zoo (its seconds go to ``library_centroids.json``)
    and each target's selection cost is that of embedding its own sample."""
    from mashup.files import write_json
    from mashup.select.core import entry_centroids
    from mashup.zoo import Zoo

    if not selects_by_embedding(s.variants):
        return
    zoo = Zoo.open(zoo_dir, create=False)
    started = time.perf_counter()
    _, _, computed = entry_centroids(zoo.list(), zoo, s.select_n, s.select_seed, console=console)
    if computed:  # later calls only read the catalog
        record = s.out / "library_centroids.json"
        stored = json.loads(record.read_text()) if record.is_file() else {}
        key = f"n{s.select_n}_seed{s.select_seed}"
        stored[key] = {
            "seconds": round(time.perf_counter() - started, 3),
            "entries": sorted(computed),
        }
        write_json(record, stored)


def run_benchmark(s: LooSettings, console: Any = None) -> Path:
    """Run what is missing, in the order variant → seed → target; returns ``results.jsonl``.

    The paper's recipe finishes on every target and seed before the ablations start, and each
    row is appended as soon as it is done, so a kill loses at most the run in progress.
    """
    if s.scratch_from is not None and not (s.scratch_from / "results.jsonl").is_file():
        raise MashupError(
            f"--scratch-from {s.scratch_from} has no results.jsonl; give the --out of a run "
            "that finished rows with these arm settings"
        )
    zoo_dir = prepare_library(s, console)
    embed_library(s, zoo_dir, console)
    results = s.out / "results.jsonl"
    for variant in s.variants:
        for seed in s.seeds:
            for target in s.targets or s.tasks:
                if (target, variant, seed) in load_results(results):
                    continue  # also skips rows another process finished meanwhile
                row = run_one(s, zoo_dir, target, variant, seed, console)
                with results.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                acc = row["comparison"]["acc"]
                _say(
                    console,
                    f"{target} {variant} seed {seed}: scratch {acc['scratch']:.3f} "
                    f"mashup {acc['mashup']:.3f} reach step "
                    f"{row['comparison']['mashup_step_reaching_scratch_final']}",
                )
    return results


def parallel_jobs(s: LooSettings) -> tuple[list[str], list[tuple[str, int]]]:
    """What a parallel run starts: the library tasks not yet registered, then the (target, seed)
    runs that lack a row of some variant. Each target's first seed comes before any later seed,
    and larger targets (more steps, so they end last) before smaller ones. Every file a process
    will read is fetched here, once, before any process starts."""
    from mashup.zoo import Zoo

    library: list[str] = []
    if s.library is None:  # a shared library is complete (children refuse it otherwise)
        registered = {e.name for e in Zoo.open(s.out / "zoo").list()}
        missing = [t for t in s.tasks if t not in registered]
        sizes = {t: budget_steps(s, task_files(t)[0], zoo=True) for t in missing}
        library = sorted(missing, key=lambda t: -sizes[t])
    targets = list(s.targets or s.tasks)
    steps = {t: budget_steps(s, task_files(t)[0]) for t in targets}
    targets.sort(key=lambda t: -steps[t])
    done = set(load_results(s.out / "results.jsonl"))
    runs = [
        (t, seed)
        for i, seed in enumerate(s.seeds)
        for t in (targets if i == 0 else reversed(targets))
        if any((t, v, seed) not in done for v in s.variants)
    ]
    return library, runs


def process_threads(jobs: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The thread setting for each of ``jobs`` processes sharing this machine's cores.

    Each process would otherwise start as many threads as there are cores; ``jobs`` times that
    many threads then contend for the cores, and each step runs several times slower than with
    its share. A thread count the caller set (``OMP_NUM_THREADS``) is kept.
    """
    environ = os.environ if environ is None else environ
    if environ.get("OMP_NUM_THREADS"):
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"OMP_NUM_THREADS": str(max(1, (cores or 1) // jobs))}


def run_parallel(
    s: LooSettings,
    jobs: int,
    command: list[str],
    console: Any = None,
    library_only: bool = False,
) -> Path:
    """Run the benchmark as up to ``jobs`` processes at once; returns ``results.jsonl``.

    ``command`` runs this benchmark with ``s``'s settings; each process adds ``--tasks T
    --targets T --library-only`` (one per library entry to train) or, once it is complete,
    ``--targets T --seeds S`` (one per run). A target's later seeds wait for its first seed,
    whose process measures the selection cost and base accuracy they reuse, and no two
    processes ever train the same checkpoint. A small model leaves most of a GPU idle, so
    several processes share one. Each process gets ``cores / jobs`` threads
    (:func:`process_threads`). Each process logs to ``out/logs/<name>.log`` (a run's name is
    ``<target>_seed<N>``, plus ``_<variants>`` unless it runs main alone), and
    ``out/logs/parallel.log`` records when each started and ended.
    """
    import subprocess

    check_run_folder(s)
    env = {**os.environ, **process_threads(jobs)}
    library, runs = parallel_jobs(s)
    logs = s.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    events = logs / "parallel.log"
    start_time = time.perf_counter()

    def record(message: str) -> None:
        line = f"{time.perf_counter() - start_time:8.1f}s {message}"
        with events.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
        _say(console, line)

    def run_all(
        queue: list[tuple[str, list[str]]], ready: Callable[[str, set[str]], bool]
    ) -> list[str]:
        running: dict[str, tuple[Any, Any]] = {}
        ended: set[str] = set()
        failed: list[str] = []
        while queue or running:
            for name, (proc, log) in list(running.items()):
                if proc.poll() is not None:
                    log.close()
                    del running[name]
                    ended.add(name)
                    record(f"end {name} (exit {proc.returncode})")
                    if proc.returncode != 0:
                        failed.append(f"{name} (log: {logs / (name + '.log')})")
            for item in list(queue):
                name, extra = item
                if len(running) >= jobs or not ready(name, ended):
                    continue
                queue.remove(item)
                log = (logs / f"{name}.log").open("w", encoding="utf-8")
                proc = subprocess.Popen(
                    [*command, *extra], stdout=log, stderr=subprocess.STDOUT, env=env
                )
                running[name] = (proc, log)
                record(f"start {name}")
            time.sleep(0.5)
        return failed

    failed = run_all(
        [(f"library_{t}", ["--tasks", t, "--targets", t, "--library-only"]) for t in library],
        lambda name, ended: True,
    )
    if failed:
        raise MashupError(f"library training failed: {', '.join(failed)}")
    if library_only:
        return s.out / "results.jsonl"
    if runs:  # once here, not racing in every process (each then reads the catalog)
        embed_library(s, library_dir(s), console)
    # Other variants' runs reuse main's targets and seeds: their logs carry the variants, so
    # that a later run of one variant leaves another's logs alone.
    tail = "" if s.variants == ("main",) else "_" + "-".join(s.variants)
    names = {(t, seed): f"{t}_seed{seed}{tail}" for t, seed in runs}
    waits_for = {
        names[t, seed]: names.get((t, s.seeds[0])) if seed != s.seeds[0] else None
        for t, seed in runs
    }
    failed = run_all(
        [(names[t, seed], ["--targets", t, "--seeds", str(seed)]) for t, seed in runs],
        lambda name, ended: waits_for[name] is None or waits_for[name] in ended,
    )
    if failed:
        raise MashupError(f"runs failed: {', '.join(failed)}")
    return s.out / "results.jsonl"
