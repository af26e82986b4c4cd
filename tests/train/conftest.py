"""Tiny models and multiple-choice data for the training and pipeline tests."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.factories import make_tiny_llama


def write_mc(path: Path, n: int, *, seed: int, gold_first: bool = True) -> Path:
    """Items whose right answer is a fixed word pair, so a few steps of training learn it."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            choices = ["w40 w41", "w50 w51", "w52 w53", "w54 w55"]
            answer = 0 if gold_first else rng.randrange(4)
            if not gold_first:
                choices[0], choices[answer] = choices[answer], choices[0]
            question = " ".join(f"w{rng.randrange(4, 30)}" for _ in range(4))
            handle.write(
                json.dumps({"question": question, "choices": choices, "answer": answer, "id": i})
                + "\n"
            )
    return path


def fake_benchmarks(
    monkeypatch: pytest.MonkeyPatch,
    cache: Path,
    tasks: tuple[str, ...],
    write: Callable[[Path, int, str, str], object],
) -> None:
    """Point the asset cache at ``cache`` and write each task's train and val file there with
    ``write(path, task_index, task, split)``, so code that asks for a benchmark gets tiny data."""
    from mashup.data.assets import benchmark_path

    monkeypatch.setenv("MASHUP_CACHE", str(cache))
    for i, task in enumerate(tasks):
        for split in ("train", "val"):
            path = benchmark_path(task, split, cache)
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path, i, task, split)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    base = make_tiny_llama(root / "base", seed=0)
    return {
        "root": root,
        "base": base,
        "train": write_mc(root / "train.jsonl", 96, seed=1),
        "val": write_mc(root / "val.jsonl", 24, seed=2),
    }


TINY_LORA = {"target_modules": ["q_proj", "v_proj"], "lr": 5e-3, "batch_size": 8}
