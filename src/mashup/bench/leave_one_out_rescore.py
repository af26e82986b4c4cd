"""Re-score finished leave-one-out arms on more validation items, without retraining.

A run scores its arms on ``eval_n`` validation items (100 by default), which leaves a target's
gain an interval of about ±8 points. Every arm's final adapter stays in the run folder, so its
accuracy on the first ``n`` items of the same shuffle (the first ``eval_n`` of which are the
items the run scored) costs forward passes only. Each score is cached beside its adapter,
keyed by the adapter's and the base's weights, so a killed re-scoring resumes where it stopped.
The re-scored first ``eval_n`` items are checked against the row's recorded ones: a changed
adapter or scorer shows up there. A lost from-scratch arm can be trained again with its row's
settings and seed; training is not bit-reproducible across code versions (a few verdicts
differ, as between two seeds), so such an arm is marked, and its agreement is reported, not
enforced. The merged init each mashup arm started from is kept too, and is scored on the same
items, so a re-scored report still says how far the init alone gets.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mashup.bench.leave_one_out import LooSettings, base_weights, task_files
from mashup.errors import MashupError
from mashup.files import write_json

# Near-ties between choices can flip with the batch layout of a forward pass, so a re-score of
# the recorded items may differ on a few; more than this share means another adapter or scorer.
MAX_DISAGREEMENT = 0.03
ADAPTER = "adapter_model.safetensors"
RETRAINED = "retrained.json"  # beside an arm trained again after its row was written


@dataclass
class Agreement:
    """How re-scored arms agree with their rows' recorded verdicts on the runs' own items."""

    kept: list[float] = field(default_factory=list)  # the arms the rows scored: checked
    retrained: list[float] = field(default_factory=list)  # trained again: reported only

    def __add__(self, other: Agreement) -> Agreement:
        return Agreement(self.kept + other.kept, self.retrained + other.retrained)

    def text(self) -> str:
        parts = []
        if self.kept:
            parts.append(
                f"each re-score of a kept arm agrees with the recorded verdicts on at least "
                f"{min(self.kept):.0%} of them"
            )
        if self.retrained:
            low, high = min(self.retrained), max(self.retrained)
            span = f"{low:.0%}" if low == high else f"{low:.0%}–{high:.0%}"
            n = len(self.retrained)
            parts.append(
                f"{n} from-scratch arm{'s' if n != 1 else ''} whose adapters were lost "
                f"{'were' if n != 1 else 'was'} trained again with {'their' if n != 1 else 'its'} "
                f"row's settings and seed and agree{'' if n != 1 else 's'} with the recorded "
                f"verdicts on {span} (a retrain is not bit-identical)"
            )
        return "; ".join(parts)


def arm_dirs(s: LooSettings, row: dict[str, Any]) -> dict[str, Path]:
    """Where a row's two trained adapters are: its scratch arm may live in another run folder."""
    run = Path("targets") / row["target"] / f"seed{row['seed']}"
    scratch_root = Path(row["scratch_recorded_in"]) if row.get("scratch_recorded_in") else s.out
    return {
        "scratch": scratch_root / run / "scratch",
        "mashup": s.out / run / row["variant"] / "mashup",
    }


def init_dir(s: LooSettings, row: dict[str, Any]) -> Path:
    """Where a row's merged init (the mashup arm's starting adapter) is kept."""
    return s.out / "targets" / row["target"] / f"seed{row['seed']}" / row["variant"] / "merged"


def rescore_init(s: LooSettings, row: dict[str, Any], val_file: Path, n: int) -> list[int] | None:
    """Per-item correctness of the row's merged init on the first ``n`` validation items, or
    None where the run kept no merged adapter (older folders, a merge into a full model).

    The row recorded the init's accuracy on its own items (the mashup arm's step-0 evaluation),
    so a re-score that moves it by more than ``MAX_DISAGREEMENT`` is refused."""
    where = init_dir(s, row)
    if not (where / ADAPTER).is_file():
        return None
    correct = rescore_arm(where, s, val_file, n)
    recorded = row.get("init_acc")
    if recorded is not None:
        own = statistics.fmean(correct[: row["comparison"]["eval_n"]])
        if abs(own - recorded) > MAX_DISAGREEMENT:
            raise MashupError(
                f"{where}: re-scored, the merged init scores {own:.0%} on the run's items "
                f"against the {recorded:.0%} its row recorded: the adapter or the scorer changed "
                "since the row was written",
                hint="re-run that (target, seed), or leave it out with --targets or --seeds",
            )
    return correct


def _cache_name(kind: str, s: LooSettings, n: int) -> str:
    return f"rescore_{kind}_{s.format}_{n}.json"


def _cached(cache: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The score cached in ``cache`` if it was made with ``key`` (same weights and items); an
    unreadable cache file counts as none, so the arm is scored again."""
    if not cache.is_file():
        return None
    try:
        record = json.loads(cache.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    return record if all(record.get(k) == v for k, v in key.items()) else None


def _score(model_dir: Path, s: LooSettings, val_file: Path, n: int) -> tuple[list[int], float]:
    from mashup.data.items import load_items
    from mashup.eval import evaluate_items, load_model
    from mashup.train.trainer import VAL_SEED

    items = load_items(val_file, limit=n, seed=VAL_SEED)
    model, tokenizer = load_model(model_dir, base=s.base if model_dir != s.base else None)
    started = time.perf_counter()
    result = evaluate_items(model, tokenizer, items, format=s.format, batch_size=16)
    return [int(i.correct) for i in result.per_item], time.perf_counter() - started


def rescore_arm(arm: Path, s: LooSettings, val_file: Path, n: int) -> list[int]:
    """Per-item correctness of the adapter in ``arm`` on the first ``n`` validation items."""
    from mashup.zoo.fingerprint import file_digest

    weights = arm / ADAPTER
    if not weights.is_file():
        raise MashupError(
            f"{arm}: no trained adapter to re-score ({ADAPTER} is missing)",
            hint="--retrain-scratch trains a lost from-scratch arm again; otherwise leave that "
            "(target, seed) out with --targets or --seeds",
        )
    digest = file_digest(weights)
    key = {"adapter": digest, "base": base_weights(s.base), "n": n}
    cache = arm / _cache_name("arm", s, n)
    record = _cached(cache, key)
    if record is not None:
        return record["correct"]
    # The same weights elsewhere in the run folder (a deterministic merge is the same init at
    # every seed) are scored once: a folder-wide copy, named by the weights, keeps the score.
    name = digest.split(":")[-1]  # the hex digits only: a colon is no file name everywhere
    shared = s.out / "rescores" / f"{name}_{_cache_name('arm', s, n)}"
    record = _cached(shared, {**key, "val": str(val_file)})
    if record is None:
        correct, seconds = _score(arm, s, val_file, n)
        record = {**key, "val": str(val_file), "correct": correct, "seconds": seconds}
        shared.parent.mkdir(parents=True, exist_ok=True)
        write_json(shared, record)
    write_json(cache, record)
    return record["correct"]


def rescore_base(s: LooSettings, target: str, n: int) -> float:
    """The base model's accuracy on the first ``n`` validation items of ``target``."""
    _, val_file = task_files(target)
    key = {"base": base_weights(s.base), "n": n}
    cache = s.out / "targets" / target / _cache_name("base", s, n)
    record = _cached(cache, key)
    if record is not None:
        return record["acc"]
    correct, seconds = _score(s.base, s, val_file, n)
    acc = statistics.fmean(correct)
    write_json(cache, {**key, "val": str(val_file), "acc": acc, "seconds": seconds})
    return acc


def check_items(s: LooSettings, rows: list[dict[str, Any]], n: int) -> None:
    """Refuse ``n`` below a row's own item count or above a target's validation items."""
    from mashup.data.items import iter_items

    for target in sorted({r["target"] for r in rows}):
        have = sum(1 for _ in iter_items(task_files(target)[1]))
        if n > have:
            raise MashupError(
                f"--rescore {n}: {target} has {have} validation items",
                hint=f"give at most {have}, or leave {target} out with --targets",
            )
    scored = max(r["comparison"]["eval_n"] for r in rows)
    if n <= scored:
        raise MashupError(
            f"--rescore {n}: the rows were already scored on {scored} items",
            hint=f"give more than {scored}",
        )


def agreement(recorded: list[int], rescored: list[int]) -> float:
    """Share of the recorded items on which a re-score gives the same verdict."""
    return statistics.fmean(a == b for a, b in zip(recorded, rescored, strict=False))


def retrain_scratch(s: LooSettings, row: dict[str, Any], where: Path, console: Any = None) -> None:
    """Train a row's lost from-scratch arm again into ``where``, with the row's own settings.

    Marked as retrained, so that its re-score is compared with the recorded verdicts but not
    held to them."""
    from mashup.bench.leave_one_out import arm_config
    from mashup.train.trainer import train_model

    train_file, val_file = task_files(row["target"])
    if where.exists():
        # A folder without its adapter is no training output, and train_model would refuse it
        # (an interrupted retrain resumes from ``where``.partial instead).
        import shutil

        shutil.rmtree(where)
    settings = replace(
        s,
        batch_size=row["batch_size"],
        lr=row["lr"],
        eval_n=row["comparison"]["eval_n"],
        format=row.get("format", "mc"),
        precision=row.get("precision", "auto"),
    )
    where.parent.mkdir(parents=True, exist_ok=True)
    config = arm_config(
        settings, train_file, val_file, where, None, row["steps"], s.eval_every, row["seed"]
    )
    train_model(config, console=console, label=f"{row['target']} scratch seed {row['seed']}")
    mark_retrained(where, row)


def mark_retrained(where: Path, row: dict[str, Any]) -> None:
    """Mark the arm in ``where`` as trained again after ``row`` scored the original."""
    write_json(
        where / RETRAINED,
        {"row_finished_at": row["finished_at"], "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
    )


def rescore_rows(
    s: LooSettings,
    rows: list[dict[str, Any]],
    n: int,
    console: Any = None,
    retrain: bool = False,
) -> tuple[list[dict[str, Any]], Agreement]:
    """``rows`` with both arms scored on the first ``n`` validation items, and how the
    re-scores agree with the recorded verdicts on the runs' own items.

    Runs seed by seed (all targets of seed 0 first), so an interrupted re-scoring leaves whole
    seeds done. Steps to reach scratch and the wall-clock still come from the run's curves,
    which were scored on the run's own items. With ``retrain``, a from-scratch arm whose
    adapter is gone is trained again first (a mashup arm's would need its selection and merge).
    """
    check_items(s, rows, n)
    out, agreement_seen = [], Agreement()
    ordered = sorted(rows, key=lambda r: (r["seed"], r["target"], r["variant"]))
    for i, row in enumerate(ordered, 1):
        _, val_file = task_files(row["target"])
        correct, retrained_arms = {}, set()
        for arm, where in arm_dirs(s, row).items():
            started = time.perf_counter()
            if retrain and arm == "scratch" and not (where / ADAPTER).is_file():
                retrain_scratch(s, row, where, console)
            correct[arm] = rescore_arm(where, s, val_file, n)
            recorded = row[f"{arm}_correct"]
            agree = agreement(recorded, correct[arm])
            if (where / RETRAINED).is_file():
                retrained_arms.add(arm)
                agreement_seen.retrained.append(agree)
            elif agree < 1 - MAX_DISAGREEMENT:
                raise MashupError(
                    f"{where}: re-scored, its first {len(recorded)} items agree with the row's "
                    f"recorded verdicts on only {agree:.0%}: the adapter or the scorer changed "
                    "since the row was written",
                    hint="re-run that (target, seed), or leave it out with --targets or --seeds",
                )
            else:
                agreement_seen.kept.append(agree)
            if console is not None:
                console.print(
                    f"[{i}/{len(ordered)}] {row['target']} seed {row['seed']} {row['variant']} "
                    f"{arm}: acc {statistics.fmean(correct[arm]):.3f} on {n} items, recorded "
                    f"items agree {agree:.0%} ({time.perf_counter() - started:.0f} s)"
                )
        base = rescore_base(s, row["target"], n)
        init = rescore_init(s, row, val_file, n)
        comparison = row["comparison"]
        acc = {"base": base, **{arm: statistics.fmean(c) for arm, c in correct.items()}}
        # The init the row recorded was scored on the run's items only: without a re-score on
        # the same items as the arms, leave it out rather than set it beside them.
        kept = {k: v for k, v in row.items() if k != "init_acc"}
        if init is not None:
            kept["init_acc"] = statistics.fmean(init)
        out.append(
            {
                **kept,
                "scratch_correct": correct["scratch"],
                "mashup_correct": correct["mashup"],
                # The recorded interval was over the run's items: the summary recomputes it.
                "comparison": {
                    **{k: v for k, v in comparison.items() if k != "mashup_minus_scratch"},
                    "eval_n": n,
                    "acc": acc,
                },
                "scored_on_run_items": comparison["eval_n"],
                **({"scratch_arm": "retrained"} if "scratch" in retrained_arms else {}),
            }
        )
    return out, agreement_seen
