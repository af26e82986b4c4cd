"""RecurrentState: everything a LinearAttnForCausalLM needs to continue after a prefix.

Per layer, by mixer kind:

- ``linear_attn``: ``S`` [B, H, F', Dv] = Σ φ(k) vᵀ and ``z`` [B, H, F'] = Σ φ(k)  (mixable)
- ``conv``: ``buffer`` [B, D, k-1], the last k-1 inputs of the short convolution  (mixable)
- ``swa`` / ``attn``: ``k``, ``v`` [B, H, T', Dh], the softmax key/value cache  (not mixable)
- ``mlp``-only layers do not exist; an MLP inside a block carries no state.

Arithmetic (``a + b``, ``w * a``, ``a - b``) is element-wise over the mixable tensors. For a
single linear-attention layer ``a + b`` is exactly the state of reading both contexts (sums
commute). Convolution buffers are mixed the same way, which is only an approximation of any one
context's last tokens; softmax caches cannot be mixed at all and raise MashupError. ``n_tokens``
adds under ``+`` and is kept under scaling. The model has no positional encoding, so a state can
be continued from any position.

It is also the generation cache of LinearAttnForCausalLM (``generate`` calls
``get_seq_length`` and reads ``is_compileable``/``is_croppable``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from mashup.errors import MashupError
from mashup.files import share_like_umask

MIXABLE_KINDS: frozenset[str] = frozenset({"linear_attn", "conv"})
STATE_FORMAT = "mashup-state"


def write_state_file(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, str]
) -> Path:
    """Write state tensors and metadata (``format`` added) atomically: temporary file, rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        contiguous = {name: t.detach().contiguous() for name, t in tensors.items()}
        save_file(contiguous, tmp, metadata={**meta, "format": STATE_FORMAT})
        share_like_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_state_file(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a mashup state file; MashupError naming the file otherwise."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise MashupError(f"{path}: state file not found", hint="check the path or zoo entry")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            meta = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises several unrelated types for bad files
        raise MashupError(
            f"{path}: not a readable safetensors state file ({exc})",
            hint="re-capture the state",
        ) from exc
    if meta.get("format") != STATE_FORMAT:
        raise MashupError(
            f"{path}: metadata 'format' is {meta.get('format')!r}, expected {STATE_FORMAT!r}",
            hint="pass a state written by mashup (states capture or RecurrentState.save)",
        )
    return tensors, meta


class RecurrentState:
    """Per-layer tensors plus the number of tokens read. A plain object, not an nn.Module."""

    # Read by transformers' generate loop.
    is_compileable: bool = False
    is_croppable: bool = False

    @property
    def is_linear(self) -> list[bool]:
        # transformers >= 5.24 trims the prompt by the cache's length unless every layer is
        # "linear". This state always precedes the whole input it is given (a captured or mixed
        # state can sit before any prompt), so generate must never trim: report every layer as
        # linear, softmax-window ones included.
        return [True] * len(self.layers)

    def __init__(self, kinds: list[str], layers: list[dict[str, torch.Tensor]], n_tokens: int = 0):
        if len(kinds) != len(layers):
            raise MashupError(f"state has {len(kinds)} layer kinds but {len(layers)} layers")
        self.kinds = list(kinds)
        self.layers = [dict(layer) for layer in layers]
        self.n_tokens = int(n_tokens)

    # --- views -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.layers[index]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return iter(self.layers)

    def __repr__(self) -> str:
        shapes = [
            f"{kind}(" + ", ".join(f"{n}={list(t.shape)}" for n, t in layer.items()) + ")"
            for kind, layer in zip(self.kinds, self.layers, strict=True)
        ]
        return f"RecurrentState(n_tokens={self.n_tokens}, layers=[{', '.join(shapes)}])"

    @property
    def mixable(self) -> bool:
        return all(kind in MIXABLE_KINDS for kind in self.kinds)

    @property
    def batch_size(self) -> int:
        for layer in self.layers:
            for tensor in layer.values():
                return int(tensor.shape[0])
        return 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.n_tokens

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer.values())

    # --- conversion ------------------------------------------------------------------------
    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``{"layers.<i>.<kind>.<name>": tensor}`` (contiguous, ready for safetensors)."""
        return {
            f"layers.{i}.{kind}.{name}": tensor.contiguous()
            for i, (kind, layer) in enumerate(zip(self.kinds, self.layers, strict=True))
            for name, tensor in layer.items()
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], n_tokens: int = 0) -> RecurrentState:
        """Inverse of ``to_tensors``."""
        by_layer: dict[int, tuple[str, dict[str, torch.Tensor]]] = {}
        for key, tensor in tensors.items():
            parts = key.split(".")
            if len(parts) != 4 or parts[0] != "layers" or not parts[1].isdigit():
                raise MashupError(
                    f"state tensor {key!r} is not named layers.<index>.<kind>.<name>",
                    hint="build states with RecurrentState.to_tensors()",
                )
            index, kind, name = int(parts[1]), parts[2], parts[3]
            seen_kind, layer = by_layer.setdefault(index, (kind, {}))
            if seen_kind != kind:
                raise MashupError(
                    f"state layer {index} has tensors of two kinds: {seen_kind}, {kind}"
                )
            layer[name] = tensor
        if sorted(by_layer) != list(range(len(by_layer))):
            raise MashupError(f"state layers are not numbered 0..n-1: {sorted(by_layer)}")
        kinds = [by_layer[i][0] for i in range(len(by_layer))]
        layers = [by_layer[i][1] for i in range(len(by_layer))]
        return cls(kinds, layers, n_tokens)

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
        """Write one .safetensors file atomically (temporary file, then rename)."""
        meta = {"n_tokens": str(self.n_tokens), "kinds": json.dumps(self.kinds)}
        meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
        return write_state_file(path, self.to_tensors(), meta)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> RecurrentState:
        """Read a file written by ``save``; MashupError naming the file if it is not one."""
        tensors, meta = read_state_file(path, device)
        try:
            n_tokens = int(meta.get("n_tokens", "0"))
        except ValueError as exc:
            raise MashupError(f"{path}: metadata 'n_tokens' is not an integer") from exc
        return cls.from_tensors(tensors, n_tokens)

    @staticmethod
    def read_metadata(path: str | Path) -> dict[str, str]:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})

    # --- copies and devices ----------------------------------------------------------------
    def clone(self) -> RecurrentState:
        layers = [{n: t.clone() for n, t in layer.items()} for layer in self.layers]
        return RecurrentState(self.kinds, layers, self.n_tokens)

    def to(self, *args: object, **kwargs: object) -> RecurrentState:
        layers = [{n: t.to(*args, **kwargs) for n, t in layer.items()} for layer in self.layers]
        return RecurrentState(self.kinds, layers, self.n_tokens)

    def detach(self) -> RecurrentState:
        layers = [{n: t.detach() for n, t in layer.items()} for layer in self.layers]
        return RecurrentState(self.kinds, layers, self.n_tokens)

    def select(self, indices: torch.Tensor | list[int]) -> RecurrentState:
        """Rows of the batch (beam search reordering, splitting a batch of states)."""
        index = torch.as_tensor(indices, dtype=torch.long)
        layers = [
            {n: t.index_select(0, index.to(t.device)) for n, t in layer.items()}
            for layer in self.layers
        ]
        return RecurrentState(self.kinds, layers, self.n_tokens)

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        """In-place batch reordering, the hook transformers' beam search calls."""
        self.layers = self.select(beam_idx).layers

    def repeat_interleave(self, repeats: int) -> RecurrentState:
        layers = [
            {n: t.repeat_interleave(repeats, dim=0) for n, t in layer.items()}
            for layer in self.layers
        ]
        return RecurrentState(self.kinds, layers, self.n_tokens)

    # --- arithmetic ------------------------------------------------------------------------
    def _check_mixable(self, operation: str) -> None:
        bad = [f"{i} ({k})" for i, k in enumerate(self.kinds) if k not in MIXABLE_KINDS]
        if bad:
            raise MashupError(
                f"cannot {operation} states: layer {', '.join(bad)} holds a softmax kv cache",
                hint="only linear_attn and conv layers have mixable states",
            )

    def _check_compatible(self, other: RecurrentState) -> None:
        if self.kinds != other.kinds:
            raise MashupError(
                f"cannot combine states of different models: layers {self.kinds} vs {other.kinds}"
            )
        for i, (mine, theirs) in enumerate(zip(self.layers, other.layers, strict=True)):
            if mine.keys() != theirs.keys():
                raise MashupError(
                    f"cannot combine states: layer {i} tensors {sorted(mine)} vs {sorted(theirs)}"
                )
            for name in mine:
                if mine[name].shape != theirs[name].shape:
                    raise MashupError(
                        f"cannot combine states: layer {i} {name} has shape "
                        f"{list(mine[name].shape)} vs {list(theirs[name].shape)}",
                        hint="states must come from the same model and batch size",
                    )

    def _combine(self, other: RecurrentState, sign: float, operation: str) -> RecurrentState:
        if not isinstance(other, RecurrentState):
            return NotImplemented
        self._check_mixable(operation)
        other._check_mixable(operation)
        self._check_compatible(other)
        layers = [
            {n: a[n] + sign * b[n].to(a[n].device, a[n].dtype) for n in a}
            for a, b in zip(self.layers, other.layers, strict=True)
        ]
        n_tokens = self.n_tokens + other.n_tokens if sign > 0 else self.n_tokens
        return RecurrentState(self.kinds, layers, n_tokens)

    def __add__(self, other: RecurrentState) -> RecurrentState:
        return self._combine(other, 1.0, "add")

    def __radd__(self, other: object) -> RecurrentState:
        # Lets the builtin sum() start from 0.
        if isinstance(other, int | float) and other == 0:
            return self.clone()
        return NotImplemented

    def __sub__(self, other: RecurrentState) -> RecurrentState:
        return self._combine(other, -1.0, "subtract")

    def __mul__(self, weight: float) -> RecurrentState:
        if isinstance(weight, torch.Tensor) and weight.numel() == 1:
            weight = float(weight)
        if not isinstance(weight, int | float):
            return NotImplemented
        self._check_mixable("scale")
        layers = [{n: t * weight for n, t in layer.items()} for layer in self.layers]
        return RecurrentState(self.kinds, layers, self.n_tokens)

    __rmul__ = __mul__

    def __truediv__(self, weight: float) -> RecurrentState:
        return self * (1.0 / weight)
