"""The gradient metric: its score is the first-order loss decrease an entry's update causes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mashup.data import load_items
from mashup.errors import MashupError
from mashup.select.core import select_entries
from mashup.select.gradient import gradient_scores
from mashup.zoo import Zoo
from tests.factories import make_tiny_llama, make_tiny_lora


def sample_loss(model, tokenizer, items) -> float:
    """The mean answer-token loss of the sample, one unpadded item at a time."""
    from mashup.train.trainer import build_examples

    total, tokens = 0.0, 0
    with torch.no_grad():
        for example in build_examples(items, tokenizer, model, 256):
            ids = torch.tensor([example["input_ids"]])
            labels = torch.tensor(example["labels"][1:])
            logits = model(input_ids=ids).logits[0, :-1]
            total += float(
                torch.nn.functional.cross_entropy(
                    logits, labels, ignore_index=-100, reduction="sum"
                )
            )
            tokens += int((labels != -100).sum())
    return total / tokens


def loss_with_update(base: Path, adapter: Path, items, scale: float) -> float:
    """The sample loss with ``scale`` times the adapter's update added to the base."""
    from mashup.eval import load_model

    model, tokenizer = load_model(adapter, base=base)
    for module in model.modules():
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict) and "default" in scaling:
            scaling["default"] *= scale
    return sample_loss(model, tokenizer, items)


class Entry:
    def __init__(self, name: str, path: Path, kind: str) -> None:
        self.name, self.path, self.kind = name, path, kind


def test_score_is_the_loss_decrease_to_first_order(tiny: dict[str, Path], tmp_path: Path):
    from mashup.eval import load_model

    items = load_items(tiny["train"], limit=12, seed=0)
    adapters = [make_tiny_lora(tmp_path / f"a{i}", tiny["base"], seed=i) for i in range(3)]
    scores = gradient_scores(
        [Entry(f"a{i}", p, "adapter") for i, p in enumerate(adapters)], tiny["base"], items
    )
    base_model, tokenizer = load_model(tiny["base"])
    before = sample_loss(base_model, tokenizer, items)
    eps = 1e-3
    for i, adapter in enumerate(adapters):
        # Central difference: (L(W - εΔW) - L(W + εΔW)) / 2ε = -⟨∇L, ΔW⟩ + O(ε²).
        plus = loss_with_update(tiny["base"], adapter, items, eps)
        minus = loss_with_update(tiny["base"], adapter, items, -eps)
        assert plus != before
        assert scores[f"a{i}"] == pytest.approx((minus - plus) / (2 * eps), rel=2e-2, abs=1e-5)
    # The adapters differ, and so do their scores: the test would catch a constant.
    assert len({round(s, 6) for s in scores.values()}) == 3


def test_a_full_checkpoint_scores_as_the_adapter_it_was_merged_from(
    tiny: dict[str, Path], tmp_path: Path
):
    from mashup.eval import load_model

    items = load_items(tiny["train"], limit=8, seed=1)
    adapter = make_tiny_lora(tmp_path / "a", tiny["base"], seed=3, target_modules=("q_proj",))
    model, _ = load_model(adapter, base=tiny["base"])
    merged = model.merge_and_unload()
    merged.save_pretrained(tmp_path / "full")
    # A second full model that changes another weight (the MLP) too, scored on every weight.
    noisy = make_tiny_llama(tmp_path / "noisy", base=tiny["base"], noise=0.01)
    scores = gradient_scores(
        [
            Entry("adapter", adapter, "adapter"),
            Entry("full", tmp_path / "full", "model"),
            Entry("noisy", noisy, "model"),
        ],
        tiny["base"],
        items,
    )
    assert scores["full"] == pytest.approx(scores["adapter"], rel=1e-3, abs=1e-6)
    assert scores["noisy"] != pytest.approx(scores["adapter"], rel=1e-2)


def test_select_by_gradient_ranks_caches_and_takes_bf16(tiny: dict[str, Path], zoo: Path):
    first = select_entries(tiny["train"], zoo, tiny["base"], k=2, metric="gradient", n=16)
    scores = [c.score for c in first.ranking]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert first.selected == [c.name for c in first.ranking[:2]]
    assert first.forwards == 1 and not any(c.cached for c in first.ranking)  # one batch of 16
    items = load_items(tiny["train"], limit=16, seed=0)
    entries = sorted(Zoo.open(zoo).list(), key=lambda e: e.name)
    direct = gradient_scores(entries, tiny["base"], items, batch_size=5)  # other batching
    assert {c.name: c.score for c in first.ranking} == pytest.approx(direct, rel=1e-4)
    second = select_entries(tiny["train"], zoo, tiny["base"], k=2, metric="gradient", n=16)
    assert second.forwards == 0 and all(c.cached for c in second.ranking)
    bf16 = select_entries(
        tiny["train"], zoo, tiny["base"], k=2, metric="gradient", n=16, precision="bf16"
    )
    assert not any(c.cached for c in bf16.ranking)  # cached apart from the fp32 scores
    assert {c.name: c.score for c in bf16.ranking} == pytest.approx(direct, rel=0.1, abs=1e-4)


def test_gradient_refuses_what_it_cannot_do(tiny: dict[str, Path], zoo: Path, tmp_path: Path):
    with pytest.raises(MashupError, match="--halving is for an acc or nll score"):
        select_entries(tiny["train"], zoo, tiny["base"], metric="gradient", halving=True)
    with pytest.raises(MashupError, match="--prefilter is for an acc or nll score"):
        select_entries(tiny["train"], zoo, tiny["base"], metric="gradient", prefilter=2)
    # A full checkpoint with a weight the base does not have: one clear line.
    other = make_tiny_llama(tmp_path / "other", seed=4, hidden_size=24)
    items = load_items(tiny["train"], limit=4, seed=0)
    with pytest.raises(MashupError, match="is \\[.*\\], the base's"):
        gradient_scores([Entry("other", other, "model")], tiny["base"], items)


def test_cli_selects_by_gradient(tiny: dict[str, Path], zoo: Path) -> None:
    import json

    from typer.testing import CliRunner

    from mashup.cli import app

    args = ["select", "--target", str(tiny["train"]), "--zoo", str(zoo), "--base"]
    args += [str(tiny["base"]), "--n", "8", "--k", "2", "--metric", "gradient", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["metric"] == "gradient" and len(record["selected"]) == 2
    scores = [c["score"] for c in record["ranking"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 3
