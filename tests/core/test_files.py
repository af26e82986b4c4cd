"""Outputs written through temporary paths get umask permissions, not private ones."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mashup.files import share_like_umask


@pytest.fixture()
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def _modes(root: Path) -> set[int]:
    return {stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_private_temporaries_become_shared(tmp_path: Path, umask_022: None) -> None:
    folder = Path(tempfile.mkdtemp(dir=tmp_path))  # 0700
    (folder / "sub").mkdir(mode=0o700)
    _, name = tempfile.mkstemp(dir=folder / "sub")  # 0600
    assert stat.S_IMODE(Path(name).stat().st_mode) == 0o600
    share_like_umask(folder)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    assert stat.S_IMODE((folder / "sub").stat().st_mode) == 0o755
    assert stat.S_IMODE(Path(name).stat().st_mode) == 0o644


def test_state_files_and_merge_outputs_are_readable_by_others(
    tmp_path: Path, umask_022: None
) -> None:
    from mashup.merge import MergeConfig, merge
    from mashup.models.state import write_state_file
    from tests.factories import make_tiny_llama

    state = write_state_file(tmp_path / "s.safetensors", {"x": torch.zeros(2)}, {"a": "b"})
    assert stat.S_IMODE(state.stat().st_mode) == 0o644

    base = make_tiny_llama(tmp_path / "base", seed=0)
    ft = make_tiny_llama(tmp_path / "ft", seed=1, base=base)
    cfg = MergeConfig.model_validate(
        {"merge_method": "linear", "models": [
            {"model": str(base), "parameters": {"weight": 0.5}},
            {"model": str(ft), "parameters": {"weight": 0.5}}]}
    )  # fmt: skip
    merge(cfg, tmp_path / "merged", progress=False)
    modes = _modes(tmp_path / "merged")
    assert modes <= {0o755, 0o644} and 0o644 in modes


def test_json_is_written_whole_with_shared_permissions(tmp_path: Path, umask_022: None) -> None:
    import json

    from mashup.files import write_json

    path = tmp_path / "score.json"
    write_json(path, {"correct": [1, 0]})
    write_json(path, {"correct": [1, 1]})  # replaced in place
    assert json.loads(path.read_text()) == {"correct": [1, 1]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["score.json"]  # no temporary left
    with pytest.raises(TypeError):
        write_json(path, {"not json": object()})
    assert json.loads(path.read_text()) == {"correct": [1, 1]}  # the old file stands
    assert [p.name for p in tmp_path.iterdir()] == ["score.json"]
