"""Fine-tuning on multiple-choice items with Hugging Face ``Trainer`` (LoRA or full).

Each item becomes one causal-LM example in the format ``mashup.eval`` scores it with, and the
loss covers the answer tokens only. ``mc``: the prompt (``Question: ...\\nAnswer:``) followed by
the gold choice (``" " + choice``), tokenised exactly as the evaluator splits prompt and
continuation. ``letter`` (the Mashup paper's): the chat prompt listing lettered choices followed
by the gold letter, the token the evaluator reads, and the rest of the assistant turn (the
chat template's end-of-turn tokens), so the model also learns to stop.

Plain transformers train on left-padded rows, with logits at the answer positions only
(:class:`PadCollator`, :func:`answer_loss`): the same loss and gradients as the model's own
loss over right-padded rows (tested), without projecting the prompt onto the vocabulary.

A run works in ``OUT.partial/`` (Trainer checkpoints in safetensors, the validation curve, the
config) and renames it to ``OUT`` when complete, so ``OUT`` is never half-written. Started
again after a kill, it resumes from the last checkpoint; started again after it finished with
the same config, it returns the stored result without training.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mashup.data.items import Format, MCItem, format_choice, format_prompt, load_items
from mashup.errors import MashupError
from mashup.files import share_like_umask
from mashup.hub import check_base
from mashup.train.config import CurvePoint, TrainConfig, TrainResult

RESULT_FILE = "train_result.json"
CONFIG_FILE = "mashup_train_config.json"
CURVE_FILE = "curve.json"
PROGRESS_FILE = "mashup_progress.json"
VAL_SEED = 1234  # every run on the same validation file scores the same items


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


# --- examples ---------------------------------------------------------------------------------


def build_examples(
    items: list[MCItem], tokenizer: Any, model: Any, max_length: int, format: Format = "mc"
) -> list[dict[str, list[int]]]:
    """Prompt + gold answer as input ids; labels are -100 except on the answer tokens."""
    from mashup.eval.scoring import (
        encode_pair,
        letter_answer_ids,
        letter_context_ids,
        prefix_tokens,
    )

    prefix = prefix_tokens(model, tokenizer)
    examples = []
    for item in items:
        if format == "letter":
            context_ids = letter_context_ids(model, tokenizer, item)
            answer_ids = letter_answer_ids(tokenizer, item)
        else:
            context_ids, answer_ids = encode_pair(
                tokenizer, format_prompt(item), format_choice(item.choices[item.answer])
            )
            context_ids = prefix + context_ids
        answer_ids = answer_ids[:max_length]
        keep = max_length - len(answer_ids)
        context_ids = context_ids[-keep:] if keep > 0 else []  # truncate the prompt from the left
        examples.append(
            {
                "input_ids": context_ids + answer_ids,
                "labels": [-100] * len(context_ids) + answer_ids,
            }
        )
    return examples


class PadCollator:
    """Pads a batch; padded positions are masked out of attention and loss.

    ``left=False`` right-pads: every token keeps its position, and the model computes the loss
    over its logits at every position. ``left=True`` (plain transformers, see
    :func:`mashup.eval.scoring.reads_left_padded`) puts every row's answer in the last columns,
    passes each token's position explicitly, and asks the model for logits at those last
    columns only (``logits_to_keep``): the projection onto the vocabulary and its softmax, a
    fifth of a small model's arithmetic, are spent on the answer tokens the loss reads, not on
    the prompt. :func:`answer_loss` then takes the loss over them.
    """

    def __init__(self, pad_id: int, *, left: bool = False) -> None:
        self.pad_id = pad_id
        self.left = left

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(b["input_ids"]) for b in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            span = slice(width - n, width) if self.left else slice(0, n)
            input_ids[i, span] = torch.tensor(b["input_ids"])
            labels[i, span] = torch.tensor(b["labels"])
            attention[i, span] = 1
            if self.left:
                labels[i, width - n] = -100  # a row's first token has nothing to predict it
        collated = {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
        if self.left:
            collated["position_ids"] = (attention.cumsum(-1) - 1).clamp(min=0)
            answer = max(_answer_length(b["labels"]) for b in batch)
            # Position t predicts token t + 1: the answers need the logits of one column more.
            # As indices, not a count: the model then projects a contiguous copy of those
            # columns (one matrix product), not a strided view of them (a slower batched one).
            keep = min(width, answer + 1)
            collated["logits_to_keep"] = torch.arange(width - keep, width)
        return collated


def _answer_length(labels: list[int]) -> int:
    """Tokens from the first trained one to the row's end (the answer: prompt labels come first)."""
    first = next((i for i, label in enumerate(labels) if label != -100), len(labels))
    return len(labels) - first


def answer_loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
    """Cross-entropy of left-padded rows whose logits cover only their last columns.

    ``outputs.logits`` holds the last K columns (``logits_to_keep``), ``labels`` the whole
    rows; column t's logits predict the label of column t + 1. Summed over the answer tokens
    and divided by ``num_items_in_batch`` (the Trainer's count of trained tokens over the whole
    accumulated batch) so gradient accumulation weighs every token alike, as the models' own
    causal-LM loss does; by this batch's count when the Trainer gives none.
    """
    import torch

    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    keep = logits.shape[1]
    targets = labels[:, labels.shape[1] - keep + 1 :].to(logits.device)
    total = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    if num_items_in_batch is None:
        num_items_in_batch = targets.ne(-100).sum().clamp(min=1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


# --- model ------------------------------------------------------------------------------------


def _load_tokenizer(*candidates: Path) -> Any:
    from transformers import AutoTokenizer

    for candidate in candidates:
        if (candidate / "tokenizer_config.json").is_file() or (
            candidate / "tokenizer.json"
        ).is_file():
            tokenizer = AutoTokenizer.from_pretrained(str(candidate))
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token = tokenizer.eos_token
            return tokenizer
    raise MashupError(
        f"no tokenizer in {' or '.join(str(c) for c in candidates)}",
        hint="save the tokenizer next to the base model (tokenizer.save_pretrained(dir))",
    )


def _load_causal_lm(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    if not (path / "config.json").is_file():
        raise MashupError(
            f"{path}: not a Hugging Face model folder (config.json missing)",
            hint="give the base model directory with --base",
        )
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype="float32")
    except (OSError, ValueError) as exc:
        raise MashupError(f"{path}: cannot load the model ({exc})") from exc


def load_for_training(cfg: TrainConfig) -> tuple[Any, Any, str]:
    """``(model, tokenizer, kind)``: the trainable model and what will be saved."""
    from peft import LoraConfig, PeftModel, get_peft_model

    base = cfg.base.resolve()
    init = cfg.init.resolve() if cfg.init is not None else None
    if init is not None and not init.exists():
        raise MashupError(f"{init}: --init directory does not exist")
    init_is_adapter = init is not None and (init / "adapter_config.json").is_file()
    if init is not None and not init_is_adapter and not (init / "config.json").is_file():
        raise MashupError(
            f"{init}: neither a model folder nor a PEFT adapter folder",
            hint="--init takes a merged model (config.json) or adapter (adapter_config.json)",
        )
    if init is not None and not init_is_adapter:
        model = _load_causal_lm(init)  # a merged full model replaces the base weights
        tokenizer = _load_tokenizer(init, base)
    else:
        model = _load_causal_lm(base)
        tokenizer = _load_tokenizer(base)
    if init_is_adapter:
        try:
            model = PeftModel.from_pretrained(model, str(init), is_trainable=not cfg.full)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise MashupError(
                f"{init}: the adapter does not fit the base model {base} ({str(exc)[:200]})",
                hint="merge adapters trained on this base, or pass the matching --base",
            ) from exc
        if cfg.full:
            model = model.merge_and_unload()
    if cfg.full:
        return model, tokenizer, "model"
    if not init_is_adapter:
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [m for m in cfg.target_modules if m not in present]
        if missing:
            raise MashupError(
                f"{base}: the model has no module named {', '.join(missing)}",
                hint="set --target-modules to projections the architecture has",
            )
        lora = LoraConfig(
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    return model, tokenizer, "adapter"


# --- callbacks --------------------------------------------------------------------------------


def _callbacks() -> tuple[type, type]:
    """Built lazily: ``TrainerCallback`` lives in transformers, which the CLI imports late."""
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        """A rich progress bar with the latest loss and the estimated time left."""

        def __init__(self, console: Any, label: str) -> None:
            self.console, self.label = console, label
            self.progress: Any = None
            self.task: Any = None
            self.loss: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            if not state.is_world_process_zero or self.console is None:
                return
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                self.label, total=state.max_steps, completed=state.global_step, loss="-"
            )

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.loss = float(logs["loss"])
            if self.progress is not None and self.loss is not None:
                self.progress.update(self.task, loss=f"{self.loss:.4f}")

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(self.task, completed=state.global_step)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

    class EvalCurve(TrainerCallback):
        """Scores the validation items every ``eval_every`` steps (rank 0) and keeps the curve.

        Times are measured around evaluation so ``train_seconds`` counts optimizer work only.
        """

        def __init__(self, run: _Run) -> None:
            self.run = run

        def _maybe_eval(self, state, model, force: bool = False) -> None:
            run = self.run
            if not state.is_world_process_zero or not run.val_items:
                return
            step = state.global_step
            if any(p.step == step for p in run.curve):
                return
            if step == 0 and not run.at_start:
                return
            if not force and (step % run.eval_every) != 0:
                return
            run.evaluate(model, step)

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            self.run.mark_start(state.global_step)
            self._maybe_eval(state, model, force=state.global_step == 0 and self.run.at_start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.run.last_loss = float(logs["loss"])

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self._maybe_eval(state, model)

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if checkpoint.is_dir():
                    _write_json(checkpoint / PROGRESS_FILE, self.run.progress_record())

        def on_train_end(self, args, state, control, model=None, **kwargs):
            self._maybe_eval(state, model, force=True)
            self.run.mark_end()

    return RichProgress, EvalCurve


class _Run:
    """Bookkeeping shared by the callbacks: the curve and the time split."""

    def __init__(
        self,
        work: Path,
        val_items: list[MCItem],
        tokenizer: Any,
        eval_every: int,
        eval_batch_size: int,
        console: Any,
        format: Format = "mc",
    ) -> None:
        self.work = work
        self.format = format
        self.val_items = val_items
        self.tokenizer = tokenizer
        self.eval_every = eval_every
        self.eval_batch_size = eval_batch_size
        self.console = console
        self.curve: list[CurvePoint] = []
        self.train_offset = 0.0
        self.eval_offset = 0.0
        self.eval_seconds = 0.0
        self.started: float | None = None
        self.train_seconds = 0.0
        self.last_loss: float | None = None
        self.last_correct: list[bool] = []
        self.at_start = True

    def mark_start(self, step: int) -> None:
        self.started = time.perf_counter()

    def elapsed_train(self) -> float:
        if self.started is None:
            return self.train_offset
        return self.train_offset + (time.perf_counter() - self.started) - self.eval_seconds

    def mark_end(self) -> None:
        self.train_seconds = self.elapsed_train()

    def progress_record(self) -> dict[str, float]:
        return {
            "train_seconds": self.elapsed_train(),
            "eval_seconds": self.eval_offset + self.eval_seconds,
        }

    def evaluate(self, model: Any, step: int) -> None:
        from mashup.eval import evaluate_items

        train_seconds = self.elapsed_train()  # before evaluating: eval time is not training
        started = time.perf_counter()
        with _without_autocast(model):
            result = evaluate_items(
                model,
                self.tokenizer,
                self.val_items,
                format=self.format,
                batch_size=self.eval_batch_size,
            )
        point = CurvePoint(
            step=step,
            acc=result.acc,
            acc_norm=result.acc_norm,
            nll=result.nll,
            n=result.n,
            train_seconds=round(train_seconds, 3),
            loss=self.last_loss,
        )
        self.eval_seconds += time.perf_counter() - started
        self.curve.append(point)
        self.last_correct = [s.correct for s in result.per_item]
        _write_json(
            self.work / CURVE_FILE,
            {
                "points": [p.model_dump() for p in self.curve],
                "last_correct": self.last_correct,
            },
        )
        if self.console is not None:
            self.console.print(
                f"  step {step}: val acc {result.acc:.3f} (n={result.n}), "
                f"acc_norm {result.acc_norm:.3f}"
            )


@contextlib.contextmanager
def _without_autocast(model: Any) -> Iterator[None]:
    """Score in the model's own precision, as ``mashup eval`` does on the saved output.

    For mixed precision, accelerate replaces the model's ``forward`` with one that runs under
    autocast and keeps the original as ``_original_forward``; validation would otherwise score
    in bf16 too.
    """
    original = model.__dict__.get("_original_forward")
    patched = model.__dict__.get("forward")
    if original is None or patched is None:
        yield
        return
    model.forward = original
    try:
        yield
    finally:
        model.forward = patched


# --- the run ----------------------------------------------------------------------------------


def _stored_result(out: Path, cfg: TrainConfig) -> TrainResult | None:
    """The finished result in ``out`` if it was trained with the same config."""
    result_file = out / RESULT_FILE
    if not result_file.is_file():
        return None
    try:
        result = TrainResult.model_validate_json(result_file.read_text(encoding="utf-8"))
    except ValueError:
        return None
    return result if result.config == cfg.fingerprint() else None


def _check_inputs(cfg: TrainConfig) -> tuple[list[MCItem], list[MCItem]]:
    check_base(cfg.base)
    train_items = load_items(cfg.data, limit=cfg.train_limit, seed=cfg.seed)
    val_items = load_items(cfg.val, limit=cfg.val_n, seed=VAL_SEED) if cfg.val else []
    return train_items, val_items


def train_model(
    cfg: TrainConfig,
    *,
    force: bool = False,
    console: Any = None,
    label: str = "train",
    callbacks: list[Any] | None = None,
) -> TrainResult:
    """Train as ``cfg`` says; returns (and writes to ``cfg.out``) the :class:`TrainResult`.

    ``console`` (a rich Console) shows a progress bar and the validation curve; None is quiet.
    ``callbacks`` are extra ``TrainerCallback`` objects.
    """
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from transformers.trainer_utils import get_last_checkpoint

    from mashup.devices import bf16_training, cpu_has_bf16, model_device
    from mashup.eval.scoring import reads_left_padded
    from mashup.hub import stay_offline

    stay_offline()
    out = cfg.out.expanduser().absolute()
    cfg = cfg.model_copy(update={"out": out})
    stored = _stored_result(out, cfg)
    if stored is not None and not force:
        if console is not None:
            console.print(f"{out}: already trained with this config, reusing it")
        return stored
    if out.exists() and not force:
        raise MashupError(
            f"{out}: already exists (trained with other settings, or not a training output)",
            hint="choose another OUT, or pass --force to replace it",
        )
    train_items, val_items = _check_inputs(cfg)
    started_wall = time.perf_counter()
    rank = _rank()
    if rank != 0:
        console = None

    work = work_dir(out)
    config_file = work / CONFIG_FILE
    if work.exists():
        previous = json.loads(config_file.read_text()) if config_file.is_file() else None
        if previous != cfg.fingerprint() and rank == 0:
            shutil.rmtree(work)  # a partial run of other settings cannot be resumed
    model, tokenizer, kind = load_for_training(cfg)
    examples = build_examples(train_items, tokenizer, model, cfg.max_length, cfg.format)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    per_step = cfg.batch_size * cfg.grad_accum * world
    if cfg.steps is not None:
        total_steps = cfg.steps
    else:
        total_steps = max(1, math.ceil(len(examples) / per_step * (cfg.epochs or 1.0)))
    eval_every = cfg.eval_every or max(1, total_steps // 10)
    save_every = cfg.save_every or min(eval_every, max(1, total_steps // 10))

    if rank == 0:
        work.mkdir(parents=True, exist_ok=True)
        _write_json(config_file, cfg.fingerprint())
    checkpoints = work / "checkpoints"
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None

    run = _Run(work, val_items, tokenizer, eval_every, cfg.eval_batch_size, console, cfg.format)
    run.at_start = cfg.eval_at_start
    resumed_from = None
    if last is not None:
        resumed_from = int(Path(last).name.split("-")[-1])
        progress_file = Path(last) / PROGRESS_FILE
        if progress_file.is_file():
            record = json.loads(progress_file.read_text())
            run.train_offset = float(record.get("train_seconds", 0.0))
            run.eval_offset = float(record.get("eval_seconds", 0.0))
        curve_file = work / CURVE_FILE
        if curve_file.is_file():
            stored_curve = json.loads(curve_file.read_text())
            run.curve = [
                CurvePoint.model_validate(p)
                for p in stored_curve["points"]
                if p["step"] <= resumed_from
            ]
            if run.curve and len(run.curve) == len(stored_curve["points"]):
                run.last_correct = list(stored_curve.get("last_correct", []))
        if console is not None:
            console.print(f"resuming from {last}")

    device = model_device()
    bf16 = bf16_training(device, cfg.precision)
    if bf16 and device.type == "cpu" and not cpu_has_bf16() and console is not None:
        console.print(
            "[yellow]note:[/] this CPU has no bf16 instructions (AVX512-BF16, AMX): "
            "bf16 training is slower here than --precision fp32"
        )
    args = TrainingArguments(
        output_dir=str(checkpoints),
        max_steps=total_steps,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_ratio,  # a float below 1 is a share of the total steps
        weight_decay=cfg.weight_decay,
        optim="adamw_torch",
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=save_every,
        save_total_limit=cfg.save_total_limit,
        report_to="none",
        disable_tqdm=True,
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        # Without an accelerator, several launched processes train data-parallel on CPU (gloo).
        use_cpu=device.type == "cpu",
        bf16=bf16,
    )
    rich_progress, eval_curve = _callbacks()
    left = reads_left_padded(model)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=examples,
        data_collator=PadCollator(tokenizer.pad_token_id, left=left),
        compute_loss_func=answer_loss if left else None,
        callbacks=[eval_curve(run), rich_progress(console, label), *(callbacks or [])],
    )
    for noisy in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(noisy)
    try:
        trainer.train(resume_from_checkpoint=last)
    except KeyboardInterrupt:
        raise MashupError(
            f"training interrupted; checkpoints are in {checkpoints}",
            hint="run the same command again to resume",
        ) from None

    result = TrainResult(
        out=out,
        kind=kind,
        config=cfg.fingerprint(),
        steps=trainer.state.global_step,
        train_seconds=round(run.train_seconds, 3),
        eval_seconds=round(run.eval_offset + run.eval_seconds, 3),
        wall_seconds=round(time.perf_counter() - started_wall, 3),
        final_loss=run.last_loss,
        curve=run.curve,
        final_correct=run.last_correct,
        resumed_from=resumed_from,
        world_size=world,
    )
    if trainer.is_world_process_zero():
        unwrapped = trainer.model
        unwrapped.save_pretrained(str(work))
        tokenizer.save_pretrained(str(work))
        if not cfg.keep_checkpoints:
            shutil.rmtree(checkpoints, ignore_errors=True)
        _write_json(work / RESULT_FILE, result.model_dump(mode="json"))
        _replace_dir(work, out)
    trainer.accelerator.wait_for_everyone()
    return result


def _replace_dir(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``; an old ``dest`` is removed only after the new one is in place."""
    share_like_umask(src)
    if dest.exists():
        old = dest.with_name(dest.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)


def load_result(out: Path) -> TrainResult:
    result_file = Path(out) / RESULT_FILE
    if not result_file.is_file():
        raise MashupError(f"{out}: no {RESULT_FILE} (not a finished training run)")
    return TrainResult.model_validate_json(result_file.read_text(encoding="utf-8"))
