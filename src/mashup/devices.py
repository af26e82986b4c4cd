"""Which device the models run on: the accelerator when there is one, else the CPU.

``MASHUP_DEVICE`` (``cpu``, ``cuda``, ``xpu``, ``mps``) overrides the choice, e.g. to keep a
shared GPU free or to compare a GPU run with a CPU one. The Trainer trains on the default
device of that kind, so one of several GPUs is picked with ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import os

import torch

from mashup.errors import MashupError

DEVICE_ENV = "MASHUP_DEVICE"


ACCELERATORS = ("cuda", "xpu", "mps")  # the first one present is the default


def _available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        return xpu is not None and xpu.is_available()
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return mps is not None and mps.is_available()
    return kind == "cpu"


def _detected() -> str:
    return next((kind for kind in ACCELERATORS if _available(kind)), "cpu")


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
    if not _available(device.type):
        raise MashupError(
            f"{DEVICE_ENV}={wanted!r}, but this machine has no {device.type} device",
            hint=f"unset {DEVICE_ENV} (picks {_detected()}) or set it to cpu",
        )
    return device


def bf16_training(device: torch.device, precision: str = "auto") -> bool:
    """Whether to train in bf16 mixed precision (bf16 matrix products, fp32 master weights).

    ``auto``: where the device does it natively and the choice is settled practice, a CUDA GPU
    that supports bf16; CPUs and other devices keep plain fp32. ``bf16``: on any device (on a
    CPU, autocast; fast where it has bf16 instructions, see :func:`cpu_has_bf16`). ``fp32``:
    never.
    """
    from mashup.train.config import check_precision

    if check_precision(precision) != "auto":
        return precision == "bf16"
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX), which makes bf16
    training faster than fp32 rather than slower."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
