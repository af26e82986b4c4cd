"""Training configuration and result records (pydantic, so they round-trip through JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mashup.data.items import Format
from mashup.errors import MashupError, check_choice

# The paper's LoRA: every attention and MLP projection of a decoder layer.
DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
)

# auto: bf16 mixed precision on a CUDA GPU that has bf16, fp32 elsewhere; bf16 asks for it on
# any device (on a CPU with bf16 instructions, AVX512-BF16 or AMX, it is faster); fp32 never.
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


def check_precision(precision: str, name: str = "precision") -> Precision:
    """``precision`` if it is a known one, else one clear error naming ``name`` (the option)."""
    return check_choice(precision, PRECISIONS, name)  # type: ignore[return-value]


class TrainConfig(BaseModel):
    """Everything that decides what a training run computes.

    Two runs with equal configs (``fingerprint``) produce the same model, which is what lets a
    finished run be reused and a killed one be resumed.
    """

    model_config = ConfigDict(extra="forbid")

    base: Path
    data: Path
    out: Path
    val: Path | None = None
    init: Path | None = None
    full: bool = False
    steps: int | None = Field(default=None, ge=1)
    epochs: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=8, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float | None = Field(default=None, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    lora_r: int = Field(default=8, ge=1)
    lora_alpha: float = Field(default=16, gt=0)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    max_length: int = Field(default=256, ge=8)
    # mc: prompt + gold choice text, scored by log-likelihood (lm-eval); letter: the paper's
    # chat prompt listing lettered choices, trained and scored on the gold letter.
    format: Format = "mc"
    precision: Precision = "auto"
    train_limit: int | None = Field(default=None, ge=1)
    val_n: int = Field(default=200, ge=1)
    eval_every: int | None = Field(default=None, ge=1)
    eval_batch_size: int = Field(default=16, ge=1)
    eval_at_start: bool = True
    save_every: int | None = Field(default=None, ge=1)
    save_total_limit: int = Field(default=2, ge=1)
    keep_checkpoints: bool = False
    seed: int = 0
    logging_steps: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _one_budget(self) -> TrainConfig:
        if self.steps is not None and self.epochs is not None:
            raise MashupError("give either --steps or --epochs, not both")
        return self

    @property
    def learning_rate(self) -> float:
        """The paper's LoRA runs use 2e-4; full fine-tuning of a small model needs far less."""
        if self.lr is not None:
            return self.lr
        return 2e-5 if self.full else 2e-4

    def fingerprint(self) -> dict[str, Any]:
        """The fields that change the trained weights (not where the output goes)."""
        data = self.model_dump(mode="json", exclude={"out", "keep_checkpoints"})
        if data["format"] == "mc":
            del data["format"]  # runs trained before formats existed keep their fingerprint
        if data["precision"] == "auto":
            del data["precision"]  # likewise for runs trained before precision was a choice
        data["learning_rate"] = self.learning_rate
        return data


class CurvePoint(BaseModel):
    """Validation accuracy at one optimizer step; ``train_seconds`` excludes evaluation time."""

    step: int
    acc: float
    acc_norm: float
    nll: float
    n: int
    train_seconds: float
    loss: float | None = None


class TrainResult(BaseModel):
    """What ``train_model`` returns and writes to ``OUT/train_result.json``."""

    out: Path
    kind: str  # "adapter" | "model"
    config: dict[str, Any]
    steps: int
    train_seconds: float  # optimizer steps only, evaluation excluded
    eval_seconds: float
    wall_seconds: float
    final_loss: float | None
    curve: list[CurvePoint]
    final_correct: list[bool] = Field(default_factory=list)  # per validation item, last eval
    resumed_from: int | None = None
    world_size: int = 1  # processes that trained together (accelerate launch / torchrun)

    @property
    def final_acc(self) -> float | None:
        return self.curve[-1].acc if self.curve else None
