"""LoRA-aware merging: ab_mean, delta (full model and re-factorised adapter), cat."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from mashup.errors import MashupError
from mashup.merge import MergeConfig, merge
from mashup.merge.lora import top_singular
from tests.merge.conftest import load_dir

PREFIX = "base_model.model."


def _adapter(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    config = json.loads((path / "adapter_config.json").read_text())
    return load_file(path / "adapter_model.safetensors"), config


def _deltas(path: Path) -> dict[str, torch.Tensor]:
    """module weight name -> exact ΔW = B·A·scale of an adapter directory."""
    tensors, config = _adapter(path)
    r = config["r"]
    scale = config["lora_alpha"] / (r**0.5 if config.get("use_rslora") else r)
    out = {}
    for name, a in tensors.items():
        if name.endswith(".lora_A.weight"):
            module = name[: -len(".lora_A.weight")]
            b = tensors[module + ".lora_B.weight"]
            out[module.removeprefix(PREFIX) + ".weight"] = b.float() @ a.float() * scale
    return out


def _cfg(mode: str, paths: list[Path], weights: list[float], **extra) -> MergeConfig:
    return MergeConfig.model_validate(
        {
            "merge_method": extra.pop("method", "linear"),
            "lora_mode": mode,
            "models": [
                {"model": str(p), "parameters": {"weight": w}}
                for p, w in zip(paths, weights, strict=True)
            ],
            **extra,
        }
    )


def test_ab_mean_averages_a_and_b_separately(loras, tmp_path: Path) -> None:
    result = merge(
        _cfg("ab_mean", [loras["a"], loras["b"]], [1.0, 3.0]), tmp_path / "o", progress=False
    )
    assert result.kind == "adapter"
    merged, config = _adapter(tmp_path / "o")
    a, _ = _adapter(loras["a"])
    b, _ = _adapter(loras["b"])
    assert set(merged) == set(a)
    for name in a:
        torch.testing.assert_close(merged[name], 0.25 * a[name] + 0.75 * b[name])
    assert config["r"] == 4


def test_delta_full_model_is_base_plus_mean_update(models, loras, tmp_path: Path) -> None:
    cfg = _cfg("delta", [loras["a"], loras["r8"]], [1.0, 1.0], base_model=str(models["base"]))
    assert merge(cfg, tmp_path / "o", progress=False).kind == "model"
    merged, base = load_dir(tmp_path / "o"), load_dir(models["base"])
    da, db = _deltas(loras["a"]), _deltas(loras["r8"])
    for name, w0 in base.items():
        expected = w0 + 0.5 * (da.get(name, 0) + db.get(name, 0))
        torch.testing.assert_close(merged[name], expected, rtol=0, atol=1e-5)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "o")


def test_delta_with_rank_writes_a_peft_adapter_that_approximates(models, loras, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    paths = [loras["a"], loras["r8"]]
    expected = {k: 0.5 * (v + _deltas(loras["r8"])[k]) for k, v in _deltas(loras["a"]).items()}
    errors = {}
    for rank in (2, 12):
        cfg = _cfg("delta", paths, [1.0, 1.0], rank=rank)
        merge(cfg, tmp_path / f"r{rank}", progress=False)
        got = _deltas(tmp_path / f"r{rank}")
        errors[rank] = max(
            float((got[k] - expected[k]).norm() / expected[k].norm()) for k in expected
        )
        # Eckart–Young: the error is exactly the energy of the dropped singular values.
        for k, target in expected.items():
            tail = torch.linalg.svdvals(target)[rank:].square().sum().sqrt()
            assert abs(float((got[k] - target).norm() - tail)) < 1e-4
    assert errors[12] < 1e-5 < errors[2] < 1  # rank 12 ≥ 4 + 8 holds the merge exactly
    base = AutoModelForCausalLM.from_pretrained(models["base"])
    model = PeftModel.from_pretrained(base, tmp_path / "r2")
    assert model(torch.tensor([[1, 2, 3]])).logits.isfinite().all()


def test_cat_is_exact_weighted_sum_of_updates(models, loras, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merge(_cfg("cat", [loras["a"], loras["r8"]], [1.0, 3.0]), tmp_path / "o", progress=False)
    got = _deltas(tmp_path / "o")
    da, db = _deltas(loras["a"]), _deltas(loras["r8"])
    for name in da:
        torch.testing.assert_close(got[name], 0.25 * da[name] + 0.75 * db[name], rtol=0, atol=1e-6)
    assert _adapter(tmp_path / "o")[1]["r"] == 12
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models["base"]), tmp_path / "o")


def test_task_arithmetic_cat_applies_lambda(loras, tmp_path: Path) -> None:
    cfg = _cfg(
        "cat",
        [loras["a"], loras["b"]],
        [1.0, 1.0],
        method="task_arithmetic",
        parameters={"lambda": 0.5},
    )
    merge(cfg, tmp_path / "o", progress=False)
    got, da, db = _deltas(tmp_path / "o"), _deltas(loras["a"]), _deltas(loras["b"])
    for name in da:
        torch.testing.assert_close(got[name], 0.5 * (da[name] + db[name]), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("mode", "pair", "message"),
    [
        ("ab_mean", ("a", "dora"), "DoRA"),
        ("delta", ("a", "dora"), "DoRA"),
        ("ab_mean", ("a", "r8"), "different ranks"),
        ("ab_mean", ("a", "qkv"), "different target modules"),
        ("cat", ("a", "qkv"), "different target modules"),
        ("ab_mean", ("a", "rslora"), "different use_rslora"),
    ],
)
def test_refuses_adapters_that_would_merge_wrongly(loras, tmp_path, mode, pair, message) -> None:
    cfg = _cfg(mode, [loras[p] for p in pair], [1.0, 1.0], rank=4 if mode == "delta" else None)
    with pytest.raises(MashupError, match=message):
        merge(cfg, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


def test_refuses_bias_adapter(loras, tmp_path: Path, copy_adapter) -> None:
    biased = copy_adapter(loras["b"], bias="lora_only")
    with pytest.raises(MashupError, match="bias"):
        merge(_cfg("ab_mean", [loras["a"], biased], [1.0, 1.0]), tmp_path / "o", progress=False)


def test_adapters_need_lora_mode(loras, tmp_path: Path) -> None:
    cfg = MergeConfig.model_validate(
        {
            "merge_method": "linear",
            "models": [{"model": str(loras["a"]), "parameters": {"weight": 1}}],
        }
    )
    with pytest.raises(MashupError, match="lora_mode"):
        merge(cfg, tmp_path / "o", progress=False)


@pytest.fixture
def copy_adapter(tmp_path: Path):
    import shutil

    def copy(source: Path, **changes) -> Path:
        target = tmp_path / f"copy-{source.name}"
        shutil.copytree(source, target)
        config = json.loads((target / "adapter_config.json").read_text())
        config.update(changes)
        (target / "adapter_config.json").write_text(json.dumps(config))
        return target

    return copy


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 40),
    cols=st.integers(1, 40),
    rank=st.integers(1, 8),
    true_rank=st.integers(0, 12),
    decay=st.floats(0.3, 1.0),
    seed=st.integers(0, 2**16),
)
def test_top_singular_is_the_truncated_svd(rows, cols, rank, true_rank, decay, seed) -> None:
    """The Gram route (or its SVD fallback) gives the best rank-r approximation, ordered and
    orthonormal, for tall and wide matrices, exact low rank, fast decay and the zero matrix."""
    assume(rank <= min(rows, cols))
    g = torch.Generator().manual_seed(seed)
    k = min(true_rank, rows, cols)
    spectrum = decay ** torch.arange(k, dtype=torch.float32)
    left, _ = torch.linalg.qr(torch.randn(rows, max(k, 1), generator=g))
    right, _ = torch.linalg.qr(torch.randn(cols, max(k, 1), generator=g))
    matrix = (left[:, :k] * spectrum) @ right[:, :k].T
    u, s, vh = top_singular(matrix, rank)
    assert u.shape == (rows, rank) and s.shape == (rank,) and vh.shape == (rank, cols)
    full = torch.linalg.svdvals(matrix)
    assert torch.allclose(s, full[:rank], atol=1e-4)
    # Near-equal singular values at the cut make the subspace ambiguous, not the error energy.
    error = (u * s) @ vh - matrix
    assert abs(float(error.norm()) - float(full[rank:].square().sum().sqrt())) < 1e-4
    if k == 0:
        assert float(((u * s) @ vh).abs().max()) == 0.0
    kept = s > 1e-3
    eye = torch.eye(int(kept.sum()))
    assert torch.allclose(u[:, kept].T @ u[:, kept], eye, atol=1e-3)
    assert torch.allclose(vh[kept] @ vh[kept].T, eye, atol=1e-3)
