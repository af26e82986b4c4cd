"""Shared fixtures: tiny generated models, adapters and states, built once per test session."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.factories import make_tiny_llama, make_tiny_lora


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Read-only tiny checkpoints; tests that modify files copy them first (see ``copy_of``)."""
    root = tmp_path_factory.mktemp("tiny")
    base = make_tiny_llama(root / "base", seed=0)
    return {
        "base": base,
        "finetune": make_tiny_llama(root / "finetune", seed=1, base=base),
        "sharded": make_tiny_llama(root / "sharded", seed=0, max_shard_size="20KB"),
        "wide": make_tiny_llama(root / "wide", seed=0, hidden_size=32),
        "big_vocab": make_tiny_llama(root / "big_vocab", seed=0, vocab_size=128),
        "lora": make_tiny_lora(root / "lora", base=base, seed=0),
        "lora_r8": make_tiny_lora(
            root / "lora_r8", base=base, seed=1, r=8, target_modules=("q_proj", "k_proj", "v_proj")
        ),
    }


@pytest.fixture
def copy_of(tmp_path: Path):
    """Copy a fixture checkpoint into this test's directory, so the test may change it."""

    def copy(source: Path, name: str | None = None) -> Path:
        destination = tmp_path / "copies" / (name or source.name)
        shutil.copytree(source, destination)
        return destination

    return copy


def write_numpy_model(path: Path, value: float = 0.0, vocab_size: int = 8) -> Path:
    """A minimal model directory (config.json + model.safetensors) written without torch."""
    path.mkdir(parents=True, exist_ok=True)
    config = {"architectures": ["TinyForCausalLM"], "model_type": "tiny", "vocab_size": vocab_size}
    (path / "config.json").write_text(json.dumps(config))
    tensors = {
        "embed.weight": np.full((vocab_size, 4), value, dtype=np.float32),
        "head.weight": np.full((vocab_size, 4), -value, dtype=np.float32),
    }
    save_file(tensors, str(path / "model.safetensors"))
    return path


def write_state(path: Path, *, task: str = "arc_easy", model_digest: str = "abc123") -> Path:
    """A mashup state file as the State Soup stage writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "layers.1.S": np.ones((1, 2, 16, 32), dtype=np.float32),
        "layers.1.z": np.ones((1, 2, 16), dtype=np.float32),
        "layers.0.buffer": np.zeros((1, 64, 2), dtype=np.float32),
    }
    metadata = {
        "format": "mashup-state",
        "model_fingerprint": json.dumps(
            {"digest": model_digest, "architecture": "LinearAttnForCausalLM"}
        ),
        "task": task,
        "n_tokens": "128",
        "context_sha256": "0" * 64,
    }
    save_file(tensors, str(path), metadata=metadata)
    return path
