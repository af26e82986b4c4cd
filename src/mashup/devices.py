"""Which device the models run on: the accelerator when there is one, else the CPU.

``MASHUP_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...) overrides the choice, e.g. to
keep a shared GPU free or to compare a GPU run with a CPU one.
"""

from __future__ import annotations

import os

import torch

from mashup.errors import MashupError

DEVICE_ENV = "MASHUP_DEVICE"


def _detected() -> str:
    if torch.cuda.is_available():
        return "cuda"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return "xpu"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def model_device() -> torch.device:
    """The device models are placed on for evaluation, selection and training."""
    wanted = os.environ.get(DEVICE_ENV, "").strip()
    if not wanted:
        return torch.device(_detected())
    try:
        device = torch.device(wanted)
    except RuntimeError as exc:
        raise MashupError(
            f"{DEVICE_ENV}={wanted!r} is not a device name ({exc})",
            hint="use cpu, cuda, cuda:N, xpu or mps, or unset it to pick the accelerator",
        ) from exc
    if device.type != "cpu" and _detected() != device.type:
        raise MashupError(
            f"{DEVICE_ENV}={wanted!r}, but this machine has no {device.type} device",
            hint=f"unset {DEVICE_ENV} (picks {_detected()}) or set it to cpu",
        )
    return device


def bf16_training(device: torch.device) -> bool:
    """Train in bf16 mixed precision (fp32 master weights) where the device does it natively:
    a CUDA GPU that supports bf16. CPUs and other devices keep plain fp32."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported()
