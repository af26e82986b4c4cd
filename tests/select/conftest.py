from pathlib import Path

import pytest

from mashup.zoo import Zoo
from tests.factories import make_tiny_lora
from tests.train.conftest import tiny, write_mc  # noqa: F401  (the shared tiny base and data)


@pytest.fixture()
def zoo(tiny: dict[str, Path], tmp_path: Path) -> Path:  # noqa: F811  (the imported fixture)
    """Three random LoRA adapters on the tiny base, with training data files."""
    catalog = Zoo.open(tmp_path / "zoo")
    for i in range(3):
        adapter = make_tiny_lora(tmp_path / f"lora{i}", tiny["base"], seed=i)
        data = write_mc(tmp_path / f"data{i}.jsonl", 16, seed=10 + i, gold_first=i != 1)
        catalog.add(adapter, task=f"task{i}", dataset=str(data), name=f"lora{i}")
    return tmp_path / "zoo"
