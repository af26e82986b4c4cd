"""State Soup: capture a recurrent model's state after a context, store it, find it, mix it,
and continue from it.

A saved state is one ``.safetensors`` file: the state tensors (batch 1) and metadata
``format = "mashup-state"``, ``family``, ``model_fingerprint`` (JSON: the model's fingerprint
digest and architecture, so the zoo and ``load_state`` can refuse a state from another model),
``task``, ``n_tokens``, ``context_sha256`` and, for text contexts, the ``context`` itself (used
by the embedding search; cut to 64 KB).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mashup.errors import MashupError
from mashup.models.state import STATE_FORMAT, read_state_file, write_state_file
from mashup.states import families

MIX_MODES = ("weighted", "uniform", "sum", "decay")
CONTEXT_KEEP_CHARS = 65_536


@dataclass
class CapturedState:
    """State tensors (batch 1) plus what the file's metadata records."""

    tensors: dict[str, torch.Tensor]
    family: str
    model_fingerprint: dict[str, Any]
    task: str | None = None
    n_tokens: int = 0
    context_sha256: str = ""
    context: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def metadata(self) -> dict[str, str]:
        meta = {
            "format": STATE_FORMAT,
            "family": self.family,
            "model_fingerprint": json.dumps(self.model_fingerprint, sort_keys=True),
            "n_tokens": str(self.n_tokens),
            "context_sha256": self.context_sha256,
        }
        if self.task:
            meta["task"] = self.task
        if self.context is not None:
            meta["context"] = self.context[:CONTEXT_KEEP_CHARS]
        meta.update(self.extra)
        return meta


# --- models and their fingerprints -----------------------------------------------------------


def model_fingerprint(model_dir: Path) -> dict[str, Any]:
    """``{"digest", "architecture"}`` of a model folder, as the zoo computes them."""
    from mashup.zoo import fingerprint_path

    fp = fingerprint_path(model_dir)
    return {"digest": fp.digest, "architecture": fp.architecture}


def load_recurrent_model(model_dir: Path | str) -> tuple[Any, Any, dict[str, Any]]:
    """``(model, tokenizer or None, fingerprint)``; MashupError if the model has no state."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import mashup.models  # noqa: F401  (registers our model type with the Auto classes)
    from mashup.hub import stay_offline

    stay_offline()
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise MashupError(f"{model_dir}: no config.json", hint="give a Hugging Face model folder")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise MashupError(f"{model_dir}: cannot load the model ({exc})") from exc
    model.eval()
    families.family_of(model)  # refuse non-recurrent models early
    tokenizer = None
    if any((model_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model, tokenizer, model_fingerprint(model_dir)


def context_ids(context: str | Sequence[int] | torch.Tensor, tokenizer: Any) -> torch.Tensor:
    if isinstance(context, str):
        if tokenizer is None:
            raise MashupError(
                "a text context needs the model's tokenizer, and the model folder has none",
                hint="save the tokenizer next to the model, or pass token ids",
            )
        ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    else:
        ids = context.tolist() if isinstance(context, torch.Tensor) else list(context)
        ids = [int(i) for i in (ids[0] if ids and isinstance(ids[0], list) else ids)]
    if not ids:
        raise MashupError("the context is empty", hint="give at least one token of context")
    return torch.tensor([ids], dtype=torch.long)


def _sha256(context: str | Sequence[int] | torch.Tensor) -> str:
    if isinstance(context, str):
        data = context.encode()
    else:
        values = context.flatten().tolist() if isinstance(context, torch.Tensor) else context
        data = json.dumps([int(v) for v in values]).encode()
    return hashlib.sha256(data).hexdigest()


# --- capture, continue ------------------------------------------------------------------------


def capture_state(
    model: Any,
    context: str | Sequence[int] | torch.Tensor,
    *,
    fingerprint: dict[str, Any],
    tokenizer: Any = None,
    task: str | None = None,
    initial: CapturedState | None = None,
) -> CapturedState:
    """Read ``context`` (text or token ids) and keep the state after its last token."""
    family = families.family_of(model)
    ids = context_ids(context, tokenizer)
    start = None
    if initial is not None:
        check_compatible(initial, fingerprint, family)
        start = initial.tensors
    result = families.run(model, ids, start)
    return CapturedState(
        tensors={name: t[:1].contiguous() for name, t in result.state.items()},
        family=family,
        model_fingerprint=fingerprint,
        task=task,
        n_tokens=int(ids.shape[1]) + (initial.n_tokens if initial is not None else 0),
        context_sha256=_sha256(context),
        context=context if isinstance(context, str) else None,
    )


def continue_from(model: Any, state: CapturedState | None, input_ids: torch.Tensor) -> families.Run:
    """Logits (and the new state) of ``input_ids`` read after ``state`` (None: from scratch)."""
    return families.run(model, input_ids, state.tensors if state is not None else None)


@torch.no_grad()
def generate(
    model: Any, state: CapturedState | None, prompt_ids: torch.Tensor, max_new_tokens: int = 20
) -> list[int]:
    """Greedy continuation of ``prompt_ids`` [1, T] read after ``state``, one token at a time
    from the recurrent state (constant memory per token)."""
    if max_new_tokens < 1:
        raise MashupError("max_new_tokens must be ≥ 1")
    run = continue_from(model, state, prompt_ids)
    generated: list[int] = []
    for _ in range(max_new_tokens):
        token = int(run.logits[0, -1].argmax())
        generated.append(token)
        run = families.run(model, torch.tensor([[token]]), run.state)
    return generated


def check_compatible(state: CapturedState, fingerprint: dict[str, Any], family: str) -> None:
    """MashupError unless ``state`` was captured with the model of ``fingerprint``."""
    if state.family != family:
        raise MashupError(
            f"state of a {state.family} model cannot be used with a {family} model",
            hint="capture the state with this model",
        )
    if state.model_fingerprint.get("digest") != fingerprint.get("digest"):
        raise MashupError(
            "state was captured with another model (fingerprint "
            f"{state.model_fingerprint.get('digest')} != {fingerprint.get('digest')})",
            hint="capture the state with this model, or use the model it came from",
        )


# --- files and the zoo ------------------------------------------------------------------------


def save_state(state: CapturedState, path: Path | str) -> Path:
    """Write one safetensors file atomically (temporary file, then rename)."""
    return write_state_file(path, state.tensors, state.metadata())


def load_state(path: Path | str) -> CapturedState:
    """Read a state file; MashupError naming the file if it is not a readable mashup state."""
    path = Path(path)
    tensors, meta = read_state_file(path)
    family = meta.get("family", "mashup_linear_attn")
    if family not in families.FAMILIES:
        raise MashupError(f"{path}: unknown state family {family!r}")
    try:
        fingerprint = json.loads(meta.get("model_fingerprint", "{}"))
        n_tokens = int(meta.get("n_tokens", "0"))
    except (json.JSONDecodeError, ValueError) as exc:
        raise MashupError(f"{path}: bad state metadata ({exc})", hint="re-capture it") from exc
    known = {"format", "family", "model_fingerprint", "n_tokens", "context_sha256", "task",
             "context"}  # fmt: skip
    return CapturedState(
        tensors=tensors,
        family=family,
        model_fingerprint=fingerprint,
        task=meta.get("task"),
        n_tokens=n_tokens,
        context_sha256=meta.get("context_sha256", ""),
        context=meta.get("context"),
        extra={k: v for k, v in meta.items() if k not in known},
    )


def is_state_path(ref: str | Path) -> bool:
    """Whether ``ref`` names a file (an existing path or a .safetensors name), not a zoo entry."""
    path = Path(ref)
    return path.suffix == ".safetensors" or path.exists()


def resolve_state(ref: str | Path, zoo: Any = None) -> tuple[CapturedState, str]:
    """A state from a file path or a zoo entry name; ``(state, label)``."""
    if is_state_path(ref):
        return load_state(ref), str(ref)
    if zoo is None:
        raise MashupError(f"{ref}: no such state file", hint="give a .safetensors path")
    entry = zoo.get(str(ref))
    if entry.kind != "state":
        raise MashupError(f"zoo entry {ref!r} is a {entry.kind}, not a state")
    return load_state(entry.path), entry.name


# --- mixing -----------------------------------------------------------------------------------


def mix_states(
    states: Sequence[CapturedState],
    weights: Sequence[float] | None = None,
    mode: str = "weighted",
    task: str | None = None,
) -> CapturedState:
    """Combine states of one model.

    ``uniform``: the mean; ``weighted``: Σ wᵢ·stateᵢ with the given weights (normalised to sum 1);
    ``sum``: Σ stateᵢ (for undecayed linear attention, in one layer, the state of reading every
    context); ``decay``: the states composed in the given order, each earlier one decayed by the
    later contexts' cumulative decay (Mamba-2, RWKV; the plain sum for our models).
    """
    if mode not in MIX_MODES:
        raise MashupError(f"unknown mix mode {mode!r}", hint=f"use one of {', '.join(MIX_MODES)}")
    if len(states) < 1:
        raise MashupError("no states to mix", hint="give at least one state")
    first = states[0]
    for other in states[1:]:
        check_compatible(other, first.model_fingerprint, first.family)
        if set(other.tensors) != set(first.tensors) or any(
            other.tensors[n].shape != first.tensors[n].shape for n in first.tensors
        ):
            raise MashupError(
                "states have different tensors or shapes",
                hint="mix states captured with the same model",
            )
    if weights is not None and mode not in ("weighted",):
        raise MashupError(f"--weights only applies to mode 'weighted', not {mode!r}")
    if mode == "weighted":
        if weights is None:
            weights = [1.0] * len(states)
        if len(weights) != len(states):
            raise MashupError(
                f"{len(weights)} weights for {len(states)} states",
                hint="give one weight per state",
            )
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise MashupError("weights must be ≥ 0 with a positive sum")
        total = float(sum(weights))
        weights = [float(w) / total for w in weights]
    elif mode == "uniform":
        weights = [1.0 / len(states)] * len(states)
    else:
        weights = [1.0] * len(states)
    tensors = families.combine(first.family, [s.tensors for s in states], list(weights), mode)
    n_tokens = (
        sum(s.n_tokens for s in states)
        if mode in ("sum", "decay")
        else round(sum(w * s.n_tokens for w, s in zip(weights, states, strict=True)))
    )
    digest = hashlib.sha256(
        json.dumps([mode, list(weights), [s.context_sha256 for s in states]]).encode()
    ).hexdigest()
    return CapturedState(
        tensors={n: t.to(first.tensors[n].dtype) for n, t in tensors.items()},
        family=first.family,
        model_fingerprint=first.model_fingerprint,
        task=task,
        n_tokens=n_tokens,
        context_sha256=digest,
        extra={"mix": json.dumps({"mode": mode, "weights": list(weights)})},
    )


# --- search -----------------------------------------------------------------------------------


@dataclass
class SearchHit:
    name: str
    task: str | None
    score: float


def search_states(
    candidates: Sequence[tuple[str, CapturedState]],
    *,
    query_state: CapturedState | None = None,
    query_texts: Sequence[str] | None = None,
    by: str = "state",
    layers: Sequence[int] | None = None,
    k: int = 5,
    encoder: Path | None = None,
) -> list[SearchHit]:
    """Rank states by cosine similarity to a query: of the states (chosen layers, each layer
    scaled to unit norm) or of MiniLM sentence embeddings of their contexts."""
    if not candidates:
        raise MashupError("no stored states to search", hint="capture some with states capture")
    scores: list[float] = []
    if by == "state":
        if query_state is None:
            raise MashupError("state search needs a query state")
        query = families.mixable_vector(query_state.family, query_state.tensors, layers)
        for _, state in candidates:
            check_compatible(state, query_state.model_fingerprint, query_state.family)
            vector = families.mixable_vector(state.family, state.tensors, layers)
            scores.append(float(torch.nn.functional.cosine_similarity(query, vector, dim=0)))
    elif by == "embedding":
        if not query_texts:
            raise MashupError("embedding search needs query texts")
        missing = [name for name, s in candidates if not s.context]
        if missing:
            raise MashupError(
                f"states {missing} have no stored context text to embed",
                hint="capture them from text, or search --by state",
            )
        from mashup.select.core import Encoder, ensure_encoder

        model = Encoder(encoder or ensure_encoder())
        query = model.centroid(list(query_texts))
        # A long context is embedded as the centroid of its lines (MiniLM reads 128 tokens).
        scores = [
            float(
                query
                @ model.centroid(
                    [line for line in (s.context or "").splitlines() if line] or [s.context or ""]
                )
            )
            for _, s in candidates
        ]
    else:
        raise MashupError(f"unknown search mode {by!r}", hint="use state or embedding")
    hits = [
        SearchHit(name, state.task, score)
        for (name, state), score in zip(candidates, scores, strict=True)
    ]
    hits.sort(key=lambda h: -h.score)
    return hits[:k]


# --- evaluation from a state ------------------------------------------------------------------


class StatefulLM(torch.nn.Module):
    """A model that reads every batch after a fixed state: what ``mashup eval --state`` scores."""

    def __init__(self, model: Any, state: CapturedState) -> None:
        super().__init__()
        self.model = model
        self.state = state
        self.config = model.config

    def forward(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        from types import SimpleNamespace

        # Right padding needs no mask here: a causal recurrent model never looks ahead.
        return SimpleNamespace(logits=continue_from(self.model, self.state, input_ids).logits)


def eval_with_state(
    model_path: Path | str,
    data_path: Path | str,
    state_ref: Path | str,
    *,
    limit: int | None = None,
    format: str = "mc",
    batch_size: int = 8,
    zoo: Any = None,
) -> Any:
    """``mashup eval MODEL --data FILE --state STATE``: the usual scores, each item read after
    the state."""
    from mashup.data.items import load_items
    from mashup.eval.scoring import evaluate_items

    items = load_items(Path(data_path), limit=limit)
    state, _ = resolve_state(state_ref, zoo)
    model, tokenizer, fingerprint = load_recurrent_model(model_path)
    if tokenizer is None:
        raise MashupError(f"{model_path}: no tokenizer files", hint="save the tokenizer with it")
    check_compatible(state, fingerprint, families.family_of(model))
    return evaluate_items(StatefulLM(model, state), tokenizer, items, format=format,
                          batch_size=batch_size)  # fmt: skip


def timed(fn: Any, *args: Any, repeat: int = 5, **kwargs: Any) -> tuple[Any, float]:
    """Result and median seconds of ``fn(*args, **kwargs)`` over ``repeat`` runs."""
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times.append(time.perf_counter() - start)
    return result, sorted(times)[len(times) // 2]
