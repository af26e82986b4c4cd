"""RecurrentState: conversion, files, arithmetic and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mashup.errors import MashupError
from mashup.models import LinearAttnConfig, LinearAttnForCausalLM, RecurrentState, output_cache


def _state(seed: int = 0, n_tokens: int = 7) -> RecurrentState:
    generator = torch.Generator().manual_seed(seed)
    layers = [
        {"buffer": torch.randn(2, 8, 2, generator=generator)},
        {
            "S": torch.randn(2, 2, 16, 4, generator=generator),
            "z": torch.rand(2, 2, 16, generator=generator),
        },
    ]
    return RecurrentState(["conv", "linear_attn"], layers, n_tokens)


def _softmax_state() -> RecurrentState:
    kv = torch.zeros(1, 2, 3, 4)
    return RecurrentState(
        ["linear_attn", "attn"],
        [{"S": torch.zeros(1, 2, 16, 4), "z": torch.zeros(1, 2, 16)}, {"k": kv, "v": kv}],
        3,
    )


def _equal(a: RecurrentState, b: RecurrentState) -> bool:
    ta, tb = a.to_tensors(), b.to_tensors()
    return (
        ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta) and a.kinds == b.kinds
    )


def test_tensors_round_trip() -> None:
    state = _state()
    tensors = state.to_tensors()
    assert set(tensors) == {
        "layers.0.conv.buffer",
        "layers.1.linear_attn.S",
        "layers.1.linear_attn.z",
    }
    again = RecurrentState.from_tensors(tensors, n_tokens=state.n_tokens)
    assert _equal(state, again) and again.n_tokens == 7


def test_save_load_round_trip(tmp_path: Path) -> None:
    state = _state()
    path = state.save(tmp_path / "s.safetensors", metadata={"task": "demo"})
    loaded = RecurrentState.load(path)
    assert _equal(state, loaded) and loaded.n_tokens == 7
    meta = RecurrentState.read_metadata(path)
    assert meta["format"] == "mashup-state" and meta["task"] == "demo"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_load_refuses_bad_files(tmp_path: Path) -> None:
    garbage = tmp_path / "bad.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(MashupError, match="bad.safetensors"):
        RecurrentState.load(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(MashupError, match="format"):
        RecurrentState.load(foreign)
    with pytest.raises(MashupError, match="not found"):
        RecurrentState.load(tmp_path / "missing.safetensors")


def test_clone_is_independent() -> None:
    state = _state()
    copy = state.clone()
    copy[1]["S"].add_(1.0)
    assert not torch.equal(copy[1]["S"], state[1]["S"])


@settings(max_examples=25, deadline=None)
@given(
    w1=st.floats(-3, 3, allow_nan=False),
    w2=st.floats(-3, 3, allow_nan=False),
    seeds=st.tuples(st.integers(0, 100), st.integers(0, 100)),
)
def test_arithmetic_is_elementwise(w1: float, w2: float, seeds: tuple[int, int]) -> None:
    a, b = _state(seeds[0], 5), _state(seeds[1], 9)
    mixed = w1 * a + b * w2
    for key, tensor in mixed.to_tensors().items():
        want = w1 * a.to_tensors()[key] + w2 * b.to_tensors()[key]
        assert torch.allclose(tensor, want, atol=1e-5)
    assert mixed.n_tokens == 14
    assert sum([a, b]).n_tokens == 14
    assert torch.allclose(((a + b) / 2)[1]["S"], (a[1]["S"] + b[1]["S"]) / 2)


def test_mixing_softmax_caches_is_refused() -> None:
    state = _softmax_state()
    with pytest.raises(MashupError, match="softmax"):
        _ = state + state
    with pytest.raises(MashupError, match="softmax"):
        _ = 0.5 * state
    # Copies and files still work for non-mixable states.
    assert state.clone().n_tokens == 3


def test_mismatched_states_are_refused() -> None:
    a = _state()
    other_shape = RecurrentState(
        ["conv", "linear_attn"],
        [
            {"buffer": torch.zeros(2, 8, 2)},
            {"S": torch.zeros(2, 2, 9, 4), "z": torch.zeros(2, 2, 9)},
        ],
    )
    with pytest.raises(MashupError, match="shape"):
        _ = a + other_shape
    with pytest.raises(MashupError, match="different models"):
        _ = a + RecurrentState(["linear_attn"], [a[1]])


def test_captured_state_file_continues_the_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LinearAttnForCausalLM(
        LinearAttnConfig(vocab_size=50, d_model=16, n_heads=2, feature_dim=4)
    ).eval()
    ids = torch.randint(0, 50, (1, 30))
    with torch.no_grad():
        full = model(ids).logits
        RecurrentState.load(output_cache(model(ids[:, :20])).save(tmp_path / "p.safetensors"))
        state = RecurrentState.load(tmp_path / "p.safetensors")
        rest = model(ids[:, 20:], cache=state).logits
    assert torch.allclose(rest, full[:, 20:], atol=1e-5)
