"""Tiny generated checkpoints shared by the merge tests (built once per session, read-only)."""

from __future__ import annotations

import glob
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.factories import make_tiny_llama, make_tiny_lora


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge-models")
    base = make_tiny_llama(root / "base", seed=0)
    made = {"base": base}
    for i in (1, 2, 3):
        made[f"ft{i}"] = make_tiny_llama(root / f"ft{i}", seed=i, base=base)
    made["base_bf16"] = make_tiny_llama(root / "base_bf16", seed=0, dtype=torch.bfloat16)
    for i in (1, 2, 3):
        made[f"ft{i}_bf16"] = make_tiny_llama(
            root / f"ft{i}_bf16", seed=i, base=base, dtype=torch.bfloat16
        )
    return made


@pytest.fixture(scope="session")
def loras(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("merge-loras")
    base = models["base"]
    return {
        "a": make_tiny_lora(root / "a", base, seed=1),
        "b": make_tiny_lora(root / "b", base, seed=2),
        "r8": make_tiny_lora(root / "r8", base, seed=3, r=8, alpha=4),
        "qkv": make_tiny_lora(root / "qkv", base, seed=4, target_modules=("q_proj", "k_proj")),
        "rslora": make_tiny_lora(root / "rslora", base, seed=5, use_rslora=True),
        "dora": make_tiny_lora(root / "dora", base, seed=6, use_dora=True),
    }


def load_dir(path: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for file in sorted(glob.glob(str(path / "*.safetensors"))):
        tensors.update(load_file(file))
    return tensors
