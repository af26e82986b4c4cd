"""Re-score finished leave-one-out arms on more validation items, without retraining.

A run scores its arms on ``eval_n`` validation items (100 by default), which leaves a target's
gain an interval of about ±8 points. Every arm's final adapter stays in the run folder, so its
accuracy on the first ``n`` items of the same shuffle (the first ``eval_n`` of which are the
items the run scored) costs forward passes only. Each score is cached beside its adapter,
keyed by the adapter's and the base's weights, so a killed re-scoring resumes where it stopped.
The re-scored first ``eval_n`` items are checked against the row's recorded ones: a changed
adapter or scorer shows up there.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from mashup.bench.leave_one_out import LooSettings, base_weights, task_files
from mashup.errors import MashupError

# Near-ties between choices can flip with the batch layout of a forward pass, so a re-score of
# the recorded items may differ on a few; more than this share means another adapter or scorer.
MAX_DISAGREEMENT = 0.03
ADAPTER = "adapter_model.safetensors"


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically; the temporary name is unique, so processes may race on ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def arm_dirs(s: LooSettings, row: dict[str, Any]) -> dict[str, Path]:
    """Where a row's two trained adapters are: its scratch arm may live in another run folder."""
    run = Path("targets") / row["target"] / f"seed{row['seed']}"
    scratch_root = Path(row["scratch_recorded_in"]) if row.get("scratch_recorded_in") else s.out
    return {
        "scratch": scratch_root / run / "scratch",
        "mashup": s.out / run / row["variant"] / "mashup",
    }


def _cache_name(kind: str, s: LooSettings, n: int) -> str:
    return f"rescore_{kind}_{s.format}_{n}.json"


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
    key = {"adapter": file_digest(weights), "base": base_weights(s.base), "n": n}
    cache = arm / _cache_name("arm", s, n)
    if cache.is_file():
        record = json.loads(cache.read_text(encoding="utf-8"))
        if all(record.get(k) == v for k, v in key.items()):
            return record["correct"]
    correct, seconds = _score(arm, s, val_file, n)
    _write_json(cache, {**key, "val": str(val_file), "correct": correct, "seconds": seconds})
    return correct


def rescore_base(s: LooSettings, target: str, n: int) -> float:
    """The base model's accuracy on the first ``n`` validation items of ``target``."""
    _, val_file = task_files(target)
    key = {"base": base_weights(s.base), "n": n}
    cache = s.out / "targets" / target / _cache_name("base", s, n)
    if cache.is_file():
        record = json.loads(cache.read_text(encoding="utf-8"))
        if all(record.get(k) == v for k, v in key.items()):
            return record["acc"]
    correct, seconds = _score(s.base, s, val_file, n)
    acc = statistics.fmean(correct)
    _write_json(cache, {**key, "val": str(val_file), "acc": acc, "seconds": seconds})
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

    The row's recorded verdicts then check that the retrained arm is the one the row scored."""
    from mashup.bench.leave_one_out import arm_config
    from mashup.train.trainer import train_model

    train_file, val_file = task_files(row["target"])
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


def rescore_rows(
    s: LooSettings,
    rows: list[dict[str, Any]],
    n: int,
    console: Any = None,
    retrain: bool = False,
) -> tuple[list[dict[str, Any]], float]:
    """``rows`` with both arms scored on the first ``n`` validation items, and the lowest
    agreement of any arm's re-score with its recorded items.

    Runs seed by seed (all targets of seed 0 first), so an interrupted re-scoring leaves whole
    seeds done. Steps to reach scratch and the wall-clock still come from the run's curves,
    which were scored on the run's own items. With ``retrain``, a from-scratch arm whose
    adapter is gone is trained again first (a mashup arm's would need its selection and merge).
    """
    check_items(s, rows, n)
    out, lowest = [], 1.0
    ordered = sorted(rows, key=lambda r: (r["seed"], r["target"], r["variant"]))
    for i, row in enumerate(ordered, 1):
        _, val_file = task_files(row["target"])
        correct = {}
        for arm, where in arm_dirs(s, row).items():
            started = time.perf_counter()
            if retrain and arm == "scratch" and not (where / ADAPTER).is_file():
                retrain_scratch(s, row, where, console)
            correct[arm] = rescore_arm(where, s, val_file, n)
            recorded = row[f"{arm}_correct"]
            agree = agreement(recorded, correct[arm])
            if agree < 1 - MAX_DISAGREEMENT:
                raise MashupError(
                    f"{where}: re-scored, its first {len(recorded)} items agree with the row's "
                    f"recorded verdicts on only {agree:.0%}: the adapter or the scorer changed "
                    "since the row was written",
                    hint="re-run that (target, seed), or leave it out with --targets or --seeds",
                )
            lowest = min(lowest, agree)
            if console is not None:
                console.print(
                    f"[{i}/{len(ordered)}] {row['target']} seed {row['seed']} {row['variant']} "
                    f"{arm}: acc {statistics.fmean(correct[arm]):.3f} on {n} items, recorded "
                    f"items agree {agree:.0%} ({time.perf_counter() - started:.0f} s)"
                )
        base = rescore_base(s, row["target"], n)
        comparison = row["comparison"]
        acc = {"base": base, **{arm: statistics.fmean(c) for arm, c in correct.items()}}
        out.append(
            {
                **row,
                "scratch_correct": correct["scratch"],
                "mashup_correct": correct["mashup"],
                # The recorded interval was over the run's items: the summary recomputes it.
                "comparison": {
                    **{k: v for k, v in comparison.items() if k != "mashup_minus_scratch"},
                    "eval_n": n,
                    "acc": acc,
                },
                "scored_on_run_items": comparison["eval_n"],
            }
        )
    return out, lowest
