"""Compatibility fingerprints and content hashes, read from what the files already say.

Nothing here loads a tensor: shapes and dtypes come from safetensors headers, everything else
from ``config.json``, ``adapter_config.json``, the tokenizer files and the model card.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import yaml

from mashup.errors import MashupError
from mashup.zoo.safetensors_header import (
    DTYPE_NAMES,
    MAX_HEADER_BYTES,
    SafetensorsHeader,
    read_header,
)

Kind = Literal["model", "adapter", "state"]
STATE_FORMAT = "mashup-state"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Vocabulary files of the slow tokenizers, hashed when there is no tokenizer.json.
VOCAB_FILES = (
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
ADAPTER_FIELDS = (
    "peft_type",
    "r",
    "lora_alpha",
    "target_modules",
    "use_dora",
    "use_rslora",
    "bias",
)
# Files hashed in full up to this size; larger ones get the quick hash (see _file_digest).
FULL_HASH_MAX_BYTES = 256 * 1024 * 1024
_QUICK_CHUNK = 1024 * 1024
_MAX_SHAPE_REASONS = 5


@dataclass
class Fingerprint:
    """What decides whether two zoo entries can be merged.

    ``digest`` hashes the compatibility-relevant fields (kind, architecture, parameter names and
    shapes, vocabulary size, tokenizer hash, the adapter settings, and for adapters and states
    the model they belong to). Equal digests mean compatible; for differing digests,
    :meth:`mismatches` says why (an absent tokenizer hash is not counted as a mismatch).
    ``dtype`` is informational: merging casts, so it never blocks a merge.
    """

    kind: Kind
    architecture: str | None
    param_shapes: dict[str, list[int]]
    dtype: str | None
    vocab_size: int | None
    tokenizer_hash: str | None
    base_model: str | None
    adapter: dict[str, Any] | None
    digest: str = ""
    # Non-compatibility facts read from the files (model card front matter, state metadata...).
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.digest:
            self.digest = self.compute_digest()

    def compute_digest(self) -> str:
        relevant = {
            "kind": self.kind,
            "architecture": self.architecture,
            "param_shapes": self.param_shapes,
            "vocab_size": self.vocab_size,
            "tokenizer_hash": self.tokenizer_hash,
            # A full model's base is provenance; an adapter or state only works on its model.
            "base_model": self.base_model if self.kind != "model" else None,
            "adapter": self.adapter,
        }
        canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def mismatches(self, other: Fingerprint) -> list[str]:
        """Human-readable reasons the two cannot be merged; ``[]`` when they can."""
        reasons: list[str] = []
        if self.kind != other.kind:
            return [f"different kind: {self.kind} vs {other.kind}"]
        if self.architecture != other.architecture:
            reasons.append(f"different architecture: {self.architecture} vs {other.architecture}")
        if self.vocab_size != other.vocab_size:
            reasons.append(f"different vocab size: {self.vocab_size} vs {other.vocab_size}")
        if (
            self.tokenizer_hash is not None
            and other.tokenizer_hash is not None
            and self.tokenizer_hash != other.tokenizer_hash
        ):
            reasons.append(
                f"different tokenizer: hash {self.tokenizer_hash[:12]} vs "
                f"{other.tokenizer_hash[:12]}"
            )
        if self.kind != "model" and self.base_model != other.base_model:
            what = "adapter base model" if self.kind == "adapter" else "state's model"
            reasons.append(f"different {what}: {self.base_model} vs {other.base_model}")
        if self.adapter is not None and other.adapter is not None:
            for key in ADAPTER_FIELDS:
                mine, theirs = self.adapter.get(key), other.adapter.get(key)
                if mine != theirs:
                    reasons.append(f"different adapter {key}: {mine} vs {theirs}")
        reasons.extend(_shape_reasons(self.param_shapes, other.param_shapes))
        return reasons

    def to_dict(self, *, shapes: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not shapes:
            data["param_shapes"] = None
            data["n_tensors"] = len(self.param_shapes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Fingerprint:
        return cls(
            kind=data["kind"],
            architecture=data.get("architecture"),
            param_shapes={k: list(v) for k, v in data.get("param_shapes", {}).items()},
            dtype=data.get("dtype"),
            vocab_size=data.get("vocab_size"),
            tokenizer_hash=data.get("tokenizer_hash"),
            base_model=data.get("base_model"),
            adapter=data.get("adapter"),
            digest=data.get("digest", ""),
            meta=data.get("meta") or {},
        )


def _shape_reasons(a: dict[str, list[int]], b: dict[str, list[int]]) -> list[str]:
    reasons: list[str] = []
    differing = [n for n in a if n in b and list(a[n]) != list(b[n])]
    only_a = [n for n in a if n not in b]
    only_b = [n for n in b if n not in a]
    for name in differing[:_MAX_SHAPE_REASONS]:
        reasons.append(f"shape of {name}: {list(a[name])} vs {list(b[name])}")
    if len(differing) > _MAX_SHAPE_REASONS:
        reasons.append(f"... and {len(differing) - _MAX_SHAPE_REASONS} more shape differences")
    for names, where in ((only_a, "first"), (only_b, "second")):
        if names:
            shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            reasons.append(f"{len(names)} parameter(s) only in the {where}: {shown}")
    return reasons


# ---------------------------------------------------------------------------------------------
# Reading a path


@dataclass
class Inspection:
    """A fingerprint plus the files it was read from (what the content hash covers)."""

    fingerprint: Fingerprint
    files: list[Path]
    headers: dict[Path, SafetensorsHeader]


def fingerprint_path(path: Path | str) -> Fingerprint:
    """Fingerprint a model directory, a PEFT adapter directory, or a state ``.safetensors`` file."""
    return inspect_path(Path(path)).fingerprint


def inspect_path(path: Path) -> Inspection:
    path = Path(path).expanduser().resolve()  # absolute, so error messages name the real file
    if not path.exists():
        raise MashupError(f"{path}: no such file or directory")
    if path.is_file():
        return _inspect_file(path)
    if (path / "adapter_config.json").is_file():
        return _inspect_adapter(path)
    if (path / "config.json").is_file():
        return _inspect_model(path)
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise _pickle_error(path, pickles)
    raise MashupError(
        f"{path}: neither a model directory (config.json + *.safetensors) nor a PEFT adapter "
        "directory (adapter_config.json + adapter_model.safetensors)",
        hint="point at the folder save_pretrained wrote, or at a mashup state .safetensors file",
    )


def _pickle_error(where: Path, names: list[str]) -> MashupError:
    return MashupError(
        f"{where}: only a pickle checkpoint ({', '.join(names)}); the zoo reads safetensors only",
        hint="convert it once with from_pretrained(...).save_pretrained(new_dir), which writes "
        "safetensors, and add new_dir",
    )


def _inspect_file(path: Path) -> Inspection:
    if path.suffix in PICKLE_SUFFIXES:
        raise _pickle_error(path.parent, [path.name])
    if path.suffix != ".safetensors":
        raise MashupError(
            f"{path}: not a safetensors file",
            hint="add a model or adapter directory, or a mashup state .safetensors file",
        )
    header = read_header(path)
    meta = header.metadata
    if meta.get("format") != STATE_FORMAT:
        raise MashupError(
            f"{path}: a bare safetensors file is not a mashup state (metadata format is "
            f"{meta.get('format')!r}, expected {STATE_FORMAT!r})",
            hint="add the model directory that holds it (with config.json) instead",
        )
    try:
        model_fp = json.loads(meta["model_fingerprint"])
        if not isinstance(model_fp, dict):
            raise TypeError("not a JSON object")
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise MashupError(
            f"{path}: state metadata 'model_fingerprint' is missing or not a JSON object ({exc})"
        ) from exc
    state_meta: dict[str, Any] = {k: v for k, v in meta.items() if k != "model_fingerprint"}
    if "n_tokens" in state_meta:
        try:
            state_meta["n_tokens"] = int(state_meta["n_tokens"])
        except ValueError as exc:
            raise MashupError(f"{path}: state metadata n_tokens is not an integer") from exc
    state_meta["model_fingerprint"] = model_fp
    fingerprint = Fingerprint(
        kind="state",
        architecture=model_fp.get("architecture"),
        param_shapes={n: t.shape for n, t in header.tensors.items()},
        dtype=_dominant_dtype([header]),
        vocab_size=None,
        tokenizer_hash=None,
        # The model a state belongs to is named by that model's fingerprint digest.
        base_model=model_fp.get("digest"),
        adapter=None,
        meta={"state": state_meta},
    )
    return Inspection(fingerprint, [path], {path: header})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MashupError(f"{path}: cannot read JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise MashupError(f"{path}: expected a JSON object")
    return data


def _inspect_model(path: Path) -> Inspection:
    config_path = path / "config.json"
    config = _read_json(config_path)
    headers, weight_files = _read_weights(path)
    shapes: dict[str, list[int]] = {}
    for header in headers.values():
        shapes.update({n: t.shape for n, t in header.tensors.items()})
    architectures = config.get("architectures") or []
    text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    vocab_size = config.get("vocab_size", text_config.get("vocab_size"))
    config_dtype = config.get("dtype") or config.get("torch_dtype")
    tokenizer_hash, tokenizer_files = tokenizer_digest(path)
    meta: dict[str, Any] = {"model_type": config.get("model_type")}
    card = read_model_card(path)
    if card:
        meta["card"] = card
    fingerprint = Fingerprint(
        kind="model",
        architecture=architectures[0] if architectures else config.get("model_type"),
        param_shapes=shapes,
        dtype=str(config_dtype) if config_dtype else _dominant_dtype(headers.values()),
        vocab_size=int(vocab_size) if isinstance(vocab_size, int) else None,
        tokenizer_hash=tokenizer_hash,
        base_model=config.get("base_model_name_or_path") or _card_base_model(card),
        adapter=None,
        meta=meta,
    )
    files = [config_path, *weight_files, *tokenizer_files]
    return Inspection(fingerprint, files, headers)


def _read_weights(path: Path) -> tuple[dict[Path, SafetensorsHeader], list[Path]]:
    """Headers of model.safetensors or of every shard named by the index."""
    index_path = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if index_path.is_file():
        index = _read_json(index_path)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise MashupError(f"{index_path}: no weight_map")
        headers: dict[Path, SafetensorsHeader] = {}
        for shard_name in sorted(set(weight_map.values())):
            shard = path / shard_name
            if not shard.is_file():
                raise MashupError(f"{shard}: shard named in {index_path.name} is missing")
            headers[shard] = read_header(shard)
        for tensor, shard_name in weight_map.items():
            if tensor not in headers[path / shard_name].tensors:
                raise MashupError(
                    f"{path / shard_name}: tensor {tensor!r} listed in {index_path.name} is "
                    "not in this shard"
                )
        return headers, [index_path, *headers]
    if single.is_file():
        return {single: read_header(single)}, [single]
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise _pickle_error(path, pickles)
    raise MashupError(
        f"{path}: config.json but no model.safetensors or model.safetensors.index.json",
        hint="save the weights with save_pretrained (safetensors is the default)",
    )


def _inspect_adapter(path: Path) -> Inspection:
    config_path = path / "adapter_config.json"
    config = _read_json(config_path)
    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise _pickle_error(path, pickles)
        raise MashupError(f"{weights}: missing (the adapter directory has no weights)")
    header = read_header(weights)
    adapter = {key: config.get(key) for key in ADAPTER_FIELDS}
    targets = adapter["target_modules"]
    if isinstance(targets, list):  # order carries no meaning in PEFT's list form
        adapter["target_modules"] = sorted(targets)
    tokenizer_hash, tokenizer_files = tokenizer_digest(path)
    meta: dict[str, Any] = {"task_type": config.get("task_type")}
    card = read_model_card(path)
    if card:
        meta["card"] = card
    fingerprint = Fingerprint(
        kind="adapter",
        architecture=str(config.get("peft_type") or "LORA"),
        param_shapes={n: t.shape for n, t in header.tensors.items()},
        dtype=_dominant_dtype([header]),
        vocab_size=None,
        tokenizer_hash=tokenizer_hash,
        base_model=config.get("base_model_name_or_path"),
        adapter=adapter,
        meta=meta,
    )
    return Inspection(fingerprint, [config_path, weights, *tokenizer_files], {weights: header})


def _dominant_dtype(headers: Any) -> str | None:
    counts: Counter[str] = Counter()
    for header in headers:
        for tensor in header.tensors.values():
            counts[tensor.dtype] += 1
    if not counts:
        return None
    code = counts.most_common(1)[0][0]
    return DTYPE_NAMES.get(code, code)


def tokenizer_digest(path: Path) -> tuple[str | None, list[Path]]:
    """Hash of what maps token ids to tokens, and the files it came from (None if no tokenizer).

    For ``tokenizer.json`` only the ``model`` (vocabulary, merges) and ``added_tokens`` sections
    are hashed, so re-saving with other padding/truncation settings keeps the hash. Otherwise the
    slow tokenizer's vocabulary files are hashed byte for byte.
    """
    tokenizer_json = path / "tokenizer.json"
    if tokenizer_json.is_file():
        data = _read_json(tokenizer_json)
        relevant = {"model": data.get("model"), "added_tokens": data.get("added_tokens")}
        canonical = json.dumps(relevant, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest(), [tokenizer_json]
    files = [path / name for name in VOCAB_FILES if (path / name).is_file()]
    if not files:
        return None, []
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0" + hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest(), files


def read_model_card(path: Path) -> dict[str, Any]:
    """YAML front matter of README.md, or {} when there is none or it does not parse."""
    card = path / "README.md"
    if not card.is_file():
        return {}
    try:
        text = card.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return {}
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    try:
        front = yaml.safe_load(text[3:end])
    except yaml.YAMLError:
        return {}  # a broken card should not block registering the weights
    # Round-trip through JSON so dates and other YAML types become plain values.
    return json.loads(json.dumps(front, default=str)) if isinstance(front, dict) else {}


def _card_base_model(card: dict[str, Any]) -> str | None:
    base = card.get("base_model")
    if isinstance(base, list):
        return str(base[0]) if len(base) == 1 else None
    return str(base) if base else None


# ---------------------------------------------------------------------------------------------
# Content hashes


def file_digest(path: Path) -> str:
    """sha256 of a file; quick for files over FULL_HASH_MAX_BYTES.

    The quick form hashes the size, the modification time (ns), the safetensors header and the
    first and last MiB of the data. It catches every rewrite that changes the size, the mtime,
    the header or the ends of the data; an in-place edit of the middle of a big file that also
    restores the mtime goes unnoticed. The prefix says which form was used.
    """
    stat = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if stat.st_size <= FULL_HASH_MAX_BYTES:
            _hash_rest(f, digest)
            return "sha256:" + digest.hexdigest()
        digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        prefix = f.read(8)
        header_size = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
        header_size = header_size if header_size <= MAX_HEADER_BYTES else 0
        digest.update(prefix + f.read(header_size + _QUICK_CHUNK))
        f.seek(max(stat.st_size - _QUICK_CHUNK, 0))
        digest.update(f.read(_QUICK_CHUNK))
    return "quick:" + digest.hexdigest()


def weights_digest(model_dir: Path) -> str:
    """sha256 over the bytes of a model folder's weight files, in name order.

    Unlike :func:`file_digest` it reads every byte and ignores the mtime: two fine-tunes of one
    architecture differ only in their weights, and converting the same model again writes the
    same bytes. Pickled weights are hashed, never loaded.
    """
    files = sorted(model_dir.glob("*.safetensors")) or sorted(
        f for suffix in PICKLE_SUFFIXES for f in model_dir.glob(f"*{suffix}")
    )
    if not files:
        raise MashupError(
            f"{model_dir}: no weight files (*.safetensors) in the model folder",
            hint="give a Hugging Face model directory, or run mashup data prepare",
        )
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}:{file.stat().st_size}:".encode())
        with file.open("rb") as f:
            _hash_rest(f, digest)
    return "sha256:" + digest.hexdigest()


def _hash_rest(f: BinaryIO, digest: Any) -> None:
    """Feed ``digest`` everything left in ``f``, a few MiB at a time."""
    for block in iter(lambda: f.read(4 * _QUICK_CHUNK), b""):
        digest.update(block)


def content_digests(inspection: Inspection, root: Path) -> dict[str, str]:
    """Per-file digests keyed by the path relative to the entry (its name for a state file)."""
    digests: dict[str, str] = {}
    for file in inspection.files:
        key = file.name if root.is_file() else str(file.relative_to(root))
        digests[key] = file_digest(file)
    return digests


def combine_digests(digests: dict[str, str]) -> str:
    canonical = json.dumps(digests, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
