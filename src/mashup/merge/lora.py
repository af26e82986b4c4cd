"""LoRA-aware merging of PEFT adapters trained on the same base model.

Each adapter module holds ``A`` (r × in) and ``B`` (out × r); its weight update is the exact
``ΔW = B·A·s`` with ``s = alpha/r`` (``alpha/√r`` with rslora). Three modes:

* ``ab_mean`` (method ``linear``): average the A matrices and the B matrices separately with the
  weights, as the Mashup paper does. Cheap and keeps the rank, but ``mean(B)·mean(A)`` is not
  ``mean(B·A)``: the result is an adapter, not the average of the updates. Needs equal ranks,
  alphas, rslora settings and target modules.
* ``cat`` (``linear`` or ``task_arithmetic``): concatenate the ranks, folding each adapter's
  coefficient and scale into its B, so the merged adapter's ΔW is exactly ``Σ cᵢ·ΔWᵢ``. The rank
  is the sum of the ranks. Needs the same target modules.
* ``delta`` (any method): merge the exact ``ΔWᵢ``. With ``base_model`` and no ``rank`` the output
  is a full model: the method runs on ``W₀ + ΔWᵢ`` with ``W₀`` as the base (so slerp and
  model_stock work too); for ``linear`` the base is not an extra input. With ``rank: r`` the
  merged update (``merged - W₀``, or without a base the merge of the ``ΔWᵢ`` around zero, for the
  task-vector methods and ``linear``) is re-factorised by truncated SVD (``top_singular``) into a
  rank-r adapter with ``alpha = r``.

Refused, because the merge would be silently wrong: DoRA, bias adapters, rank/alpha patterns,
extra saved modules, non-LoRA PEFT types, adapters of different base models, and the mixed
settings each mode cannot express.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from mashup.errors import MashupError
from mashup.merge.config import MergeConfig
from mashup.merge.engine import (
    TOKENIZER_FILES,
    Input,
    _progress,
    check_compatible,
    copy_tokenizer,
    model_params,
    read_config,
    shared_params,
    write_config,
)
from mashup.merge.io import (
    TORCH_DTYPES,
    OutputTensor,
    ShardedWriter,
    check_finite,
    open_checkpoint,
)
from mashup.merge.methods import MethodSpec, TensorGroup

PEFT_PREFIX = "base_model.model."
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


@dataclass
class Adapter:
    input: Input
    config: dict[str, Any]
    a: dict[str, Tensor] = field(default_factory=dict)  # module key -> A
    b: dict[str, Tensor] = field(default_factory=dict)  # module key -> B

    @property
    def path(self) -> Path:
        return self.input.path

    @property
    def r(self) -> int:
        return int(self.config["r"])

    @property
    def alpha(self) -> float:
        return float(self.config.get("lora_alpha", self.r))

    @property
    def rslora(self) -> bool:
        return bool(self.config.get("use_rslora", False))

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def delta(self, module: str) -> Tensor:
        """The exact update B·A·s of one module, in float32."""
        return (self.b[module].float() @ self.a[module].float()) * self.scale


def merge_adapters(
    cfg: MergeConfig,
    spec: MethodSpec,
    models: list[Input],
    base: Input | None,
    out: Path,
    *,
    allow_pickle: bool,
    progress: bool,
    max_shard_bytes: int,
) -> tuple[str, int]:
    """Merge adapters into ``out``; returns (kind written, number of tensors)."""
    adapters = [read_adapter(m, allow_pickle) for m in models]
    _check_common(adapters)
    mode = cfg.lora_mode
    if mode == "ab_mean":
        return "adapter", _ab_mean(cfg, spec, adapters, out)
    if mode == "cat":
        return "adapter", _cat(cfg, spec, adapters, out)
    return _delta(cfg, spec, adapters, base, out, allow_pickle, progress, max_shard_bytes)


# ---------------------------------------------------------------------------------------------
# Reading and checking


def read_adapter(item: Input, allow_pickle: bool) -> Adapter:
    config_path = item.path / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MashupError(f"{config_path}: cannot read JSON ({exc})") from exc
    where = f"{item.path}"
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise MashupError(f"{where}: PEFT type {peft_type} is not LoRA; only LoRA merges")
    if config.get("use_dora"):
        raise MashupError(
            f"{where}: DoRA adapter refused (its magnitude vector does not merge like B·A)",
            hint="merge it into its base model first and merge the full models",
        )
    if config.get("bias", "none") != "none":
        raise MashupError(
            f"{where}: adapter trains biases (bias={config.get('bias')!r}); refused",
            hint="only bias='none' adapters merge exactly",
        )
    for key in ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise MashupError(f"{where}: per-module {key} is not supported in merges")
    if "r" not in config:
        raise MashupError(f"{config_path}: no rank r")
    adapter = Adapter(item, config)
    checkpoint = open_checkpoint(item.path, allow_pickle=allow_pickle, stem="adapter_model")
    for name, ref in checkpoint.tensors.items():
        tensor = checkpoint.read(name)
        check_finite(tensor, name, ref.file)
        if name.endswith(LORA_A):
            adapter.a[name[: -len(LORA_A)]] = tensor
        elif name.endswith(LORA_B):
            adapter.b[name[: -len(LORA_B)]] = tensor
        else:
            raise MashupError(
                f"{ref.file}: tensor {name!r} is not a LoRA A/B matrix (modules_to_save, "
                "embedding LoRA or another variant); refused",
                hint="merge adapters whose weights are only lora_A/lora_B",
            )
    if set(adapter.a) != set(adapter.b) or not adapter.a:
        raise MashupError(f"{where}: lora_A and lora_B tensors do not pair up")
    for module, a in adapter.a.items():
        b = adapter.b[module]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise MashupError(f"{where}: module {module}: A {list(a.shape)} and B {list(b.shape)}")
    return adapter


def _check_common(adapters: list[Adapter]) -> None:
    first = adapters[0]
    for other in adapters[1:]:
        mine = first.config.get("base_model_name_or_path")
        theirs = other.config.get("base_model_name_or_path")
        if mine != theirs:
            raise MashupError(
                f"cannot merge {other.path} with {first.path}: different adapter base model: "
                f"{theirs} vs {mine}",
                hint="merge only adapters trained on the same base model",
            )
        for module in set(first.a) & set(other.a):
            fa, fb, oa, ob = first.a[module], first.b[module], other.a[module], other.b[module]
            if fa.shape[1] != oa.shape[1] or fb.shape[0] != ob.shape[0]:
                raise MashupError(
                    f"cannot merge {other.path} with {first.path}: module {module} updates a "
                    f"{ob.shape[0]}×{oa.shape[1]} weight vs {fb.shape[0]}×{fa.shape[1]}"
                )


def _require_same(adapters: list[Adapter], what: str, mode: str, getter: Any) -> None:
    first = adapters[0]
    for other in adapters[1:]:
        if getter(first) != getter(other):
            raise MashupError(
                f"lora_mode {mode}: {other.path} and {first.path} have different {what} "
                f"({_short(getter(other))} vs {_short(getter(first))})",
                hint="use lora_mode: delta, which merges the exact updates of any adapters",
            )


def _short(value: Any) -> str:
    if isinstance(value, list | set | tuple):
        items = sorted(value)
        return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
    return str(value)


def _coefficients(cfg: MergeConfig, spec: MethodSpec, adapters: list[Adapter]) -> list[float]:
    """Per adapter: the factor its update gets in a linear / task-arithmetic merge."""
    weights = [float(model_params(cfg, spec, a.input.ref)["weight"]) for a in adapters]
    shared = shared_params(cfg, spec)
    factor = float(shared.get("lambda", 1.0))
    if shared.get("normalize"):
        total = sum(weights)
        if abs(total) < 1e-8:
            raise MashupError("weights sum to zero; cannot normalize")
        factor /= total
    return [w * factor for w in weights]


def _out_dtype(cfg: MergeConfig, reference: Tensor) -> torch.dtype:
    name = cfg.out_dtype or cfg.dtype
    return TORCH_DTYPES[name] if name else reference.dtype


# ---------------------------------------------------------------------------------------------
# Modes


def _ab_mean(cfg: MergeConfig, spec: MethodSpec, adapters: list[Adapter], out: Path) -> int:
    if spec.name != "linear":
        raise MashupError(
            f"lora_mode ab_mean averages A and B with merge_method linear, not {spec.name}",
            hint="set merge_method: linear, or use lora_mode: delta for other methods",
        )
    for what, getter in (
        ("target modules", lambda a: set(a.a)),
        ("ranks", lambda a: a.r),
        ("lora_alpha", lambda a: a.alpha),
        ("use_rslora settings", lambda a: a.rslora),
    ):
        _require_same(adapters, what, "ab_mean", getter)
    shared = shared_params(cfg, spec)
    params = [model_params(cfg, spec, a.input.ref) for a in adapters]
    compute = TORCH_DTYPES[cfg.dtype] if cfg.dtype else None
    tensors: dict[str, Tensor] = {}
    for module in adapters[0].a:
        for suffix, side in ((LORA_A, "a"), (LORA_B, "b")):
            inputs = [getattr(a, side)[module] for a in adapters]
            work = compute or inputs[0].dtype
            group = TensorGroup(
                name=module + suffix,
                tensors=[t.to(work) for t in inputs],
                base=None,
                params=params,
                shared=shared,
            )
            tensors[module + suffix] = spec.fn(group).to(_out_dtype(cfg, inputs[0]))
    _write_adapter(out, adapters, tensors, adapters[0].config)
    return len(tensors)


def _cat(cfg: MergeConfig, spec: MethodSpec, adapters: list[Adapter], out: Path) -> int:
    if spec.name not in ("linear", "task_arithmetic"):
        raise MashupError(
            f"lora_mode cat is exact for merge_method linear or task_arithmetic, not {spec.name}",
            hint="use lora_mode: delta for other methods",
        )
    _require_same(adapters, "target modules", "cat", lambda a: set(a.a))
    coefficients = _coefficients(cfg, spec, adapters)
    tensors: dict[str, Tensor] = {}
    rank = sum(a.r for a in adapters)
    for module in adapters[0].a:
        out_dtype = _out_dtype(cfg, adapters[0].a[module])
        a_cat = torch.cat([a.a[module].float() for a in adapters], dim=0)
        # Each adapter's coefficient and scale go into its B; the merged scale is alpha/r = 1.
        b_cat = torch.cat(
            [
                a.b[module].float() * (c * a.scale)
                for a, c in zip(adapters, coefficients, strict=True)
            ],
            dim=1,
        )
        tensors[module + LORA_A] = a_cat.to(out_dtype)
        tensors[module + LORA_B] = b_cat.to(out_dtype)
    config = {**adapters[0].config, "r": rank, "lora_alpha": rank, "use_rslora": False}
    _write_adapter(out, adapters, tensors, config)
    return len(tensors)


def _delta(
    cfg: MergeConfig,
    spec: MethodSpec,
    adapters: list[Adapter],
    base: Input | None,
    out: Path,
    allow_pickle: bool,
    progress: bool,
    max_shard_bytes: int,
) -> tuple[str, int]:
    if base is None and cfg.rank is None:
        raise MashupError(
            "lora_mode delta writes a full model, which needs base_model",
            hint="add base_model: <the adapters' base model>, or rank: r to write an adapter",
        )
    if base is None and not (spec.task_vector or spec.name == "linear"):
        raise MashupError(
            f"merge_method {spec.name} needs the base weights: add base_model to lora_mode delta"
        )
    n_inputs = len(adapters) + (1 if spec.needs_base else 0)
    if n_inputs < spec.min_inputs or (spec.max_inputs is not None and n_inputs > spec.max_inputs):
        raise MashupError(
            f"merge_method {spec.name} needs {spec.min_inputs}"
            + ("" if spec.max_inputs == spec.min_inputs else " or more")
            + f" models counting the base, got {n_inputs}"
        )
    shared = shared_params(cfg, spec)
    params = [model_params(cfg, spec, a.input.ref) for a in adapters]
    compute = TORCH_DTYPES[cfg.dtype] if cfg.dtype else None
    modules = sorted(set().union(*(set(a.a) for a in adapters)))
    seed = cfg.random_seed or 0

    def merged_delta(module: str, w0: Tensor | None) -> Tensor:
        """Merged update of one module (merged weight minus W₀), in float32."""
        deltas = [a.delta(module) if module in a.a else None for a in adapters]
        shape = next(d.shape for d in deltas if d is not None)
        deltas = [d if d is not None else torch.zeros(shape) for d in deltas]
        if w0 is None:
            work = compute or torch.float32
            zero = torch.zeros(shape, dtype=work)
            group = TensorGroup(module, [d.to(work) for d in deltas], zero, params, shared, seed)
            return spec.fn(group).float()
        work = compute or w0.dtype
        full = [(w0.float() + d).to(work) for d in deltas]
        group = TensorGroup(
            module, full, w0.to(work) if spec.needs_base else None, params, shared, seed
        )
        return spec.fn(group).float() - w0.float()

    if base is None:
        tensors = {}
        for module in modules:
            tensors.update(_svd_factors(module, merged_delta(module, None), cfg.rank, adapters))
        _write_adapter(out, adapters, tensors, _rank_config(adapters, cfg.rank, modules))
        return "adapter", len(tensors)

    read_config(base.path)
    checkpoint = open_checkpoint(base.path, allow_pickle=allow_pickle)
    check_compatible([base], {base.ref: checkpoint})
    targets: dict[str, str] = {}
    for module in modules:
        weight_name = module.removeprefix(PEFT_PREFIX) + ".weight"
        if weight_name not in checkpoint.tensors:
            raise MashupError(
                f"{base.path}: has no weight {weight_name!r} for adapter module {module}",
                hint="base_model must be the model the adapters were trained on",
            )
        expected = next(a for a in adapters if module in a.a)
        shape = (expected.b[module].shape[0], expected.a[module].shape[1])
        if tuple(checkpoint.tensors[weight_name].shape) != shape:
            raise MashupError(
                f"{base.path}: weight {weight_name} has shape "
                f"{list(checkpoint.tensors[weight_name].shape)}, the adapter {expected.path} "
                f"updates {list(shape)}"
            )
        targets[weight_name] = module

    def load(name: str) -> Tensor:
        tensor = checkpoint.read(name)
        check_finite(tensor, name, checkpoint.tensors[name].file)
        return tensor

    if cfg.rank is not None:
        tensors = {}
        for weight_name, module in targets.items():
            delta = merged_delta(module, load(weight_name))
            tensors.update(_svd_factors(module, delta, cfg.rank, adapters))
        _write_adapter(out, adapters, tensors, _rank_config(adapters, cfg.rank, modules))
        return "adapter", len(tensors)

    out_dtype = TORCH_DTYPES[cfg.out_dtype or cfg.dtype] if (cfg.out_dtype or cfg.dtype) else None
    plan = [
        OutputTensor(
            name, ref.shape, (out_dtype or ref.dtype) if ref.dtype.is_floating_point else ref.dtype
        )
        for name, ref in checkpoint.tensors.items()
    ]
    writer = ShardedWriter(out, plan, max_shard_bytes)
    with _progress(progress, len(plan), f"merging LoRA updates ({spec.name})") as advance:
        try:
            for name in writer.order:
                target = writer._planned[name]
                w0 = load(name)
                if name in targets:
                    merged = (w0.float() + merged_delta(targets[name], w0)).to(target.dtype)
                else:
                    merged = w0.to(target.dtype)
                writer.write(name, merged)
                advance()
        finally:
            writer.abort()
    writer.finish()
    dtype = cfg.out_dtype or cfg.dtype or str(plan[0].dtype).removeprefix("torch.")
    write_config(base.path, out, dtype)
    copy_tokenizer(base.path, out)
    return "model", len(plan)


def _svd_factors(module: str, delta: Tensor, rank: int | None, adapters: list[Adapter]) -> dict:
    assert rank is not None
    if rank > min(delta.shape):
        raise MashupError(
            f"rank {rank} exceeds the size of module {module} ({delta.shape[0]}×{delta.shape[1]})"
        )
    u, s, vh = top_singular(delta.float(), rank)
    root = s.sqrt()
    dtype = adapters[0].a[next(iter(adapters[0].a))].dtype
    return {
        module + LORA_B: (u * root).to(dtype).contiguous(),
        module + LORA_A: (root[:, None] * vh).to(dtype).contiguous(),
    }


# The Gram route squares the condition number: it is used only while the smallest kept singular
# value is at least this share of the largest (float32 then loses < 1e-3 of it, below the bf16
# and fp16 precision adapters are stored in); otherwise a full SVD.
_GRAM_MIN_RATIO = 1e-2


def top_singular(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``rank`` largest singular triplets ``(U, S, Vh)`` of a float matrix, largest first.

    Truncated SVD from the eigendecomposition of the smaller Gram matrix (``MᵀM`` or ``MMᵀ``):
    a tall 1536 × 576 projection takes about a quarter of a full ``torch.linalg.svd``, and the
    re-factorisation of every module dominates a ``delta``-mode merge. Only the top ``rank``
    eigenpairs are computed (LAPACK ``syevr`` through SciPy; torch has no partial ``eigh``),
    about half the time of a full ``eigh`` of a 576 × 576 Gram matrix at rank 8.
    """
    from scipy.linalg import eigh as eigh_subset

    tall = matrix.shape[0] >= matrix.shape[1]
    gram = matrix.T @ matrix if tall else matrix @ matrix.T
    n = gram.shape[0]
    eigenvalues, vectors = (
        torch.from_numpy(a)
        for a in eigh_subset(gram.numpy(), subset_by_index=[n - rank, n - 1], driver="evr")
    )
    top = vectors.flip(1)
    s = eigenvalues.flip(0).clamp_min(0).sqrt()
    if not (s[-1] >= _GRAM_MIN_RATIO * s[0] > 0):
        u, s_full, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u[:, :rank], s_full[:rank], vh[:rank]
    if tall:
        return (matrix @ top) / s, s, top.T
    return top, s, (top.T @ matrix) / s[:, None]


def _rank_config(adapters: list[Adapter], rank: int | None, modules: list[str]) -> dict:
    config = dict(adapters[0].config)
    targets = [a.config.get("target_modules") for a in adapters]
    if all(isinstance(t, list) for t in targets):
        config["target_modules"] = sorted(set().union(*map(set, targets)))
    elif any(t != targets[0] for t in targets):
        raise MashupError("adapters give target_modules as different patterns; cannot combine")
    config.update({"r": rank, "lora_alpha": rank, "use_rslora": False})
    return config


def _write_adapter(
    out: Path, adapters: list[Adapter], tensors: dict[str, Tensor], config: dict[str, Any]
) -> None:
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        out / "adapter_model.safetensors",
        metadata={"format": "pt"},
    )
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    source = adapters[0].path
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
