"""The merge engine: resolve inputs, check they can be merged, stream the merge to disk.

Everything is checked before the first tensor is merged (architecture, parameter names and
shapes, vocabulary, tokenizer, file integrity). NaN/Inf are checked per tensor as it is read;
since the output is written to a temporary directory next to ``out_dir`` and renamed into place
only when complete, a failure at any point leaves nothing behind.

Memory and speed: one tensor group (the inputs of one output tensor) is read at a time. Methods
with a row-wise form (``linear``, ``task_arithmetic``, ``ties``) merge it in small chunks of
rows that stay in cache and write each chunk straight to the output shard, so the merged tensor
and the per-model task vectors, signs and masks never exist whole. Only torch and the
safetensors header reader are needed for full models (no transformers, no peft).
"""

from __future__ import annotations

import contextlib
import filecmp
import functools
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import yaml

from mashup.errors import MashupError
from mashup.files import share_like_umask
from mashup.merge.config import MergeConfig
from mashup.merge.io import (
    TORCH_DTYPES,
    Checkpoint,
    OutputTensor,
    ShardedWriter,
    check_finite,
    open_checkpoint,
    parse_size,
)
from mashup.merge.methods import METHODS, REQUIRED, MethodSpec, TensorGroup, row_chunks
from mashup.zoo.fingerprint import VOCAB_FILES, Fingerprint, tokenizer_digest

DEFAULT_MAX_SHARD_SIZE = "5GB"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "chat_template.jinja",
    "chat_template.json",
)


@dataclass
class MergeResult:
    out_dir: Path
    kind: Literal["model", "adapter"]
    method: str
    n_tensors: int
    seconds: float


@dataclass
class Input:
    ref: str  # as written in the config
    path: Path


def merge(
    cfg: MergeConfig,
    out_dir: Path | str,
    zoo: Path | str | None = None,
    force: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    *,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> MergeResult:
    """Merge the models of ``cfg`` into ``out_dir`` (a HF model dir, or a PEFT adapter dir)."""
    start = time.perf_counter()
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not force:
        raise MashupError(f"{out_dir}: already exists", hint="pass --force to replace it")
    spec = METHODS[cfg.merge_method]
    models = [Input(m.model, resolve_model(m.model, zoo)) for m in cfg.models]
    base = Input(cfg.base_model, resolve_model(cfg.base_model, zoo)) if cfg.base_model else None
    adapters = [m for m in models if (m.path / "adapter_config.json").is_file()]
    if base is not None and (base.path / "adapter_config.json").is_file():
        raise MashupError(f"{base.path}: base_model must be a full model, not a PEFT adapter")
    if cfg.random_seed is None and spec.random:
        # Draw the seed once and record it in mashup_merge.yaml, so the merge can be repeated.
        cfg = cfg.model_copy(update={"random_seed": secrets.randbits(31)})

    if adapters:
        if len(adapters) != len(models) or (base is not None and base in adapters):
            raise MashupError(
                f"{adapters[0].path}: cannot merge PEFT adapters with full models",
                hint="list only adapters under models (the full model goes in base_model)",
            )
        if cfg.lora_mode is None:
            raise MashupError(
                f"{adapters[0].path} is a PEFT adapter: set lora_mode",
                hint="lora_mode: ab_mean (average A and B), delta (merge B·A) or cat (exact)",
            )
        from mashup.merge.lora import merge_adapters

        with staging(out_dir, force) as tmp:
            kind, n_tensors = merge_adapters(
                cfg,
                spec,
                models,
                base,
                tmp,
                allow_pickle=allow_pickle,
                progress=progress,
                max_shard_bytes=parse_size(max_shard_size),
            )
            write_card(tmp, cfg, kind, title=out_dir.name)
    else:
        if cfg.lora_mode is not None:
            raise MashupError(
                f"lora_mode: {cfg.lora_mode} needs PEFT adapters, but {models[0].path} is a "
                "full model",
                hint="remove lora_mode to merge full models",
            )
        with staging(out_dir, force) as tmp:
            n_tensors = _merge_models(
                cfg, spec, models, base, tmp, allow_pickle, progress, parse_size(max_shard_size)
            )
            write_card(tmp, cfg, "model", title=out_dir.name)
        kind = "model"
    return MergeResult(
        out_dir=out_dir,
        kind=kind,
        method=cfg.merge_method,
        n_tensors=n_tensors,
        seconds=round(time.perf_counter() - start, 3),
    )


# ---------------------------------------------------------------------------------------------
# Inputs


def resolve_model(ref: str, zoo: Path | str | None) -> Path:
    """A path as given, else the zoo entry of that name."""
    path = Path(ref).expanduser()
    if path.exists():
        return path.resolve()
    if zoo is not None and (Path(zoo) / "catalog.sqlite").is_file():
        from mashup.zoo import Zoo

        catalog = Zoo.open(Path(zoo), create=False)
        if ref in catalog:
            return Path(catalog.get(ref).path)
    where = f" nor an entry of the zoo {zoo}" if zoo is not None else ""
    raise MashupError(
        f"{ref}: no such file or directory{where}",
        hint="give a model directory, or the name of a zoo entry (see mashup zoo list)",
    )


def merge_inputs(cfg: MergeConfig, spec: MethodSpec, models: list[Input], base: Input | None):
    """(inputs other than the base, base) as mergekit orders them, with per-input params.

    A base listed under ``models`` is the base; one that is not is added. For ``linear`` the
    base is not special: it is one more input, needing a weight, as in mergekit.
    """
    if spec.needs_base and base is None:
        raise MashupError(f"merge_method {spec.name} needs a base_model")
    inputs = list(models)
    if base is not None and base.ref not in [m.ref for m in models]:
        inputs.append(base)
    count = len(inputs)
    if count < spec.min_inputs or (spec.max_inputs is not None and count > spec.max_inputs):
        wanted = (
            f"exactly {spec.min_inputs}"
            if spec.max_inputs == spec.min_inputs
            else f"at least {spec.min_inputs}"
        )
        raise MashupError(
            f"merge_method {spec.name} needs {wanted} models counting the base, got {count}"
        )
    if spec.needs_base:
        others = [m for m in inputs if base is None or m.ref != base.ref]
    else:
        others, base = inputs, None
    params = [model_params(cfg, spec, m.ref) for m in others]
    return others, base, params


def model_params(cfg: MergeConfig, spec: MethodSpec, ref: str) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, default in spec.model_params.items():
        value = cfg.model_param(ref, name, default)
        if value is REQUIRED:
            raise MashupError(
                f"model {ref}: parameter {name!r} is required by merge_method {spec.name}",
                hint=f"add parameters: {{{name}: ...}} to the model, or to the global parameters",
            )
        params[name] = value
    return params


def shared_params(cfg: MergeConfig, spec: MethodSpec) -> dict[str, Any]:
    shared: dict[str, Any] = {}
    for name, default in spec.shared_params.items():
        value = cfg.shared(name, default)
        if value is REQUIRED:
            raise MashupError(
                f"merge_method {spec.name} needs the global parameter {name!r}",
                hint=f"add parameters: {{{name}: ...}}",
            )
        shared[name] = value
    return shared


def check_compatible(inputs: list[Input], checkpoints: dict[str, Checkpoint]) -> None:
    """Refuse models that cannot be merged, naming both and every reason.

    The fingerprint is built from the headers already read; tokenizers are compared byte for
    byte first and hashed (the zoo's vocabulary hash) only when their files differ.
    """
    reference = _fingerprint(inputs[0], checkpoints[inputs[0].ref])
    for other in inputs[1:]:
        reasons = reference.mismatches(_fingerprint(other, checkpoints[other.ref]))
        if not _same_tokenizer_files(inputs[0].path, other.path):
            mine, theirs = _tokenizer_hash(inputs[0].path), _tokenizer_hash(other.path)
            if mine is not None and theirs is not None and mine != theirs:
                reasons.append(f"different tokenizer: hash {mine[:12]} vs {theirs[:12]}")
        if reasons:
            raise MashupError(
                f"cannot merge {other.path} with {inputs[0].path}: {'; '.join(reasons)}",
                hint="merge only fine-tunes of the same model",
            )


def _fingerprint(item: Input, checkpoint: Checkpoint) -> Fingerprint:
    config = read_config(item.path)
    architectures = config.get("architectures") or [config.get("model_type")]
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    vocab_size = config.get("vocab_size", text_config.get("vocab_size"))
    return Fingerprint(
        kind="model",
        architecture=architectures[0],
        param_shapes={n: list(r.shape) for n, r in checkpoint.tensors.items()},
        dtype=None,
        vocab_size=int(vocab_size) if isinstance(vocab_size, int) else None,
        tokenizer_hash=None,  # compared by check_compatible
        base_model=None,
        adapter=None,
    )


def _tokenizer_files(path: Path) -> list[Path]:
    """The files the zoo's tokenizer hash reads."""
    if (path / "tokenizer.json").is_file():
        return [path / "tokenizer.json"]
    return [path / name for name in VOCAB_FILES if (path / name).is_file()]


def _same_tokenizer_files(a: Path, b: Path) -> bool:
    files_a, files_b = _tokenizer_files(a), _tokenizer_files(b)
    if [f.name for f in files_a] != [f.name for f in files_b]:
        return False
    return all(filecmp.cmp(x, y, shallow=False) for x, y in zip(files_a, files_b, strict=True))


@functools.lru_cache(maxsize=64)
def _tokenizer_hash_cached(path: Path, stamp: tuple[tuple[int, int], ...]) -> str | None:
    return tokenizer_digest(path)[0]


def _tokenizer_hash(path: Path) -> str | None:
    # Keyed by size and mtime too, so a file changed within the process is hashed again.
    stamp = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in _tokenizer_files(path))
    return _tokenizer_hash_cached(path, stamp)


def read_config(path: Path) -> dict[str, Any]:
    config = path / "config.json"
    if not config.is_file():
        raise MashupError(f"{config}: missing (not a Hugging Face model directory)")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MashupError(f"{config}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise MashupError(f"{config}: expected a JSON object")
    return data


# ---------------------------------------------------------------------------------------------
# Full models


def _merge_models(
    cfg: MergeConfig,
    spec: MethodSpec,
    models: list[Input],
    base: Input | None,
    out: Path,
    allow_pickle: bool,
    progress: bool,
    max_shard_bytes: int,
) -> int:
    others, method_base, params = merge_inputs(cfg, spec, models, base)
    shared = shared_params(cfg, spec)
    every = ([method_base] if method_base else []) + others
    for item in every:
        if not item.path.is_dir():
            raise MashupError(f"{item.path}: not a model directory")
        read_config(item.path)
    checkpoints = {m.ref: open_checkpoint(m.path, allow_pickle=allow_pickle) for m in every}
    check_compatible(every, checkpoints)
    reference = method_base or others[0]
    ref_checkpoint = checkpoints[reference.ref]
    compute = TORCH_DTYPES[cfg.dtype] if cfg.dtype else None
    out_dtype = TORCH_DTYPES[cfg.out_dtype] if cfg.out_dtype else None

    plan: list[OutputTensor] = []
    for name, ref in ref_checkpoint.tensors.items():
        if ref.dtype.is_floating_point:
            dtypes = [checkpoints[m.ref].tensors[name].dtype for m in every]
            work = compute or _promote(dtypes)
            plan.append(OutputTensor(name, ref.shape, out_dtype or work))
        else:  # integer buffers are not merged: they come from the reference model
            plan.append(OutputTensor(name, ref.shape, ref.dtype))
    writer = ShardedWriter(out, plan, max_shard_bytes)
    with _progress(progress, len(plan), f"merging ({spec.name})") as advance:
        try:
            for target in (writer._planned[n] for n in writer.order):
                writer.write(
                    target.name,
                    _merge_tensor(
                        target,
                        spec,
                        others,
                        method_base,
                        params,
                        shared,
                        checkpoints,
                        compute,
                        cfg.random_seed or 0,
                    ),
                )
                advance()
        finally:
            writer.abort()
    writer.finish()
    config_source = method_base or others[0]
    write_config(config_source.path, out, cfg.out_dtype or cfg.dtype or _dominant(plan))
    copy_tokenizer(config_source.path, out)
    return len(plan)


def _merge_tensor(
    target: OutputTensor,
    spec: MethodSpec,
    others: list[Input],
    base: Input | None,
    params: list[dict[str, Any]],
    shared: dict[str, Any],
    checkpoints: dict[str, Checkpoint],
    compute: torch.dtype | None,
    seed: int,
) -> Iterator[torch.Tensor]:
    """The merged tensor, whole or (for methods with a row-wise form) as row chunks."""
    name = target.name
    every = ([base] if base is not None else []) + others

    def check_inputs() -> None:
        for item in every:
            checkpoint = checkpoints[item.ref]
            check_finite(checkpoint.read(name), name, checkpoint.tensors[name].file)

    if not target.dtype.is_floating_point:
        reference = base or others[0]
        tensor = checkpoints[reference.ref].read(name)
        yield tensor
        return
    raw = {item.ref: checkpoints[item.ref].read(name) for item in every}
    work = compute or _promote([t.dtype for t in raw.values()])
    group = TensorGroup(
        name=name,
        tensors=[raw[m.ref].to(work) for m in others],
        base=raw[base.ref].to(work) if base is not None else None,
        params=params,
        shared=shared,
        seed=seed,
    )
    del raw
    if spec.rows is None or len(target.shape) == 0:
        check_inputs()
        yield spec.fn(group).to(target.dtype)
        return
    # A NaN or Inf in any input makes the merged values non-finite (every method with a
    # row-wise form multiplies and adds every input), so one check of each merged chunk stands
    # for checking every input; only then are the inputs checked, to name the file.
    rows = spec.rows(group)
    suspect = True
    for start, stop in row_chunks(target.shape):
        merged = rows(start, stop)
        if suspect and not torch.isfinite(merged.sum()):
            check_inputs()  # raises naming the file, unless the finite inputs overflowed
            suspect = False
        yield merged.to(target.dtype)


def _promote(dtypes: list[torch.dtype]) -> torch.dtype:
    result = dtypes[0]
    for dtype in dtypes[1:]:
        result = torch.promote_types(result, dtype)
    return result


def _dominant(plan: list[OutputTensor]) -> str:
    sizes: dict[torch.dtype, int] = {}
    for tensor in plan:
        sizes[tensor.dtype] = sizes.get(tensor.dtype, 0) + tensor.nbytes
    dtype = max(sizes, key=lambda d: sizes[d])
    return str(dtype).removeprefix("torch.")


# ---------------------------------------------------------------------------------------------
# Output directory


@contextlib.contextmanager
def staging(out_dir: Path, force: bool) -> Iterator[Path]:
    """A temporary directory next to ``out_dir``, renamed into place when the block succeeds."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        share_like_umask(tmp)
        if out_dir.exists():
            if not force:
                raise MashupError(f"{out_dir}: already exists", hint="pass --force to replace it")
            old = out_dir.parent / f".{out_dir.name}.old-{secrets.token_hex(4)}"
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_config(source: Path, out: Path, dtype: str) -> None:
    config = read_config(source)
    config["dtype"] = dtype
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generation = source / "generation_config.json"
    if generation.is_file():
        shutil.copy2(generation, out / generation.name)


def copy_tokenizer(source: Path, out: Path) -> None:
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)


def write_card(out: Path, cfg: MergeConfig, kind: str, title: str) -> None:
    refs = ([cfg.base_model] if cfg.base_model else []) + [
        m.model for m in cfg.models if m.model != cfg.base_model
    ]
    front = {
        "base_model": refs,
        "base_model_relation": "merge",
        "library_name": "peft" if kind == "adapter" else "transformers",
        "tags": ["mashup", "merge"],
        "merge_method": cfg.merge_method,
    }
    if cfg.lora_mode:
        front["lora_mode"] = cfg.lora_mode
    config_yaml = cfg.to_yaml()
    what = "PEFT adapter" if kind == "adapter" else "model"
    body = (
        f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n# {title}\n\n"
        f"This {what} is a merge made with mashup using the `{cfg.merge_method}` method"
        + (f" (LoRA mode `{cfg.lora_mode}`)" if cfg.lora_mode else "")
        + ".\n\n## Merged models\n\n"
        + "".join(f"- {ref}\n" for ref in refs)
        + f"\n## Configuration\n\n```yaml\n{config_yaml}```\n"
    )
    (out / "README.md").write_text(body, encoding="utf-8")
    (out / "mashup_merge.yaml").write_text(config_yaml, encoding="utf-8")


@contextlib.contextmanager
def _progress(enabled: bool, total: int, label: str) -> Iterator[Any]:
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from mashup.console import err_console

    with Progress(
        f"[bold]{label}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
