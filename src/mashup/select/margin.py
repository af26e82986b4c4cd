"""How clearly a selection separates its last pick from the best entry it left out.

Candidates are scored on a few hundred items, and two entries a few items apart are not told
apart by the sample: another sample of the same target could swap them. The margin is the score
difference between the k-th selected entry and the (k+1)-th on the items both read, with a
paired percentile bootstrap over those items (the same items are resampled for both entries).
An interval that includes zero means the sample cannot tell the two apart.

Per-item values are (numerator, weight) pairs whose ratio of sums is the score: (correct, 1) for
``acc``, (gold answer NLL, gold tokens) for ``nll``, which is token-weighted like the score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

ItemValues = list[tuple[float, float]]
LOWER_IS_BETTER = {"nll"}


def item_values(per_item: list[Any], metric: str) -> ItemValues:
    """(numerator, weight) per scored item (``ItemScore``), for ``acc`` or ``nll``."""
    if metric == "acc":
        return [(float(s.correct), 1.0) for s in per_item]
    if metric == "nll":
        return [(-float(s.loglikelihoods[s.answer]), float(s.gold_tokens)) for s in per_item]
    raise ValueError(f"no per-item values for metric {metric!r}")


def score_of(values: ItemValues) -> float:
    """The metric's value over ``values``: ratio of the summed numerators and weights."""
    return sum(v for v, _ in values) / max(sum(w for _, w in values), 1.0)


@dataclass(frozen=True)
class Margin:
    """The last selected entry against the best one left out, on their shared ``items``.

    ``diff``, ``low`` and ``high`` are oriented so that positive favours the selected entry (for
    ``nll`` they are the runner-up's NLL minus the selected one's).
    """

    metric: str
    selected: str
    runner_up: str
    diff: float
    low: float
    high: float
    items: int

    @property
    def separated(self) -> bool:
        """The sample tells them apart: the interval excludes zero."""
        return self.low > 0.0

    def lead(self, digits: int | None = None) -> str:
        """The lead and its interval in the metric's unit: accuracy points or nats per token."""
        if self.metric == "acc":
            scale, unit, default = 100.0, " points", 1
        else:
            scale, unit, default = 1.0, " nats/token", 4
        d = default if digits is None else digits
        return (
            f"{self.diff * scale:+.{d}f}{unit} "
            f"[{self.low * scale:+.{d}f}, {self.high * scale:+.{d}f}]"
        )

    def describe(self) -> str:
        verdict = (
            "separated"
            if self.separated
            else "within noise (a larger sample, --n, tells them apart better)"
        )
        return (
            f"margin of {self.selected} over {self.runner_up}: {self.lead()} "
            f"(paired bootstrap, 95 %, {self.items} items): {verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "separated": self.separated, "text": self.describe()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Margin:
        """The margin that ``to_dict`` wrote (its derived keys are dropped)."""
        return cls(**{f.name: data[f.name] for f in fields(cls)})


def selection_margin(
    selected: str,
    selected_values: ItemValues,
    runner_up: str,
    runner_up_values: ItemValues,
    metric: str,
    *,
    samples: int = 10_000,
    seed: int = 0,
) -> Margin:
    """The paired bootstrap margin of ``selected`` over ``runner_up`` on the same items."""
    import numpy as np

    if len(selected_values) != len(runner_up_values) or not selected_values:
        raise ValueError("a margin needs per-item values of both entries on the same items")
    a = np.asarray(selected_values, dtype=np.float64)
    b = np.asarray(runner_up_values, dtype=np.float64)
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0

    def diff(rows: Any) -> Any:
        score_a = a[rows, 0].sum(-1) / np.maximum(a[rows, 1].sum(-1), 1.0)
        score_b = b[rows, 0].sum(-1) / np.maximum(b[rows, 1].sum(-1), 1.0)
        return sign * (score_a - score_b)

    n = len(a)
    rng = np.random.default_rng(seed)
    resampled = diff(rng.integers(0, n, size=(samples, n)))
    low, high = np.percentile(resampled, [2.5, 97.5])
    return Margin(
        metric=metric,
        selected=selected,
        runner_up=runner_up,
        diff=float(diff(np.arange(n))),
        low=float(low),
        high=float(high),
        items=n,
    )
