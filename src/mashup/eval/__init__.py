"""Evaluation: lm-eval style multiple-choice scoring (acc, acc_norm) and letter-answer accuracy.

The names are loaded on first use, so importing the CLI does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mashup.eval.scoring import (
        EvalResult,
        ItemScore,
        evaluate_items,
        load_model,
        score_choices,
        wilson_interval,
    )

__all__ = [
    "EvalResult",
    "ItemScore",
    "evaluate_items",
    "load_model",
    "score_choices",
    "wilson_interval",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from mashup.eval import scoring

        return getattr(scoring, name)
    raise AttributeError(f"module 'mashup.eval' has no attribute {name!r}")
