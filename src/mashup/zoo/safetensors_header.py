"""Read and validate a safetensors header without loading any tensor data.

The format is an 8-byte little-endian header length, a JSON header mapping tensor names to
``{"dtype", "shape", "data_offsets"}`` (plus an optional ``__metadata__`` string map), then the
raw data. Checking the offsets against the file size is what catches truncated and corrupt
files before anything downstream mmaps them.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

from mashup.errors import MashupError

# Bytes per element for the dtypes safetensors defines; unknown dtypes skip the size check.
DTYPE_SIZES: dict[str, float] = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "F4": 0.5,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
    "C64": 8,
}
# safetensors dtype code -> the name torch and config.json use.
DTYPE_NAMES: dict[str, str] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
# A header larger than this is certainly corrupt (the reference implementation caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000
_HINT = "re-save it with safetensors, or copy it again if a transfer was cut short"


@dataclass
class TensorInfo:
    dtype: str
    shape: list[int]
    start: int
    end: int


@dataclass
class SafetensorsHeader:
    path: Path
    header_size: int  # length of the JSON header in bytes (data starts at 8 + header_size)
    file_size: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    raw_header: bytes = b""


def read_header(path: Path) -> SafetensorsHeader:
    """Parse and validate the header of ``path``; raise MashupError naming the file if broken."""
    try:
        file_size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise MashupError(
                    f"{path}: corrupt safetensors file ({file_size} bytes, too short for a header)",
                    hint=_HINT,
                )
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > MAX_HEADER_BYTES or 8 + header_size > file_size:
                raise MashupError(
                    f"{path}: truncated or corrupt safetensors file (header claims "
                    f"{header_size} bytes, file has {file_size})",
                    hint=_HINT,
                )
            raw = f.read(header_size)
    except OSError as exc:
        raise MashupError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MashupError(
            f"{path}: corrupt safetensors header (not valid JSON: {exc})", hint=_HINT
        ) from exc
    if not isinstance(header, dict):
        raise MashupError(f"{path}: corrupt safetensors header (not a JSON object)", hint=_HINT)

    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise MashupError(f"{path}: corrupt safetensors header (__metadata__ is not a map)")
    tensors = {name: _tensor_info(path, name, info) for name, info in header.items()}
    _check_offsets(path, tensors, data_size=file_size - 8 - header_size)
    return SafetensorsHeader(
        path=path,
        header_size=header_size,
        file_size=file_size,
        tensors=tensors,
        metadata={str(k): str(v) for k, v in metadata.items()},
        raw_header=raw,
    )


def _tensor_info(path: Path, name: str, info: object) -> TensorInfo:
    bad = MashupError(f"{path}: corrupt safetensors header (bad entry for tensor {name!r})")
    if not isinstance(info, dict):
        raise bad
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if (
        not isinstance(dtype, str)
        or not isinstance(shape, list)
        or not all(isinstance(d, int) and d >= 0 for d in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and o >= 0 for o in offsets)
        or offsets[1] < offsets[0]
    ):
        raise bad
    start, end = offsets
    if dtype in DTYPE_SIZES:
        expected = math.ceil(math.prod(shape) * DTYPE_SIZES[dtype])
        if end - start != expected:
            raise MashupError(
                f"{path}: corrupt safetensors header (tensor {name!r} of shape {shape} {dtype} "
                f"needs {expected} bytes, offsets give {end - start})",
                hint=_HINT,
            )
    return TensorInfo(dtype=dtype, shape=shape, start=start, end=end)


def _check_offsets(path: Path, tensors: dict[str, TensorInfo], data_size: int) -> None:
    # Tensors must tile the data region exactly: a gap or overlap means a corrupt header, a
    # region shorter than the last offset means the file was cut short.
    position = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].start, item[1].end)):
        if info.start != position:
            raise MashupError(
                f"{path}: corrupt safetensors header (tensor {name!r} starts at byte "
                f"{info.start}, expected {position})",
                hint=_HINT,
            )
        position = info.end
    if position > data_size:
        raise MashupError(
            f"{path}: truncated safetensors file (tensors need {position} bytes of data, "
            f"file has {data_size})",
            hint=_HINT,
        )
    if position < data_size:
        raise MashupError(
            f"{path}: corrupt safetensors file ({data_size - position} unexpected bytes after "
            "the last tensor)",
            hint=_HINT,
        )
