"""The Mashup pipeline: select → merge → fine-tune from the merge and from scratch → report.

``run_mashup`` works in ``OUT.partial/`` (the data split, the merge, both training runs, or
both per seed with ``train_seeds``, each resumable) and renames it to ``OUT`` once the report
is written, so a killed run continues where it stopped and ``OUT`` is never half-written.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mashup.data.items import Format, MCItem, load_items, write_items
from mashup.errors import MashupError
from mashup.hub import check_base
from mashup.select.core import ScorePrecision
from mashup.train.config import CurvePoint, Precision, TrainConfig, TrainResult
from mashup.train.report import compare_runs, compare_seeds, write_report
from mashup.train.trainer import _replace_dir, train_model

# How each --merge-method maps onto a merge config for PEFT adapters of one base.
ADAPTER_MERGES = ("ab_mean", "delta", "cat", "ties", "dare_ties", "task_arithmetic")
MODEL_MERGES = ("ab_mean", "linear", "ties", "task_arithmetic", "model_stock")


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    target: Path
    zoo: Path
    base: Path
    out: Path
    val: Path | None = None
    eval_n: int = Field(default=200, ge=1)
    k: int = Field(default=2, ge=1)
    metric: str = "acc"
    select_n: int = Field(default=256, ge=1)
    prefilter: int | None = Field(default=None, ge=1)
    halving: bool = False
    select_precision: ScorePrecision = "fp32"  # the weights selection scores with
    exclude: list[str] = Field(default_factory=list)
    merge_method: str = "ab_mean"
    steps: int | None = Field(default=None, ge=1)
    epochs: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float | None = Field(default=None, gt=0)
    eval_every: int | None = Field(default=None, ge=1)
    train_limit: int | None = Field(default=None, ge=1)
    max_length: int = Field(default=256, ge=8)
    full: bool = False
    format: Format = "mc"  # how every stage reads the items (mashup.data.items.Format)
    precision: Precision = "auto"  # training arithmetic (mashup.train.config.Precision)
    seed: int = 0
    # Train both arms once per seed (the split, the selection sample and the merge stay those of
    # ``seed``); empty: once, with ``seed``.
    train_seeds: list[int] = Field(default_factory=list)

    @field_validator("train_seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
            raise ValueError(f"training seeds must be distinct and not negative, not {seeds}")
        return seeds


def merge_config_for(
    method: str, paths: list[Path], kind: str, base: Path, rank: int | None, seed: int
) -> dict[str, Any]:
    """The mergekit-style config for merging ``paths`` with equal weights."""
    k = len(paths)
    equal = [{"model": str(p), "parameters": {"weight": 1.0 / k}} for p in paths]
    sparse = [{"model": str(p), "parameters": {"weight": 1.0, "density": 0.5}} for p in paths]
    if kind == "adapter":
        if method not in ADAPTER_MERGES:
            raise MashupError(
                f"merge method {method!r} is not available for LoRA adapters",
                hint=f"choose from {', '.join(ADAPTER_MERGES)}",
            )
        if method == "ab_mean":
            return {"merge_method": "linear", "models": equal, "lora_mode": "ab_mean"}
        if method == "cat":
            return {"merge_method": "linear", "models": equal, "lora_mode": "cat"}
        if method == "delta":
            return {"merge_method": "linear", "models": equal, "lora_mode": "delta", "rank": rank}
        if method == "task_arithmetic":
            return {
                "merge_method": "task_arithmetic",
                "models": equal,
                "lora_mode": "delta",
                "rank": rank,
            }
        return {
            "merge_method": method,
            "models": sparse,
            "lora_mode": "delta",
            "rank": rank,
            "random_seed": seed,
        }
    if method not in MODEL_MERGES:
        raise MashupError(
            f"merge method {method!r} is not available for full models",
            hint=f"choose from {', '.join(MODEL_MERGES)}",
        )
    if method in ("ab_mean", "linear"):
        return {"merge_method": "linear", "models": equal}
    if method == "model_stock":
        return {"merge_method": "model_stock", "base_model": str(base), "models": equal}
    models = equal if method == "task_arithmetic" else sparse
    return {"merge_method": method, "base_model": str(base), "models": models}


def merge_selected(
    names: list[str], zoo_dir: Path, base: Path, method: str, out: Path, seed: int = 0
) -> tuple[Path, float, dict[str, Any] | None]:
    """Merge the selected entries into ``out``; ``(init path, seconds, config)``.

    One selected entry needs no merge: training starts from it directly. An existing ``out``
    (a finished merge, written atomically) is reused.
    """
    from mashup.merge import MergeConfig, merge
    from mashup.zoo import Zoo

    zoo = Zoo.open(zoo_dir, create=False)
    entries = [zoo.get(n) for n in names]
    if len(entries) == 1:
        return entries[0].path, 0.0, None
    kinds = {e.kind for e in entries}
    if len(kinds) != 1:
        raise MashupError(
            f"selected entries mix {' and '.join(sorted(kinds))}s, which cannot be merged",
            hint="keep one kind of entry in the zoo, or --exclude the odd ones",
        )
    kind = kinds.pop()
    rank = None
    if kind == "adapter":
        rank = int((entries[0].fingerprint.adapter or {}).get("r") or 8)
    config = merge_config_for(method, [e.path for e in entries], kind, base, rank, seed)
    record = out.with_name(out.name + ".json")
    if out.exists() and record.is_file():
        stored = json.loads(record.read_text())
        if stored.get("config") == config:
            return out, float(stored["seconds"]), config
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    merge(MergeConfig.from_dict(config), out, zoo=zoo_dir, progress=False)
    seconds = round(time.perf_counter() - started, 3)
    record.write_text(json.dumps({"config": config, "seconds": seconds}))
    return out, seconds, config


def evaluate_base(
    base: Path, val_file: Path, n: int, cache: Path, format: Format = "mc"
) -> dict[str, Any]:
    """Accuracy of the untouched base on the validation items (cached in ``cache``)."""
    from mashup.eval import evaluate_items, load_model
    from mashup.train.trainer import VAL_SEED

    if cache.is_file():
        return json.loads(cache.read_text())
    items = load_items(val_file, limit=n, seed=VAL_SEED)
    model, tokenizer = load_model(base)
    started = time.perf_counter()
    result = evaluate_items(model, tokenizer, items, format=format, batch_size=16)
    record = {**result.summary(), "seconds": round(time.perf_counter() - started, 3)}
    cache.write_text(json.dumps(record))
    return record


def split_target(
    target: Path, val: Path | None, eval_n: int, seed: int
) -> tuple[list[MCItem], list[MCItem]]:
    """Training and validation items: ``val`` if given, else ``eval_n`` held-out target items."""
    items = load_items(target, seed=seed)
    if val is not None:
        return items, load_items(val)
    if len(items) < eval_n + 8:
        raise MashupError(
            f"{target}: {len(items)} items are too few to hold out {eval_n} for evaluation",
            hint="pass --val FILE, or a smaller --eval-n",
        )
    return items[eval_n:], items[:eval_n]


def train_config(
    cfg: RunConfig, data: Path, val: Path, out: Path, init: Path | None, seed: int | None = None
) -> TrainConfig:
    return TrainConfig(
        base=cfg.base,
        data=data,
        val=val,
        out=out,
        init=init,
        full=cfg.full,
        steps=cfg.steps,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        grad_accum=cfg.grad_accum,
        lr=cfg.lr,
        eval_every=cfg.eval_every,
        train_limit=cfg.train_limit,
        max_length=cfg.max_length,
        format=cfg.format,
        precision=cfg.precision,
        val_n=cfg.eval_n,
        seed=cfg.seed if seed is None else seed,
    )


def run_mashup(cfg: RunConfig, *, force: bool = False, console: Any = None) -> dict[str, Any]:
    """Select, merge, train both arms, compare; returns the report (also written to OUT)."""
    from mashup.hub import stay_offline
    from mashup.select.core import select_entries

    stay_offline()
    wall_start = time.perf_counter()
    out = cfg.out.expanduser().absolute()
    if out.exists() and not force:
        raise MashupError(f"{out}: already exists", hint="choose another OUT or pass --force")
    check_base(cfg.base)
    # Everything that can be wrong with the input is checked before anything is written.
    if cfg.merge_method not in (*ADAPTER_MERGES, *MODEL_MERGES):
        raise MashupError(
            f"merge method {cfg.merge_method!r} is not available",
            hint=f"choose from {', '.join(sorted({*ADAPTER_MERGES, *MODEL_MERGES}))}",
        )
    train_items, val_items = split_target(cfg.target, cfg.val, cfg.eval_n, cfg.seed)
    say = console.print if console is not None else (lambda *a, **k: None)
    say(f"[bold]1/4 select[/] {cfg.k} of the zoo's entries by {cfg.metric}")
    selection = select_entries(
        cfg.target,
        cfg.zoo,
        cfg.base,
        k=cfg.k,
        metric=cfg.metric,
        exclude=cfg.exclude,
        n=cfg.select_n,
        seed=cfg.seed,
        items=train_items,
        prefilter=cfg.prefilter,
        halving=cfg.halving,
        format=cfg.format,
        precision=cfg.select_precision,
        console=console,
    )
    say(f"selected {', '.join(selection.selected)} ({selection.seconds:.1f} s)")
    if selection.margin is not None:
        say(selection.margin.describe(), markup=False)

    work = out.with_name(out.name + ".partial")
    work.mkdir(parents=True, exist_ok=True)
    data_file, val_file = work / "train.jsonl", work / "val.jsonl"
    write_items(train_items, data_file)
    write_items(val_items, val_file)

    say(f"[bold]2/4 merge[/] {' + '.join(selection.selected)} ({cfg.merge_method})")
    init, merge_seconds, merge_cfg = merge_selected(
        selection.selected,
        cfg.zoo,
        cfg.base.resolve(),
        cfg.merge_method,
        work / "merged",
        cfg.seed,
    )
    say(f"[bold]3/4 evaluate[/] the base on {min(cfg.eval_n, len(val_items))} items")
    base_eval = evaluate_base(cfg.base, val_file, cfg.eval_n, work / "base_eval.json", cfg.format)
    seeds = cfg.train_seeds or [cfg.seed]
    say(
        "[bold]4/4 train[/] from scratch and from the merge"
        + (f", once per seed ({', '.join(map(str, seeds))})" if len(seeds) > 1 else "")
    )
    arms = []
    for seed in seeds:
        # One seed keeps the flat layout; several get a folder each (OUT/seed<N>/scratch, ...).
        where = work if len(seeds) == 1 else work / f"seed{seed}"
        suffix = "" if len(seeds) == 1 else f" seed {seed}"
        scratch = train_model(
            train_config(cfg, data_file, val_file, where / "scratch", None, seed),
            console=console,
            label="scratch" + suffix,
        )
        mashup = train_model(
            train_config(cfg, data_file, val_file, where / "mashup", init, seed),
            console=console,
            label="mashup" + suffix,
        )
        arms.append((seed, scratch, mashup))
    report = build_report(cfg, selection, merge_cfg, merge_seconds, base_eval, arms)
    report["wall_seconds"] = round(time.perf_counter() - wall_start, 3)
    write_report(report, arm_curves(arms), work)
    _replace_dir(work, out)
    report["out"] = str(out)
    return report


def arm_curves(arms: list[tuple[int, TrainResult, TrainResult]]) -> dict[str, list[CurvePoint]]:
    """Each arm's learning curve by label: "scratch", "mashup", or with several seeds
    "scratch seed 0", "mashup seed 0", ..."""
    several = len(arms) > 1
    return {
        f"{arm}{f' seed {seed}' if several else ''}": result.curve
        for seed, scratch, mashup in arms
        for arm, result in (("scratch", scratch), ("mashup", mashup))
    }


def build_report(
    cfg: RunConfig,
    selection: Any,
    merge_cfg: dict[str, Any] | None,
    merge_seconds: float,
    base_eval: dict[str, Any],
    arms: list[tuple[int, TrainResult, TrainResult]],
) -> dict[str, Any]:
    """The report of one training seed (``arms`` of one) or of several, each with its curves."""
    overhead = {
        "base_acc": base_eval["acc"],
        "selection_seconds": selection.seconds,
        "merge_seconds": merge_seconds,
    }
    (_, scratch, mashup), several = arms[0], len(arms) > 1
    comparison = (
        compare_seeds(arms, **overhead) if several else compare_runs(scratch, mashup, **overhead)
    )
    return {
        "target": str(cfg.target),
        "base": str(cfg.base),
        "zoo": str(cfg.zoo),
        "merge_method": cfg.merge_method,
        "merge_config": merge_cfg,
        "lr": scratch.config["learning_rate"],
        "batch_size": cfg.batch_size,
        "format": cfg.format,
        "seed": cfg.seed,
        "selection": selection.to_dict(),
        "comparison": comparison,
        "curves": {
            label: [p.model_dump() for p in curve] for label, curve in arm_curves(arms).items()
        },
        "config": cfg.model_dump(mode="json"),
    }


def build_zoo(
    base: Path,
    tasks: list[str],
    zoo_dir: Path,
    runs_dir: Path,
    *,
    steps: int | None = None,
    epochs: float | None = None,
    batch_size: int = 8,
    lr: float | None = None,
    train_limit: int | None = None,
    val_n: int = 100,
    full: bool = False,
    format: Format = "mc",
    precision: Precision = "auto",
    seed: int = 0,
    cache_dir: Path | None = None,
    console: Any = None,
) -> list[dict[str, Any]]:
    """Train one checkpoint per benchmark task and register it in the zoo.

    Runs already in the zoo (same path) are skipped; finished training runs are reused.
    Each entry records the ``format`` it was trained in (``meta.format``).
    """
    from mashup.data.assets import ensure_benchmark
    from mashup.zoo import Zoo

    check_base(base)
    paths = {
        t: (ensure_benchmark(t, "train", cache_dir), ensure_benchmark(t, "val", cache_dir))
        for t in tasks
    }
    zoo = Zoo.open(zoo_dir)
    registered = {str(e.path): e for e in zoo.list()}
    rows = []
    for task in tasks:
        train_file, val_file = paths[task]
        out = (runs_dir / task).absolute()
        if str(out.resolve()) in registered:
            entry = registered[str(out.resolve())]
            rows.append(
                {
                    "task": task,
                    "name": entry.name,
                    "path": str(out),
                    "reused": True,
                    **entry.metrics,
                }
            )
            continue
        if console is not None:
            console.print(f"[bold]zoo[/] training {task}")
        result = train_model(
            TrainConfig(
                base=base,
                data=train_file,
                val=val_file,
                out=out,
                full=full,
                steps=steps,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                train_limit=train_limit,
                val_n=val_n,
                eval_every=10**9,  # the zoo needs the final accuracy only
                eval_at_start=False,
                format=format,
                precision=precision,
                seed=seed,
            ),
            console=console,
            label=task,
        )
        metrics = {"val_acc": result.final_acc or 0.0, "steps": float(result.steps)}
        entry = zoo.add(
            out,
            task=task,
            dataset=str(train_file),
            metrics=metrics,
            name=task if task not in zoo else None,
            extra={"format": format},
        )
        rows.append(
            {"task": task, "name": entry.name, "path": str(out), "reused": False, **metrics}
        )
    return rows
