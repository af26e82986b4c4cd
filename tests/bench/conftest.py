"""The leave-one-out tests' run settings: tiny generated tasks on a tiny base."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from mashup.bench.leave_one_out import LooSettings
from tests.factories import make_tiny_llama
from tests.train.conftest import fake_benchmarks, write_mc

TASKS = ("piqa", "csqa", "arc_easy")
BENCHMARKS = Path(__file__).parents[2] / "benchmarks"


def load_script(name: str) -> ModuleType:
    """A script of benchmarks/ (not a package) imported as a module."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LooSettings:
    """Three tasks whose cached benchmark files are tiny generated data, on a tiny base."""
    fake_benchmarks(
        monkeypatch,
        tmp_path / "cache",
        TASKS,
        lambda path, i, task, split: write_mc(
            path, 40, seed=10 * i + (split == "val"), gold_first=task != "csqa"
        ),
    )
    return LooSettings(
        out=tmp_path / "loo",
        base=make_tiny_llama(tmp_path / "base", seed=0),
        tasks=TASKS,
        targets=("piqa",),
        variants=("main", "k1"),
        seeds=(0, 1),
        zoo_steps=3,
        steps=4,
        batch_size=4,
        lr=5e-3,
        eval_n=8,
        eval_every=2,
        select_n=8,
    )
