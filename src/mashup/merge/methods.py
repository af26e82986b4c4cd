"""Merge methods: one small function per method, registered by name (as mergekit does).

Each function merges one tensor group: the inputs for one output tensor, already cast to the
compute dtype (the config's ``dtype``, else the promoted dtype of the inputs), and returns the
merged tensor in that dtype. The arithmetic follows mergekit 0.1.5 operation by operation, in
the same dtype, so results agree to rounding:

* ``linear`` accumulates ``Σ wᵢ·xᵢ`` in float32 (float64 for float64 inputs), divides by Σ w when
  ``normalize`` (default true) and casts back. With a ``base_model`` the base is one more input
  and needs a weight, as in mergekit.
* ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``, ``breadcrumbs`` work on task
  vectors ``xᵢ - base`` in the compute dtype: sparsify each (TIES: keep the ``density`` share of
  largest magnitudes; DARE: keep each entry with probability ``density`` and, with ``rescale``
  (default on for DARE), scale to keep the L1 norm; breadcrumbs: drop the ``gamma`` share of
  largest and then the smallest magnitudes), multiply by the weights, elect the sign per entry
  from the weighted sum (TIES, DARE-TIES), add up the agreeing entries, divide by Σ(weight·mask)
  (or by Σ weight without sign election) when ``normalize`` (default on for TIES only), scale by
  ``lambda`` and add to the base. ``int8_mask`` is accepted; it only changes mergekit's memory
  use, never the result.
* ``slerp`` interpolates the base (t = 0) and the other model (t = 1) along the great circle of
  the whole flattened tensor in float32, linearly when they are nearly collinear.
* ``model_stock`` moves from the base towards the average by the ratio derived from the mean
  cosine between task vectors (per row with ``filter_wise``).

Deviations from mergekit, on purpose:

* Magnitude selection (TIES, breadcrumbs) finds the cut-off with a selection algorithm instead
  of sorting every tensor. Where several entries have exactly the magnitude at the cut-off, the
  same number is kept, but mashup keeps the lowest indices, whereas mergekit keeps whichever
  ones ``torch.argsort``'s unstable sort puts first. With float32 task vectors such exact ties
  are rare; with bfloat16 they are common, so the two tools agree to one bf16 ulp except at
  those tied entries.
* DARE masks are drawn from a generator seeded from ``random_seed`` and the tensor's name, so
  they do not depend on the order tensors are processed in, but they are not the masks mergekit
  draws (it uses the global torch generator in its own task order). Results agree exactly at
  density 1; below that they agree in distribution.
* Parameters are scalars (no gradients or per-tensor filters).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

REQUIRED = object()


@dataclass
class TensorGroup:
    """The inputs of one output tensor, in the compute dtype."""

    name: str
    tensors: list[Tensor]  # the inputs other than the base (linear: every input), config order
    base: Tensor | None
    params: list[dict[str, Any]]  # per tensor in ``tensors``: weight, density, gamma
    shared: dict[str, Any]  # normalize, lambda, rescale, int8_mask, t, filter_wise
    seed: int = 0


@dataclass(frozen=True)
class MethodSpec:
    name: str
    fn: Callable[[TensorGroup], Tensor]
    needs_base: bool
    shared_params: dict[str, Any]
    model_params: dict[str, Any]
    min_inputs: int = 1  # counting the base when there is one, as mergekit does
    max_inputs: int | None = None
    random: bool = False
    # The methods whose result is base + f(task vectors), linear in nothing but the vectors.
    task_vector: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


METHODS: dict[str, MethodSpec] = {}

_GTA_SHARED = {"int8_mask": False, "lambda": 1.0}
_GTA_MODEL = {"weight": REQUIRED, "density": 1.0}


def register(
    name: str,
    *,
    needs_base: bool,
    shared: dict[str, Any],
    per_model: dict[str, Any],
    min_inputs: int = 1,
    max_inputs: int | None = None,
    random: bool = False,
    task_vector: bool = False,
) -> Callable[[Callable[[TensorGroup], Tensor]], Callable[[TensorGroup], Tensor]]:
    def decorate(fn: Callable[[TensorGroup], Tensor]) -> Callable[[TensorGroup], Tensor]:
        if name in METHODS:
            raise ValueError(f"merge method {name!r} is already registered")
        METHODS[name] = MethodSpec(
            name=name,
            fn=fn,
            needs_base=needs_base,
            shared_params=shared,
            model_params=per_model,
            min_inputs=min_inputs,
            max_inputs=max_inputs,
            random=random,
            task_vector=task_vector,
        )
        return fn

    return decorate


# ---------------------------------------------------------------------------------------------
# Methods


@register("linear", needs_base=False, shared={"normalize": True}, per_model={"weight": REQUIRED})
def linear(group: TensorGroup) -> Tensor:
    first = group.tensors[0]
    acc_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    weights = torch.tensor([p["weight"] for p in group.params], dtype=acc_dtype)
    result = torch.zeros(first.shape, dtype=acc_dtype)
    for tensor, weight in zip(group.tensors, weights, strict=True):
        result.addcmul_(tensor, weight)
    if group.shared["normalize"]:
        result.div_(weights.sum())
    return result.to(first.dtype)


@register(
    "task_arithmetic",
    needs_base=True,
    shared={**_GTA_SHARED, "normalize": False, "rescale": False},
    per_model=_GTA_MODEL,
    task_vector=True,
)
def task_arithmetic(group: TensorGroup) -> Tensor:
    return _generalized_task_arithmetic(group, sparsify=None, consensus=False)


@register(
    "ties",
    needs_base=True,
    shared={**_GTA_SHARED, "normalize": True, "rescale": False},
    per_model=_GTA_MODEL,
    task_vector=True,
)
def ties(group: TensorGroup) -> Tensor:
    return _generalized_task_arithmetic(group, sparsify="magnitude", consensus=True)


@register(
    "dare_ties",
    needs_base=True,
    shared={**_GTA_SHARED, "normalize": False, "rescale": True},
    per_model=_GTA_MODEL,
    random=True,
    task_vector=True,
)
def dare_ties(group: TensorGroup) -> Tensor:
    return _generalized_task_arithmetic(group, sparsify="random", consensus=True)


@register(
    "dare_linear",
    needs_base=True,
    shared={**_GTA_SHARED, "normalize": False, "rescale": True},
    per_model=_GTA_MODEL,
    random=True,
    task_vector=True,
)
def dare_linear(group: TensorGroup) -> Tensor:
    return _generalized_task_arithmetic(group, sparsify="random", consensus=False)


@register(
    "breadcrumbs",
    needs_base=True,
    shared={**_GTA_SHARED, "normalize": False, "rescale": False},
    per_model={**_GTA_MODEL, "gamma": 0.01},
    task_vector=True,
)
def breadcrumbs(group: TensorGroup) -> Tensor:
    return _generalized_task_arithmetic(group, sparsify="magnitude_outliers", consensus=False)


@register(
    "slerp",
    needs_base=True,
    shared={"t": REQUIRED},
    per_model={},
    min_inputs=2,
    max_inputs=2,
)
def slerp(group: TensorGroup) -> Tensor:
    assert group.base is not None
    return slerp_tensors(float(group.shared["t"]), group.base, group.tensors[0])


@register(
    "model_stock",
    needs_base=True,
    shared={"filter_wise": False},
    per_model={},
    min_inputs=3,
)
def model_stock(group: TensorGroup) -> Tensor:
    assert group.base is not None
    w0, ws = group.base, list(group.tensors)
    out_shape = w0.shape
    if group.shared["filter_wise"]:
        if w0.dim() == 1:
            w0, ws = w0.unsqueeze(0), [w.unsqueeze(0) for w in ws]
    else:
        w0, ws = w0.reshape(-1), [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = torch.norm(a, dim=-1) * torch.norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1, 1))
    cos_theta = torch.stack(cosines).mean(dim=0).unsqueeze(-1)
    count = len(ws)
    denominator = 1 + (count - 1) * cos_theta
    # No finite interpolation exists at the singularity: keep the base there, as mergekit does.
    singular = denominator.abs() < 1e-6
    safe = torch.where(singular, torch.ones_like(denominator), denominator)
    t = torch.where(singular, torch.zeros_like(cos_theta), count * cos_theta / safe)
    average = sum(ws) / count
    return (t * average + (1 - t) * w0).reshape(out_shape)


# ---------------------------------------------------------------------------------------------
# Shared machinery


def _generalized_task_arithmetic(
    group: TensorGroup, *, sparsify: str | None, consensus: bool
) -> Tensor:
    base = group.base
    assert base is not None
    if not group.tensors:
        return base
    shared = group.shared
    deltas = base.new_empty((len(group.tensors), *base.shape))
    for index, (tensor, params) in enumerate(zip(group.tensors, group.params, strict=True)):
        torch.sub(tensor, base, out=deltas[index])
        if sparsify is not None:
            deltas[index] = sparsify_tensor(
                deltas[index],
                method=sparsify,
                density=float(params["density"]),
                gamma=float(params.get("gamma", 0.0)),
                rescale=bool(shared["rescale"]),
                generator=_generator(group.seed, group.name, index)
                if sparsify == "random"
                else None,
            )
    weights = torch.tensor([p["weight"] for p in group.params], dtype=deltas.dtype)
    weights = weights.reshape((-1,) + (1,) * base.dim())
    deltas.mul_(weights)
    if consensus:
        # Sign election: an entry counts when its sign agrees with the sign of the weighted sum.
        majority = deltas.sum(dim=0) >= 0
        mask = deltas.sign() == (majority.to(deltas.dtype) * 2 - 1)
        del majority
        deltas.mul_(mask)
        mixed = deltas.sum(dim=0)
        divisor = (weights * mask).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    del deltas
    if shared["normalize"]:
        mixed /= divisor
    if shared["lambda"] != 1:
        mixed *= shared["lambda"]
    return mixed.add_(base)


def sparsify_tensor(
    delta: Tensor,
    *,
    method: str,
    density: float,
    gamma: float = 0.0,
    rescale: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sparsify one task vector as mergekit's ``sparsify`` does (see the module notes)."""
    if density >= 1:
        return delta
    numel = delta.numel()
    if method == "random":
        # torch.bernoulli has no float16 CPU kernel: mergekit works in float32 then.
        work = delta.dtype if delta.dtype == torch.bfloat16 else torch.float32
        probs = torch.full(delta.shape, density, dtype=work)
        mask = torch.bernoulli(probs, generator=generator)
        return _rescaled_masked(delta.to(work), mask, rescale).to(delta.dtype)
    if numel == 0:
        return delta
    # Magnitudes compare the same in bf16/fp16 as after mergekit's cast to float32: no cast.
    magnitudes = delta.abs().reshape(-1)
    if method == "magnitude":
        keep = _top_k(magnitudes, max(1, int(density * numel)))
    elif method == "magnitude_outliers":
        target = int(density * numel)
        n_top = int(gamma * numel)
        n_bottom = max(0, numel - target - n_top)
        keep = _rank_window(magnitudes, n_bottom, n_bottom + target)
    else:
        raise ValueError(f"unknown sparsification {method!r}")
    mask = keep.reshape(delta.shape).to(delta.dtype)
    return _rescaled_masked(delta, mask, rescale)


def _rescaled_masked(tensor: Tensor, mask: Tensor, rescale: bool, eps: float = 1e-7) -> Tensor:
    masked = tensor * mask
    if not rescale:
        return masked
    before, after = tensor.abs().sum(), masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def _top_k(values: Tensor, k: int) -> Tensor:
    """Mask of the k largest entries; among entries equal to the k-th largest, lowest index."""
    n = values.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool)
    cut = _kth_smallest(values, n - k + 1)
    keep = values > cut
    ties = (values == cut).nonzero().squeeze(1)
    keep[ties[: k - int(torch.count_nonzero(keep))]] = True
    return keep


def _rank_window(values: Tensor, lo: int, hi: int) -> Tensor:
    """Mask of the entries whose position in ascending order is in ``[lo, hi)``.

    Equal values are ordered by index. Two selections and a few comparisons replace a sort.
    """
    n = values.numel()
    if hi <= lo:
        return torch.zeros(n, dtype=torch.bool)
    if lo <= 0 and hi >= n:
        return torch.ones(n, dtype=torch.bool)
    keep = torch.ones(n, dtype=torch.bool)
    if hi < n:
        cut = _kth_smallest(values, hi)
        keep = values < cut
        ties = (values == cut).nonzero().squeeze(1)
        keep[ties[: hi - int(torch.count_nonzero(keep))]] = True
    if lo > 0:
        cut = _kth_smallest(values, lo + 1)
        below = values < cut
        keep &= ~below
        ties = (values == cut).nonzero().squeeze(1)
        keep[ties[: lo - int(torch.count_nonzero(below))]] = False
    return keep


_SAMPLE = 1 << 16


def _kth_smallest(values: Tensor, k: int) -> Tensor:
    """The k-th smallest value (1-based), exactly.

    For large tensors a sample brackets the answer, one pass counts what lies below the
    bracket, and the selection runs on the entries inside it only (a few percent). If the
    bracket misses, the full selection runs: the result is exact either way.
    """
    n = values.numel()
    if n <= _SAMPLE:
        return torch.kthvalue(values, k).values
    size = min(_SAMPLE, n // 4)
    generator = torch.Generator().manual_seed(n)
    sample = values[torch.randint(n, (size,), generator=generator)].float().sort().values
    q, spread = (k - 0.5) / n, 4 / size**0.5  # the bracket is ±4 standard errors wide
    lo = sample[max(int((q - spread) * size), 0)].to(values.dtype)
    hi = sample[min(int((q + spread) * size), size - 1)].to(values.dtype)
    n_below = int(torch.count_nonzero(values < lo))
    band = values[(values >= lo) & (values <= hi)]
    if n_below < k <= n_below + band.numel():
        return torch.kthvalue(band, k - n_below).values
    return torch.kthvalue(values, k).values


def slerp_tensors(t: float, v0: Tensor, v1: Tensor, dot_threshold: float = 0.9995) -> Tensor:
    """Spherical interpolation of two whole tensors, in float32 (float64 for float64 inputs)."""
    work = torch.float64 if v0.dtype == torch.float64 else torch.float32
    a, b = v0.reshape(-1).to(work), v1.reshape(-1).to(work)
    if a.numel() == 0:
        return v0.clone()
    eps = 1e-8
    norm_a, norm_b = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    norm_a = torch.where(norm_a > eps, norm_a, 1)
    norm_b = torch.where(norm_b > eps, norm_b, 1)
    dot = ((a / norm_a) * (b / norm_b)).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:
        coef_a, coef_b = 1 - t, t
    else:
        theta = torch.acos(dot)
        sin_theta = torch.sin(theta)
        coef_a = torch.sin((1 - t) * theta) / sin_theta
        coef_b = torch.sin(t * theta) / sin_theta
    return (coef_a * a + coef_b * b).to(v0.dtype).reshape(v0.shape)


def _generator(seed: int, name: str, index: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}\0{name}\0{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
