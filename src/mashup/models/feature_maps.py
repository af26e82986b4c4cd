"""Feature maps φ for linear attention: s(q, k) = φ(q)·φ(k), always ≥ 0.

Inputs are per-head projections ``[..., feature_dim]``; outputs ``[..., expanded_dim]``.
All maps here are second-order polynomials, so the quadratic part is the flattened outer
product x⊗x (no symmetric packing: simpler, and the extra multiplies are cheap at F = 16).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from mashup.errors import MashupError

# Names accepted by LinearAttnConfig.kernel, in the order of the ReBased paper's ablation.
KERNELS: tuple[str, ...] = ("based", "rebased", "x2", "norm_x2", "gamma_x2", "gamma_x_beta2")


def _outer_flat(x: torch.Tensor) -> torch.Tensor:
    """x⊗x flattened over the last dimension: (x⊗x)·(y⊗y) = (x·y)²."""
    return (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)


class FeatureMap(nn.Module):
    """Base class: ``forward(x) -> φ(x)`` with ``expanded_dim`` output features."""

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        self.feature_dim = feature_dim

    @property
    def expanded_dim(self) -> int:
        return self.feature_dim * self.feature_dim


class TaylorFeatureMap(FeatureMap):
    """Based: φ(q)·φ(k) = 1 + t + t²/2 with t = q·k/√d (second-order Taylor series of exp)."""

    @property
    def expanded_dim(self) -> int:
        return 1 + self.feature_dim + self.feature_dim * self.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.feature_dim
        ones = torch.ones_like(x[..., :1])
        linear = x / d**0.25  # (x·y)/√d after the product
        quadratic = _outer_flat(x) / math.sqrt(2.0 * d)  # (x·y)²/(2d)
        return torch.cat([ones, linear, quadratic], dim=-1)


class QuadraticFeatureMap(FeatureMap):
    """(γ·n(x) + β)⊗(γ·n(x) + β)/√d, so that φ(q)·φ(k) = (q̃·k̃)²/d.

    ``normalize`` applies LayerNorm without affine (n); ``scale`` learns γ (init 1);
    ``shift`` learns β (init 0). ReBased is all three; the ablations switch parts off.
    """

    def __init__(self, feature_dim: int, *, normalize: bool, scale: bool, shift: bool) -> None:
        super().__init__(feature_dim)
        self.normalize = normalize
        self.gamma = nn.Parameter(torch.ones(feature_dim)) if scale else None
        self.beta = nn.Parameter(torch.zeros(feature_dim)) if shift else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            x = functional.layer_norm(x, (self.feature_dim,), eps=1e-5)
        if self.gamma is not None:
            x = x * self.gamma
        if self.beta is not None:
            x = x + self.beta
        return _outer_flat(x) / math.sqrt(self.feature_dim)


def make_feature_map(kernel: str, feature_dim: int) -> FeatureMap:
    """Build the feature map named ``kernel`` (one of KERNELS)."""
    if kernel == "based":
        return TaylorFeatureMap(feature_dim)
    options = {
        "rebased": dict(normalize=True, scale=True, shift=True),
        "x2": dict(normalize=False, scale=False, shift=False),
        "norm_x2": dict(normalize=True, scale=False, shift=False),
        "gamma_x2": dict(normalize=False, scale=True, shift=False),
        "gamma_x_beta2": dict(normalize=False, scale=True, shift=True),
    }
    if kernel not in options:
        raise MashupError(
            f"kernel: unknown feature map {kernel!r}", hint=f"use one of {', '.join(KERNELS)}"
        )
    return QuadraticFeatureMap(feature_dim, **options[kernel])
