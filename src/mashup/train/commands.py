"""CLI of the training stage: `mashup train`, `mashup run` and `mashup zoo build`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mashup.console import print_json, print_table, status_console
from mashup.data.items import check_format
from mashup.errors import MashupError, check_choice
from mashup.options import DEFAULT_ZOO, FormatOption, JsonFlag, ZooDir

Steps = Annotated[int | None, typer.Option("--steps", help="Optimizer steps (default: 1 epoch).")]
Epochs = Annotated[float | None, typer.Option("--epochs", help="Epochs instead of --steps.")]
BatchSize = Annotated[int, typer.Option("--batch-size", help="Examples per device per step.")]
Lr = Annotated[
    float | None, typer.Option("--lr", help="Peak learning rate (default 2e-4 LoRA, 2e-5 full).")
]
GradAccum = Annotated[int, typer.Option("--grad-accum", help="Gradient accumulation steps.")]
Full = Annotated[bool, typer.Option("--full", help="Full fine-tuning instead of LoRA.")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of data order and initialisation.")]
EvalEvery = Annotated[
    int | None, typer.Option("--eval-every", help="Validate every N steps (default: 10 points).")
]
TrainLimit = Annotated[
    int | None, typer.Option("--train-limit", help="Use at most N training items (seeded).")
]
Force = Annotated[bool, typer.Option("--force", help="Replace OUT if it exists.")]
PrecisionOption = Annotated[
    str,
    typer.Option(
        "--precision",
        help="Training arithmetic. auto: bf16 mixed precision on a CUDA GPU with bf16, fp32 "
        "elsewhere; bf16: also on CPUs (faster where the CPU has AVX512-BF16 or AMX); fp32.",
    ),
]


def _quiet_transformers() -> None:
    """transformers' own progress bars and deprecation notes would interleave with ours."""
    import warnings

    from transformers.utils import logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")

    logging.disable_progress_bar()
    logging.set_verbosity_error()


def _base_or_default(base: Path | None) -> Path:
    if base is not None:
        return base
    from mashup.data.assets import smollm2_dir

    return smollm2_dir()


def train(
    out: Annotated[Path, typer.Argument(help="Output directory (adapter or model + curve).")],
    base: Annotated[Path, typer.Option("--base", help="Base model directory.")],
    data: Annotated[Path, typer.Option("--data", help="Training items (JSONL/CSV).")],
    val: Annotated[Path | None, typer.Option("--val", help="Validation items.")] = None,
    init: Annotated[
        Path | None, typer.Option("--init", help="Start from a merged adapter or model.")
    ] = None,
    full: Full = False,
    steps: Steps = None,
    epochs: Epochs = None,
    batch_size: BatchSize = 8,
    grad_accum: GradAccum = 1,
    lr: Lr = None,
    lora_r: Annotated[int, typer.Option("--lora-r", help="LoRA rank.")] = 8,
    lora_alpha: Annotated[float, typer.Option("--lora-alpha", help="LoRA alpha.")] = 16,
    target_modules: Annotated[
        str | None,
        typer.Option(
            "--target-modules",
            help="Comma-separated module names (default: all attention and MLP projections).",
        ),
    ] = None,
    eval_every: EvalEvery = None,
    val_n: Annotated[int, typer.Option("--val-n", help="Validation items to score.")] = 200,
    train_limit: TrainLimit = None,
    max_length: Annotated[int, typer.Option("--max-length", help="Max tokens per example.")] = 256,
    format: FormatOption = "mc",
    precision: PrecisionOption = "auto",
    seed: Seed = 0,
    keep_checkpoints: Annotated[
        bool, typer.Option("--keep-checkpoints", help="Keep Trainer checkpoints in OUT.")
    ] = False,
    force: Force = False,
    as_json: JsonFlag = False,
) -> None:
    """Fine-tune a base model (LoRA by default) on multiple-choice items."""
    from mashup.train.config import DEFAULT_TARGET_MODULES, TrainConfig, check_precision
    from mashup.train.trainer import _rank, train_model

    _quiet_transformers()
    modules = (
        [m.strip() for m in target_modules.split(",") if m.strip()]
        if target_modules
        else list(DEFAULT_TARGET_MODULES)
    )
    try:
        cfg = TrainConfig(
            base=base,
            data=data,
            val=val,
            out=out,
            init=init,
            full=full,
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            grad_accum=grad_accum,
            lr=lr,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            target_modules=modules,
            eval_every=eval_every,
            val_n=val_n,
            train_limit=train_limit,
            max_length=max_length,
            format=check_format(format, "--format"),
            precision=check_precision(precision, "--precision"),
            seed=seed,
            keep_checkpoints=keep_checkpoints,
        )
    except ValueError as exc:
        raise options_error("training", exc) from exc
    console = status_console(as_json)
    result = train_model(cfg, force=force, console=console)
    if _rank() != 0:
        return  # under accelerate launch, one process reports
    if as_json:
        print_json(result.model_dump(mode="json"))
        return
    print_table(
        f"training curve ({result.kind}, {result.steps} steps)",
        ["step", "acc", "acc_norm", "nll", "n", "train s"],
        [
            (
                p.step,
                f"{p.acc:.3f}",
                f"{p.acc_norm:.3f}",
                f"{p.nll:.3f}",
                p.n,
                f"{p.train_seconds:.1f}",
            )
            for p in result.curve
        ],
    )
    console.print(
        f"saved {result.kind} to {result.out} (training {result.train_seconds:.1f} s, "
        f"validation {result.eval_seconds:.1f} s)"
    )


def run(
    out: Annotated[Path, typer.Argument(help="Report directory.")],
    target: Annotated[Path, typer.Option("--target", help="Target training items.")],
    base: Annotated[
        Path | None, typer.Option("--base", help="Base model (default: cached SmolLM2-135M).")
    ] = None,
    val: Annotated[
        Path | None, typer.Option("--val", help="Evaluation items (default: held out).")
    ] = None,
    eval_n: Annotated[int, typer.Option("--eval-n", help="Evaluation items.")] = 200,
    k: Annotated[int, typer.Option("--k", help="Entries to merge.")] = 2,
    metric: Annotated[
        str, typer.Option("--metric", help="acc|nll|embedding|gradient|random.")
    ] = "acc",
    select_n: Annotated[int, typer.Option("--select-n", help="Target items to select on.")] = 256,
    prefilter: Annotated[
        int | None,
        typer.Option("--prefilter", help="LM-score only the top M entries by embedding."),
    ] = None,
    halving: Annotated[
        bool, typer.Option("--halving", help="Select by successive halving (acc / nll).")
    ] = False,
    select_precision: Annotated[
        str,
        typer.Option(
            "--select-precision",
            help="Weights selection scores with (acc / nll): fp32, or bf16, faster where the "
            "hardware multiplies bf16 natively.",
        ),
    ] = "fp32",
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="Zoo entry to leave out.")
    ] = None,
    merge_method: Annotated[
        str,
        typer.Option(
            "--merge-method",
            help="ab_mean|delta|cat|ties|dare_ties|task_arithmetic "
            "(adapters) or ab_mean|ties|task_arithmetic|model_stock (models).",
        ),
    ] = "ab_mean",
    steps: Steps = None,
    epochs: Epochs = None,
    batch_size: BatchSize = 8,
    grad_accum: GradAccum = 1,
    lr: Lr = None,
    eval_every: EvalEvery = None,
    train_limit: TrainLimit = None,
    full: Full = False,
    format: FormatOption = "mc",
    precision: PrecisionOption = "auto",
    seed: Seed = 0,
    seeds: Annotated[
        str | None,
        typer.Option(
            "--seeds",
            help="Train both arms once per seed, e.g. 0,1,2, and compare over seeds and items "
            "(the split, the selection sample and the merge stay --seed's).",
        ),
    ] = None,
    force: Force = False,
    zoo: ZooDir = DEFAULT_ZOO,
    as_json: JsonFlag = False,
) -> None:
    """Select → merge → fine-tune from the merge and from scratch → report."""
    from mashup.select.core import SCORE_PRECISIONS
    from mashup.train.config import check_precision
    from mashup.train.pipeline import RunConfig, run_mashup

    _quiet_transformers()
    try:
        cfg = RunConfig(
            target=target,
            zoo=zoo,
            base=_base_or_default(base),
            out=out,
            val=val,
            eval_n=eval_n,
            k=k,
            metric=metric,
            select_n=select_n,
            prefilter=prefilter,
            halving=halving,
            select_precision=check_choice(select_precision, SCORE_PRECISIONS, "--select-precision"),
            exclude=exclude or [],
            merge_method=merge_method,
            steps=steps,
            epochs=epochs,
            batch_size=batch_size,
            grad_accum=grad_accum,
            lr=lr,
            eval_every=eval_every,
            train_limit=train_limit,
            full=full,
            format=check_format(format, "--format"),
            precision=check_precision(precision, "--precision"),
            seed=seed,
            train_seeds=_seed_list(seeds),
        )
    except ValueError as exc:
        raise options_error("run", exc) from exc
    console = status_console(as_json)
    report = run_mashup(cfg, force=force, console=console)
    if as_json:
        print_json(report)
        return
    print_summary(report, console)


# Config fields whose option is not the field's name with dashes.
OPTION_NAMES = {"train_seeds": "--seeds", "out": "OUT"}


def options_error(kind: str, exc: ValueError) -> MashupError:
    """One line naming each bad option; pydantic's own message spreads over several lines."""
    from pydantic import ValidationError

    if not isinstance(exc, ValidationError):
        return MashupError(f"bad {kind} options: {exc}")
    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        option = OPTION_NAMES.get(field, "--" + field.replace("_", "-"))
        parts.append(f"{option}: {error['msg'].removeprefix('Value error, ')}")
    return MashupError(f"bad {kind} options: " + "; ".join(parts))


def _seed_list(text: str | None) -> list[int]:
    """``--seeds 0,1,2`` as a list; nothing given: an empty list (train once, with --seed)."""
    if text is None:
        return []
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise MashupError(
            f"--seeds {text!r} is not a list of whole numbers", hint="write them as 0,1,2"
        ) from None


def print_summary(report: dict, console) -> None:  # type: ignore[no-untyped-def]
    cmp = report["comparison"]
    acc = cmp["acc"]
    delta = cmp["mashup_minus_scratch"]
    runs = cmp.get("runs")
    print_table(
        f"mashup vs scratch on {Path(report['target']).name} ({cmp['eval_n']} items"
        + (f", mean over {len(runs)} seeds)" if runs else ")"),
        ["model", "accuracy"],
        [(name, "—" if v is None else f"{v:.3f}") for name, v in acc.items()],
    )
    if runs:
        seeds_ci = delta["ci95_seeds_and_items"]
        console.print(
            f"mashup − scratch {delta['diff']:+.3f}, 95% CI over items [{delta['ci95'][0]:+.3f}, "
            f"{delta['ci95'][1]:+.3f}], over seeds and items [{seeds_ci[0]:+.3f}, "
            f"{seeds_ci[1]:+.3f}]: {delta['verdict']}; mashup reaches scratch's final accuracy "
            f"at {cmp['share_of_steps']:.0%} of the steps on average"
        )
    else:
        console.print(
            f"mashup − scratch {delta['diff']:+.3f}, 95% CI [{delta['ci95'][0]:+.3f}, "
            f"{delta['ci95'][1]:+.3f}]: {delta['verdict']}; mashup reaches scratch's final "
            f"accuracy at step {cmp['mashup_step_reaching_scratch_final']} of {cmp['steps']}"
        )
    console.print(f"report: {Path(report['out']) / 'report.html'}")


def zoo_build(
    base: Annotated[
        Path | None, typer.Option("--base", help="Base model (default: cached SmolLM2-135M).")
    ] = None,
    tasks: Annotated[
        str, typer.Option("--tasks", help="Comma-separated benchmark tasks, e.g. piqa,csqa.")
    ] = "arc_easy,piqa",
    runs: Annotated[
        Path | None,
        typer.Option("--runs", help="Where the trained checkpoints go (default ZOO/runs)."),
    ] = None,
    steps: Steps = None,
    epochs: Epochs = None,
    batch_size: BatchSize = 8,
    lr: Lr = None,
    train_limit: TrainLimit = None,
    val_n: Annotated[int, typer.Option("--val-n", help="Validation items per task.")] = 100,
    full: Full = False,
    format: FormatOption = "mc",
    precision: PrecisionOption = "auto",
    seed: Seed = 0,
    zoo: ZooDir = DEFAULT_ZOO,
    as_json: JsonFlag = False,
) -> None:
    """Train one checkpoint per task (LoRA by default) and register each in the zoo."""
    from mashup.data.assets import BENCHMARK_TASKS
    from mashup.train.config import check_precision
    from mashup.train.pipeline import build_zoo

    _quiet_transformers()
    task_list = [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in task_list if t not in BENCHMARK_TASKS]
    if not task_list or unknown:
        raise MashupError(
            f"unknown task {', '.join(unknown) or '(none given)'}",
            hint=f"choose from {', '.join(BENCHMARK_TASKS)}",
        )
    console = status_console(as_json)
    rows = build_zoo(
        _base_or_default(base),
        task_list,
        zoo,
        runs or (zoo / "runs"),
        steps=steps,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        train_limit=train_limit,
        val_n=val_n,
        full=full,
        format=check_format(format, "--format"),
        precision=check_precision(precision, "--precision"),
        seed=seed,
        console=console,
    )
    if as_json:
        print_json(rows)
        return
    print_table(
        f"zoo {zoo}",
        ["task", "entry", "val_acc", "path", "reused"],
        [
            (r["task"], r["name"], f"{r.get('val_acc', 0):.3f}", r["path"], r["reused"])
            for r in rows
        ],
    )
