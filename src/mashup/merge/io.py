"""Reading checkpoints tensor by tensor and writing sharded safetensors as tensors arrive.

Inputs are read with plain positioned reads from the offsets in the safetensors header (the
header is validated first, so a truncated or corrupt file is refused before anything is
written). Memory-mapping every input, as ``safe_open`` does, would leave each touched page of
every input resident until the file is closed; a read into a fresh buffer keeps resident memory
at one tensor group. The output layout is planned from the headers before the first tensor is
merged, so each shard's header is written first and the tensor bytes follow as they are merged
(whole tensors or row chunks, through a large write buffer): nothing but the tensor or chunk in
flight is held in memory.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from mashup.errors import MashupError
from mashup.zoo.safetensors_header import read_header

WRITE_BUFFER = 8 << 20
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
SAFETENSORS_CODES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_CODES = {dtype: code for code, dtype in SAFETENSORS_CODES.items()}
TORCH_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


@dataclass
class TensorRef:
    """Where one tensor lives: a safetensors byte range, or a tensor already loaded (pickle)."""

    file: Path
    shape: tuple[int, ...]
    dtype: torch.dtype
    offset: int = 0
    nbytes: int = 0
    loaded: Tensor | None = None


@dataclass
class Checkpoint:
    """The tensors of one model or adapter directory (or weights file), read lazily."""

    path: Path
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    pickled: bool = False

    def read(self, name: str) -> Tensor:
        ref = self.tensors[name]
        if ref.loaded is not None:
            return ref.loaded
        buffer = torch.empty(ref.nbytes, dtype=torch.uint8)
        try:
            with ref.file.open("rb", buffering=0) as f:
                f.seek(ref.offset)
                got = f.readinto(memoryview(buffer.numpy()))
        except OSError as exc:
            raise MashupError(f"{ref.file}: cannot read tensor {name!r} ({exc})") from exc
        if got != ref.nbytes:
            raise MashupError(f"{ref.file}: truncated while reading tensor {name!r}")
        return buffer.view(ref.dtype).reshape(ref.shape)


def open_checkpoint(path: Path, *, allow_pickle: bool, stem: str = "model") -> Checkpoint:
    """Index the weights of a model (``stem="model"``) or adapter (``"adapter_model"``) dir."""
    single = path / f"{stem}.safetensors"
    index = path / f"{stem}.safetensors.index.json"
    if single.is_file():
        return _from_safetensors(path, [single])
    if index.is_file():
        return _from_safetensors(path, _index_shards(index))
    pickle_stem = "pytorch_model" if stem == "model" else stem
    pickles = sorted(p for p in path.glob(f"{pickle_stem}*") if p.suffix in PICKLE_SUFFIXES)
    pickle_index = path / f"{pickle_stem}.bin.index.json"
    if pickle_index.is_file():
        pickles = _index_shards(pickle_index)
    if pickles:
        if not allow_pickle:
            raise MashupError(
                f"{pickles[0]}: pickle checkpoint refused (loading a pickle can run code)",
                hint="convert it to safetensors, or pass --allow-pickle to load it with "
                "torch.load(weights_only=True)",
            )
        return _from_pickles(path, pickles)
    raise MashupError(
        f"{path}: no weights ({stem}.safetensors or {stem}.safetensors.index.json is missing)",
        hint="point at a directory written by save_pretrained",
    )


def _index_shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MashupError(f"{index}: not a valid weight index ({exc})") from exc
    files = [index.parent / shard for shard in shards]
    for file in files:
        if not file.is_file():
            raise MashupError(f"{file}: shard named in {index.name} is missing")
    return files


def _from_safetensors(path: Path, files: list[Path]) -> Checkpoint:
    checkpoint = Checkpoint(path=path)
    for file in files:
        header = read_header(file)  # validates offsets against the file size
        data_start = 8 + header.header_size
        for name, info in header.tensors.items():
            dtype = SAFETENSORS_CODES.get(info.dtype)
            if dtype is None:
                raise MashupError(f"{file}: tensor {name!r} has unsupported dtype {info.dtype}")
            checkpoint.tensors[name] = TensorRef(
                file=file,
                shape=tuple(info.shape),
                dtype=dtype,
                offset=data_start + info.start,
                nbytes=info.end - info.start,
            )
    return checkpoint


def _from_pickles(path: Path, files: list[Path]) -> Checkpoint:
    checkpoint = Checkpoint(path=path, pickled=True)
    for file in files:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for unreadable or unsafe pickles
            raise MashupError(f"{file}: cannot load with weights_only=True ({exc})") from exc
        if not isinstance(state, dict):
            raise MashupError(f"{file}: not a state dict")
        for name, tensor in state.items():
            if not isinstance(tensor, Tensor):
                raise MashupError(f"{file}: entry {name!r} is not a tensor")
            checkpoint.tensors[name] = TensorRef(
                file=file, shape=tuple(tensor.shape), dtype=tensor.dtype, loaded=tensor
            )
    return checkpoint


def check_finite(tensor: Tensor, name: str, file: Path) -> None:
    """Refuse NaN or Inf. One reduction per tensor: a sum of finite values is finite."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    if torch.isfinite(tensor.sum()):
        return
    bad = ~torch.isfinite(tensor)
    if bad.any():
        n_nan = int(torch.isnan(tensor).sum())
        n_inf = int(bad.sum()) - n_nan
        raise MashupError(
            f"{file}: tensor {name!r} contains {n_nan} NaN and {n_inf} Inf values",
            hint="fix or drop this checkpoint; merging would spread them",
        )


# ---------------------------------------------------------------------------------------------
# Output


@dataclass
class OutputTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class ShardedWriter:
    """Writes ``model-0000i-of-0000n.safetensors`` + index, in a layout planned up front.

    Tensors must be written in the planned order (``order``). Each shard holds at most
    ``max_shard_bytes`` of data (a larger tensor gets a shard of its own).
    """

    def __init__(
        self, out_dir: Path, tensors: Iterable[OutputTensor], max_shard_bytes: int
    ) -> None:
        self.out_dir = out_dir
        shards: list[list[OutputTensor]] = [[]]
        size = 0
        for tensor in tensors:
            if shards[-1] and size + tensor.nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(tensor)
            size += tensor.nbytes
        total = len(shards)
        self.shards = shards
        self.file_names = [f"model-{i + 1:05d}-of-{total:05d}.safetensors" for i in range(total)]
        self.order = [t.name for shard in shards for t in shard]
        self._planned = {t.name: t for shard in shards for t in shard}
        self._shard_of = {t.name: i for i, shard in enumerate(shards) for t in shard}
        self._next = 0
        self._file: object | None = None
        self._current = -1
        self.total_bytes = sum(t.nbytes for shard in shards for t in shard)

    def _open_shard(self, index: int) -> None:
        self._close()
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for tensor in self.shards[index]:
            header[tensor.name] = {
                "dtype": DTYPE_CODES[tensor.dtype],
                "shape": list(tensor.shape),
                "data_offsets": [offset, offset + tensor.nbytes],
            }
            offset += tensor.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
        # Row chunks are small: a large buffer turns them into large sequential writes.
        f = (self.out_dir / self.file_names[index]).open("wb", buffering=WRITE_BUFFER)
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        self._file = f
        self._current = index

    def write(self, name: str, tensor: Tensor | Iterable[Tensor]) -> None:
        """Write one planned tensor, whole or as consecutive row chunks (an iterable)."""
        expected = self.order[self._next] if self._next < len(self.order) else None
        if name != expected:
            raise RuntimeError(f"tensor {name!r} written out of order (expected {expected!r})")
        planned = self._planned[name]
        shard = self._shard_of[name]
        if shard != self._current:
            self._open_shard(shard)
        if isinstance(tensor, Tensor):
            if tuple(tensor.shape) != planned.shape:
                raise RuntimeError(f"tensor {name!r} does not match the planned shape/dtype")
            parts: Iterable[Tensor] = [tensor]
        else:
            parts = tensor
        written = 0
        for part in parts:
            if part.dtype != planned.dtype or tuple(part.shape[1:]) != planned.shape[1:]:
                raise RuntimeError(f"tensor {name!r} does not match the planned shape/dtype")
            data = part.contiguous().reshape(-1).view(torch.uint8).numpy()
            self._file.write(memoryview(data))  # type: ignore[attr-defined]
            written += data.nbytes
        if written != planned.nbytes:
            raise RuntimeError(f"tensor {name!r} does not match the planned shape/dtype")
        self._next += 1

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()  # type: ignore[attr-defined]
            self._file = None

    def finish(self) -> None:
        if self._next != len(self.order):
            raise RuntimeError("not every planned tensor was written")
        self._close()
        index = {
            "metadata": {"total_size": self.total_bytes},
            "weight_map": {name: self.file_names[self._shard_of[name]] for name in self.order},
        }
        (self.out_dir / "model.safetensors.index.json").write_text(
            json.dumps(index, indent=2) + "\n", encoding="utf-8"
        )

    def abort(self) -> None:
        self._close()


def parse_size(text: str | int) -> int:
    """``"5GB"`` → bytes (decimal units, as transformers' max_shard_size)."""
    if isinstance(text, int):
        return text
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit):
            return int(float(upper[: -len(unit)]) * factor)
    return int(upper)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
