"""Selection scored with bf16 weights: what it loads, what it scores, where it is cached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from mashup.errors import MashupError
from mashup.select.core import select_entries


def test_bf16_scores_with_bf16_base_weights_and_fp32_adapters(
    tiny: dict[str, Path], zoo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mashup.eval as evaluation
    from mashup.data import load_items
    from mashup.eval import evaluate_items, load_model

    seen: list[tuple[set[torch.dtype], set[torch.dtype]]] = []

    def spy(model: Any, *args: Any, **kwargs: Any) -> Any:
        params = list(model.named_parameters())
        seen.append(
            (
                {p.dtype for name, p in params if "lora_" not in name},
                {p.dtype for name, p in params if "lora_" in name},
            )
        )
        return evaluate_items(model, *args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate_items", spy)
    result = select_entries(tiny["train"], zoo, tiny["base"], k=2, n=16, precision="bf16")
    monkeypatch.undo()
    assert seen == [({torch.bfloat16}, {torch.float32})] * 3
    assert result.precision == "bf16" and result.to_dict()["precision"] == "bf16"
    # Each score is the candidate's accuracy with the base in bf16, as mashup eval loads it.
    items = load_items(tiny["train"], limit=16, seed=0)
    model, tokenizer = load_model(zoo.parent / "lora1", base=tiny["base"], dtype=torch.bfloat16)
    by_name = {c.name: c.score for c in result.ranking}
    assert by_name["lora1"] == pytest.approx(evaluate_items(model, tokenizer, items).acc)


def test_bf16_and_fp32_scores_are_cached_apart(tiny: dict[str, Path], zoo: Path) -> None:
    fp32 = select_entries(tiny["train"], zoo, tiny["base"], k=2, n=16)
    bf16 = select_entries(tiny["train"], zoo, tiny["base"], k=2, n=16, precision="bf16")
    assert bf16.forwards > 0 and not any(c.cached for c in bf16.ranking)
    assert bf16.target == fp32.target + "[precision=bf16]"
    again = select_entries(tiny["train"], zoo, tiny["base"], k=2, n=16, precision="bf16")
    assert again.forwards == 0 and all(c.cached for c in again.ranking)
    assert [c.score for c in again.ranking] == [c.score for c in bf16.ranking]
    # Successive halving caches each prefix of the sample, also apart by precision.
    select_entries(tiny["train"], zoo, tiny["base"], k=1, n=16, halving=True)
    halved = select_entries(
        tiny["train"], zoo, tiny["base"], k=1, n=16, precision="bf16", halving=True
    )
    assert halved.halving and halved.forwards > 0
    assert not any(c.cached for c in halved.ranking)


def test_unknown_or_needless_precision_is_refused(tiny: dict[str, Path], zoo: Path) -> None:
    with pytest.raises(MashupError, match="unknown precision 'fp16'"):
        select_entries(tiny["train"], zoo, tiny["base"], precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(MashupError, match="for an acc or nll score"):
        select_entries(tiny["train"], zoo, tiny["base"], metric="random", precision="bf16")
