"""Device choice: the accelerator when present, MASHUP_DEVICE to override, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mashup import devices
from mashup.devices import DEVICE_ENV, bf16_training, cpu_has_bf16, model_device
from mashup.errors import MashupError
from tests.factories import make_tiny_llama


def _machine_with(monkeypatch: pytest.MonkeyPatch, *kinds: str) -> None:
    monkeypatch.setattr(devices, "_available", lambda kind: kind in {"cpu", *kinds})


@pytest.fixture()
def no_accelerator(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    _machine_with(monkeypatch)
    return monkeypatch


def test_picks_the_accelerator_when_there_is_one(no_accelerator: pytest.MonkeyPatch) -> None:
    assert model_device() == torch.device("cpu")
    _machine_with(no_accelerator, "mps")
    assert model_device() == torch.device("mps")
    _machine_with(no_accelerator, "xpu", "cuda")
    assert model_device() == torch.device("cuda")


def test_the_environment_overrides_the_choice(no_accelerator: pytest.MonkeyPatch) -> None:
    _machine_with(no_accelerator, "cuda", "xpu")
    no_accelerator.setenv(DEVICE_ENV, "cpu")
    assert model_device() == torch.device("cpu")
    no_accelerator.setenv(DEVICE_ENV, "cuda:1")
    assert model_device() == torch.device("cuda", 1)
    no_accelerator.setenv(DEVICE_ENV, "xpu")  # not the default, but present
    assert model_device() == torch.device("xpu")


def test_a_device_the_machine_lacks_or_a_bad_name_is_one_clear_error(
    no_accelerator: pytest.MonkeyPatch,
) -> None:
    no_accelerator.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(MashupError, match="this machine has no cuda device") as info:
        model_device()
    assert "unset MASHUP_DEVICE (picks cpu)" in str(info.value.hint)
    no_accelerator.setenv(DEVICE_ENV, "gpu0")
    with pytest.raises(MashupError, match="is not a device name"):
        model_device()


def test_bf16_only_on_a_cuda_device_that_supports_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not bf16_training(torch.device("cpu"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert bf16_training(torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert not bf16_training(torch.device("cuda"))


def test_precision_overrides_the_automatic_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert bf16_training(torch.device("cpu"), "bf16")
    assert not bf16_training(torch.device("cuda"), "fp32")
    assert bf16_training(torch.device("cuda"), "auto")
    with pytest.raises(MashupError, match="unknown precision 'fp16'"):
        bf16_training(torch.device("cpu"), "fp16")


def test_cpu_bf16_probe_reads_the_instruction_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not cpu_has_bf16()
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_has_bf16()


def test_load_model_places_the_model_on_the_chosen_device(
    tmp_path: Path, no_accelerator: pytest.MonkeyPatch
) -> None:
    from mashup.eval import load_model

    base = make_tiny_llama(tmp_path / "base", seed=0)
    model, _ = load_model(base)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    # "meta" stands in for an accelerator: the default comes from model_device().
    no_accelerator.setattr(devices, "model_device", lambda: torch.device("meta"))
    model, _ = load_model(base)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    model, _ = load_model(base, device="cpu")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
