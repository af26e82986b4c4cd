"""The accelerator path: train, evaluate and select on a CUDA GPU (skipped without one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mashup.train.config import TrainConfig
from mashup.train.trainer import train_model
from tests.train.conftest import TINY_LORA

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_trains_in_bf16_on_the_gpu_and_scores_as_the_cpu_does(
    tiny: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import TrainerCallback

    from mashup.data import load_items
    from mashup.eval import evaluate_items, load_model

    seen: dict[str, object] = {}

    class Spy(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
            seen["bf16"] = args.bf16
            seen["device"] = next(model.parameters()).device.type

    cfg = TrainConfig(
        base=tiny["base"],
        data=tiny["train"],
        val=tiny["val"],
        out=tmp_path / "run",
        steps=15,
        eval_every=5,
        **TINY_LORA,
    )
    result = train_model(cfg, callbacks=[Spy()])
    assert seen == {"bf16": torch.cuda.is_bf16_supported(), "device": "cuda"}
    assert result.curve[-1].acc > result.curve[0].acc

    items = load_items(tiny["val"])
    on_gpu, tokenizer = load_model(cfg.out, base=tiny["base"])
    assert next(on_gpu.parameters()).device.type == "cuda"
    on_cpu, _ = load_model(cfg.out, base=tiny["base"], device="cpu")
    gpu = evaluate_items(on_gpu, tokenizer, items).per_item
    cpu = evaluate_items(on_cpu, tokenizer, items).per_item
    for g, c in zip(gpu, cpu, strict=True):
        assert g.loglikelihoods == pytest.approx(c.loglikelihoods, abs=1e-3)


def test_selects_adapters_on_the_gpu(tiny: dict[str, Path], tmp_path: Path) -> None:
    from mashup.select.core import select_entries
    from mashup.zoo import Zoo

    zoo_dir = tmp_path / "zoo"
    zoo = Zoo.open(zoo_dir)
    for name, seed in (("a", 1), ("b", 2)):
        cfg = TrainConfig(
            base=tiny["base"],
            data=tiny["train"],
            val=tiny["val"],
            out=tmp_path / name,
            steps=4,
            seed=seed,
            **TINY_LORA,
        )
        train_model(cfg)
        zoo.add(cfg.out, task=name, dataset=str(tiny["train"]), name=name)
    selection = select_entries(tiny["train"], zoo_dir, tiny["base"], k=1, n=8)
    assert len(selection.selected) == 1 and len(selection.ranking) == 2
