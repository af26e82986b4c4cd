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

``linear``, ``task_arithmetic`` and ``ties`` also have a row-wise form (``MethodSpec.rows``)
that the engine uses for tensors of one or more dimensions: the same operations on chunks of
rows, so the same bits (tested), in bounded memory. TIES's magnitude cut-off is a property of
the whole task vector, so it is found first: for bfloat16/float16 by a histogram of the bit
patterns, exact and in one pass; otherwise by the sampled selection below.

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
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

REQUIRED = object()
# Elements per chunk in row-wise merges: below ATen's parallel grain (32768), so every op runs
# on the calling thread. On a shared machine a 2-thread op waits for its second thread whenever
# another process holds that core; small single-threaded ops in cache avoid those stalls.
CHUNK_ELEMENTS = 16384

# ``rows(start, stop)`` returns the merged rows ``[start, stop)`` (first dimension) in the
# compute dtype. It may keep state between calls: call it once per range, in increasing order,
# covering every row.
RowMerge = Callable[[int, int], Tensor]


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
    # Optional row-wise form of ``fn`` (see ``RowMerge``): same result, bounded memory.
    rows: Callable[[TensorGroup], RowMerge] | None = None
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


def register_rows(name: str) -> Callable[[Callable[[TensorGroup], RowMerge]], Any]:
    """Attach a row-wise form to the registered method ``name``."""

    def decorate(rows: Callable[[TensorGroup], RowMerge]) -> Callable[[TensorGroup], RowMerge]:
        METHODS[name] = replace(METHODS[name], rows=rows)
        return rows

    return decorate


def row_chunks(shape: tuple[int, ...] | torch.Size) -> list[tuple[int, int]]:
    """Ranges of whole rows of about ``CHUNK_ELEMENTS`` elements covering the first dim."""
    row = math.prod(shape[1:])
    step = max(1, CHUNK_ELEMENTS // max(row, 1))
    return [(start, min(start + step, shape[0])) for start in range(0, shape[0], step)]


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


@register_rows("linear")
def linear_rows(group: TensorGroup) -> RowMerge:
    """``linear`` on a range of rows: the same operations on slices, so the same bits."""
    first = group.tensors[0]
    acc_dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    weights = torch.tensor([p["weight"] for p in group.params], dtype=acc_dtype)
    total = weights.sum()
    normalize = group.shared["normalize"]

    def rows(start: int, stop: int) -> Tensor:
        result = torch.zeros(first[start:stop].shape, dtype=acc_dtype)
        for tensor, weight in zip(group.tensors, weights, strict=True):
            result.addcmul_(tensor[start:stop], weight)
        if normalize:
            result.div_(total)
        return result.to(first.dtype)

    return rows


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


@register_rows("task_arithmetic")
def task_arithmetic_rows(group: TensorGroup) -> RowMerge:
    return _task_arithmetic_rows(group, consensus=False)


@register_rows("ties")
def ties_rows(group: TensorGroup) -> RowMerge:
    return _task_arithmetic_rows(group, consensus=True)


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
    return _combine(deltas, weights, base, shared, consensus)


def _combine(
    deltas: Tensor, weights: Tensor, base: Tensor, shared: dict[str, Any], consensus: bool
) -> Tensor:
    """Weight the (sparsified) task vectors, elect signs, add them up, add to the base."""
    if not bool((weights == 1).all()):  # weights of 1 (TIES's usual) leave them as they are
        deltas.mul_(weights)
    if consensus:
        # Sign election: an entry counts when its sign agrees with the sign of the weighted sum
        # (+1 where the sum is >= 0). One product with the elected ±1 and one comparison (zeros
        # and NaN fail it) instead of a select over both comparisons: the same mask, cheaper.
        elected = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
        mask = torch.mul(deltas, elected) > 0
        del elected
        deltas.mul_(mask)
        mixed = deltas.sum(dim=0)
        if shared["normalize"]:
            divisor = (weights * mask).sum(dim=0)
            mixed /= divisor.masked_fill_(divisor == 0, 1)
    else:
        mixed = deltas.sum(dim=0)
        if shared["normalize"]:
            divisor = weights.sum(dim=0)
            mixed /= divisor.masked_fill_(divisor.abs() < 1e-8, 1)
    del deltas
    if shared["lambda"] != 1:
        mixed *= shared["lambda"]
    return mixed.add_(base)


def _task_arithmetic_rows(group: TensorGroup, *, consensus: bool) -> RowMerge:
    """Row-wise ``task_arithmetic`` (``consensus=False``) or ``ties`` (magnitude + consensus).

    The magnitude cut-off of each task vector is a property of the whole tensor, so it is found
    first (chunk by chunk, see ``_select``); the rows are then merged with the same operations
    as ``_generalized_task_arithmetic``. Entries tied with the cut-off are kept lowest index
    first, as ``_top_k`` does, by spending each model's budget of ties in row order.
    """
    base = group.base
    assert base is not None
    sparsify = consensus  # ties sparsifies by magnitude; task_arithmetic does not
    shared = group.shared
    flat_base = base.reshape(-1)
    numel = base.numel()
    cuts: list[Tensor | None] = []
    budgets: list[int] = []
    for tensor, params in zip(group.tensors, group.params, strict=True):
        density = float(params["density"])
        k = max(1, int(density * numel))
        if not sparsify or density >= 1 or numel == 0 or k >= numel:
            cuts.append(None)
            budgets.append(0)
            continue
        flat = tensor.reshape(-1)
        select = _select_16bit if base.dtype in (torch.bfloat16, torch.float16) else _select
        cut, _, n_greater = select(
            lambda a, b, x=flat: (x[a:b] - flat_base[a:b]).abs(),
            lambda i, x=flat: (x[i] - flat_base[i]).abs(),
            numel,
            numel - k + 1,
        )
        cuts.append(cut)
        budgets.append(k - n_greater)
    weights = torch.tensor([p["weight"] for p in group.params], dtype=base.dtype)
    weights = weights.reshape((-1,) + (1,) * base.dim())
    position = 0

    def rows(start: int, stop: int) -> Tensor:
        nonlocal position
        if start != position:
            raise RuntimeError(f"rows requested out of order: {start} after {position}")
        position = stop
        part = base[start:stop]
        deltas = part.new_empty((len(group.tensors), *part.shape))
        for index, tensor in enumerate(group.tensors):
            delta = deltas[index]
            torch.sub(tensor[start:stop], part, out=delta)
            cut = cuts[index]
            if cut is None:
                continue
            magnitudes = delta.abs()
            keep = magnitudes > cut
            if budgets[index] > 0:
                tied = (magnitudes == cut).reshape(-1).nonzero().squeeze(1)[: budgets[index]]
                keep.view(-1)[tied] = True
                budgets[index] -= tied.numel()
            delta.mul_(keep)  # as the whole-tensor path's multiply by a 0/1 mask
        return _combine(deltas, weights, part, shared, consensus)

    return rows


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
    cut, n_less, n_greater = _select(*_over(values), n, n - k + 1)
    if n - n_less == k:  # the k kept are exactly those >= the cut: every tie is kept
        return values >= cut
    keep = values > cut
    ties = (values == cut).nonzero().squeeze(1)
    keep[ties[: k - n_greater]] = True
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
        cut, n_less, _ = _select(*_over(values), n, hi)
        keep = values < cut
        ties = (values == cut).nonzero().squeeze(1)
        keep[ties[: hi - n_less]] = True
    if lo > 0:
        cut, n_less, _ = _select(*_over(values), n, lo + 1)
        keep &= ~(values < cut)
        ties = (values == cut).nonzero().squeeze(1)
        keep[ties[: lo - n_less]] = False
    return keep


_SAMPLE = 1 << 14  # sample size for the selection bracket (also below the parallel grain)


def _kth_smallest(values: Tensor, k: int) -> Tensor:
    """The k-th smallest value (1-based) of a 1-D tensor, exactly."""
    return _select(*_over(values), values.numel(), k)[0]


_HISTOGRAM_BLOCK = 1 << 20  # elements per bincount call


def _select_16bit(
    chunk: Callable[[int, int], Tensor], at: Callable[[Tensor], Tensor], n: int, k: int
) -> tuple[Tensor, int, int]:
    """``_select`` for non-negative bfloat16/float16 values (magnitudes), by counting.

    Non-negative 16-bit floats order like their bit patterns read as int16 (NaN above Inf, as
    torch sorts them), so a histogram of the patterns gives the k-th smallest and the counts
    below and above it exactly, in one pass and without a selection.
    """
    del at  # no sample needed
    histogram = torch.zeros(1 << 15, dtype=torch.int64)
    dtype = None
    for block in range(0, n, _HISTOGRAM_BLOCK):
        stop = min(block + _HISTOGRAM_BLOCK, n)
        starts = range(block, stop, CHUNK_ELEMENTS)
        parts = [chunk(a, min(a + CHUNK_ELEMENTS, stop)) for a in starts]
        dtype = parts[0].dtype
        patterns = torch.cat(parts).view(torch.int16)
        histogram += torch.bincount(patterns, minlength=1 << 15)
    cumulative = histogram.cumsum(0)
    index = int(torch.searchsorted(cumulative, k))
    cut = torch.tensor(index, dtype=torch.int16).view(dtype)
    n_less = int(cumulative[index - 1]) if index > 0 else 0
    return cut, n_less, n - int(cumulative[index])


def _over(values: Tensor) -> tuple[Callable[[int, int], Tensor], Callable[[Tensor], Tensor]]:
    return (lambda start, stop: values[start:stop]), (lambda indices: values[indices])


def _select(
    chunk: Callable[[int, int], Tensor], at: Callable[[Tensor], Tensor], n: int, k: int
) -> tuple[Tensor, int, int]:
    """(k-th smallest value, how many are smaller, how many larger) of n values, exactly.

    ``chunk(a, b)`` gives the values ``[a, b)`` of a flat sequence and ``at(indices)`` the values
    at those positions, so the values never need to exist as one tensor. A sample brackets the
    answer; one chunked pass counts what lies below the bracket and keeps the entries inside it
    (a few percent), and the selection runs on those only. If the bracket misses, the full
    selection runs: the result is exact either way.
    """
    if n <= 4 * _SAMPLE:
        values = chunk(0, n)
        cut = torch.kthvalue(values, k).values
        return cut, int(torch.count_nonzero(values < cut)), int(torch.count_nonzero(values > cut))
    generator = torch.Generator().manual_seed(n)
    picks = torch.randint(n, (_SAMPLE,), generator=generator)
    sample = at(picks).float()
    q, spread = (k - 0.5) / n, 4 / _SAMPLE**0.5  # the bracket is ±4 standard errors wide
    # The sample's order statistics at both ends of the bracket (two selections, not a sort).
    lo = torch.kthvalue(sample, max(int((q - spread) * _SAMPLE), 0) + 1).values
    hi = torch.kthvalue(sample, min(int((q + spread) * _SAMPLE), _SAMPLE - 1) + 1).values
    n_below, parts = 0, []
    for start in range(0, n, CHUNK_ELEMENTS):
        values = chunk(start, min(start + CHUNK_ELEMENTS, n))
        low, high = lo.to(values.dtype), hi.to(values.dtype)
        below = values < low
        n_below += int(torch.count_nonzero(below))
        parts.append(values[~below & (values <= high)])
    band = torch.cat(parts)
    if n_below < k <= n_below + band.numel():
        cut = torch.kthvalue(band, k - n_below).values
        n_less = n_below + int(torch.count_nonzero(band < cut))
        n_greater = n - n_below - band.numel() + int(torch.count_nonzero(band > cut))
        return cut, n_less, n_greater
    values = torch.cat([chunk(a, min(a + CHUNK_ELEMENTS, n)) for a in range(0, n, CHUNK_ELEMENTS)])
    cut = torch.kthvalue(values, k).values
    return cut, int(torch.count_nonzero(values < cut)), int(torch.count_nonzero(values > cut))


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
