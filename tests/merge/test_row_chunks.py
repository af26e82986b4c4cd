"""Row-wise (chunked) merges give the same bits as the whole-tensor methods."""

from __future__ import annotations

import pytest
import torch

from mashup.merge import methods
from mashup.merge.methods import METHODS, TensorGroup, row_chunks


def _group(dtype: torch.dtype, shape: tuple[int, ...], *, coarse: bool, seed: int) -> TensorGroup:
    generator = torch.Generator().manual_seed(seed)

    def draw() -> torch.Tensor:
        if coarse:  # few distinct values: many task-vector magnitudes tie at the cut-off
            return (torch.randint(-12, 13, shape, generator=generator) / 16).to(dtype)
        return torch.randn(shape, generator=generator).to(dtype)

    params = [
        {"weight": 1.0, "density": 0.5},
        {"weight": 0.7, "density": 0.3},
        {"weight": 1.3, "density": 0.9},
        {"weight": 0.4, "density": 1.0},
    ]
    return TensorGroup(
        name="layer.weight",
        tensors=[draw() for _ in params],
        base=draw(),
        params=params,
        shared={"normalize": True, "lambda": 0.8, "int8_mask": False, "rescale": False},
    )


def _rows(method: str, group: TensorGroup) -> torch.Tensor:
    rows = METHODS[method].rows
    assert rows is not None
    merge_rows = rows(group)
    shape = group.tensors[0].shape
    chunks = row_chunks(shape)
    assert len(chunks) > 1  # the point of the test: the rows really are split
    return torch.cat([merge_rows(start, stop) for start, stop in chunks])


@pytest.mark.parametrize("method", ["ties", "task_arithmetic", "linear"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("coarse", [False, True])
@pytest.mark.parametrize(
    "shape, chunk",
    [
        ((300, 256), methods.CHUNK_ELEMENTS),  # > 4 × sample size: the bracketed selection
        ((97, 33), 200),  # small tensor, many chunks of 6 rows, tie budget crosses chunks
        ((1000,), 64),  # 1-D: a row is one element
    ],
)
def test_row_wise_merge_equals_whole_tensor(
    method, dtype, coarse, shape, chunk, monkeypatch
) -> None:
    monkeypatch.setattr(methods, "CHUNK_ELEMENTS", chunk)
    group = _group(dtype, shape, coarse=coarse, seed=len(shape) + chunk)
    expected = METHODS[method].fn(group)
    got = _rows(method, group)
    assert got.dtype == expected.dtype
    assert torch.equal(got, expected)


def test_rows_must_come_in_order() -> None:
    group = _group(torch.float32, (64, 8), coarse=False, seed=0)
    rows = METHODS["ties"].rows(group)  # type: ignore[misc]
    rows(0, 10)
    with pytest.raises(RuntimeError, match="out of order"):
        rows(20, 30)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_selection_counts(dtype) -> None:
    generator = torch.Generator().manual_seed(3)
    values = (torch.randint(0, 50, (100_000,), generator=generator) / 7).to(dtype)
    values[:3] = torch.tensor([0.0, float("inf"), 1e-40])  # zero, Inf and a subnormal
    for k in (1, 777, 50_000, 100_000):
        cut, n_less, n_greater = methods._select(*methods._over(values), values.numel(), k)
        assert cut == torch.kthvalue(values, k).values
        assert n_less == int((values < cut).sum())
        assert n_greater == int((values > cut).sum())
        if dtype == torch.bfloat16:
            counted = methods._select_16bit(*methods._over(values), values.numel(), k)
            assert (counted[0], counted[1], counted[2]) == (cut, n_less, n_greater)


def test_tokenizer_saved_differently_but_same_vocabulary_merges(models, tmp_path) -> None:
    """Byte-different tokenizer files fall back to the vocabulary hash, which matches."""
    import json
    import shutil

    from mashup.merge import MergeConfig, merge

    ft = tmp_path / "ft1_resaved"
    shutil.copytree(models["ft1"], ft)
    tokenizer = ft / "tokenizer.json"
    data = json.loads(tokenizer.read_text())
    data["padding"] = {"strategy": "BatchLongest"}  # not part of the vocabulary hash
    tokenizer.write_text(json.dumps(data, indent=1))
    cfg = MergeConfig.from_dict(
        {
            "merge_method": "ties",
            "base_model": str(models["base"]),
            "models": [{"model": str(ft), "parameters": {"weight": 1.0, "density": 0.5}}],
        }
    )
    result = merge(cfg, tmp_path / "out", progress=False)
    assert (result.out_dir / "model.safetensors.index.json").is_file()


def test_cli_threads_option_is_restored(models, tmp_path) -> None:
    import torch
    import yaml
    from typer.testing import CliRunner

    import mashup.cli

    config = tmp_path / "linear.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "linear",
                "models": [
                    {"model": str(models[n]), "parameters": {"weight": 1.0}}
                    for n in ("ft1", "base")
                ],
            }
        )
    )
    before = torch.get_num_threads()
    for threads in ("1", "0"):
        out = tmp_path / f"out{threads}"
        result = CliRunner().invoke(
            mashup.cli.app, ["merge", str(config), str(out), "--threads", threads, "--json"]
        )
        assert result.exit_code == 0, result.output
        assert (out / "model.safetensors.index.json").is_file()
        assert torch.get_num_threads() == before
