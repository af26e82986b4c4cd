"""MQAR training and the model × d_model × seq-len grid of the Based / ReBased papers.

The recipe follows zoology: AdamW with weight decay 0.1, a cosine schedule over the whole run,
evaluation after every epoch and an early stop at 0.99 validation accuracy. Logits are computed
only at the labelled (query) positions: the loss is the same as a full-sequence cross-entropy
with ignored labels, but the vocabulary projection, the most expensive matmul here, shrinks by
``seq_len / num_kv_pairs``.

A grid cell is (model, d_model, seq_len, kv pairs); inside a cell every learning rate is run with
every seed, and the cell reports the learning rate with the best mean accuracy over seeds, as
mean ± std (the papers' figures show the best learning rate per point).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn import functional

from mashup.data.mqar import IGNORE_INDEX, MQARConfig, auto_kv_pairs, make_mqar
from mashup.errors import MashupError
from mashup.eval.intervals import seeds_t_interval, verdict
from mashup.models import LinearAttnConfig, LinearAttnForCausalLM

# Mixer stacks of the papers' MQAR models: a short gated convolution, then the sequence mixer.
MODEL_LAYERS: dict[str, tuple[list[str], str]] = {
    "based": (["conv", "linear_attn"], "based"),
    "rebased": (["conv", "linear_attn"], "rebased"),
    "attention": (["conv", "attn"], "rebased"),  # kernel unused by softmax attention
}

# Read off the papers' figures (±0.05); (model, d_model, seq_len) -> accuracy.
# ReBased arXiv 2402.10644 Fig. 1/2; Based and ReBased are both ≈ 1.0 at L ≤ 256 for d ≥ 128.
PAPER_REFERENCE: dict[tuple[str, int, int], float] = {
    ("rebased", 64, 1024): 0.55,
    ("based", 64, 1024): 0.33,
    ("rebased", 128, 2048): 0.66,
    ("based", 128, 2048): 0.49,
    **{(m, 128, length): 1.0 for m in ("based", "rebased") for length in (64, 128, 256)},
}


def model_config(
    model: str,
    d_model: int,
    vocab_size: int = 8192,
    n_heads: int = 2,
    feature_dim: int = 16,
) -> LinearAttnConfig:
    """The LinearAttnConfig of one MQAR model; MashupError for an unknown model name."""
    if model not in MODEL_LAYERS:
        raise MashupError(
            f"MQAR: unknown model {model!r}", hint=f"choose from {', '.join(MODEL_LAYERS)}"
        )
    layers, kernel = MODEL_LAYERS[model]
    return LinearAttnConfig(
        vocab_size=vocab_size,
        d_model=d_model,
        n_heads=n_heads,
        feature_dim=feature_dim,
        kernel=kernel,
        layers=layers,
        attn_mode="auto",
    )


@dataclass
class MQAROutcome:
    """One training run."""

    model: LinearAttnForCausalLM
    val_acc: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    stopped: str = "epochs"  # "epochs" | "early_stop" | "time_limit"


def _labelled_logits(
    model: LinearAttnForCausalLM, inputs: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = model.model(inputs, use_cache=False).last_hidden_state
    where = labels != IGNORE_INDEX
    return model.lm_head(hidden[where]), labels[where]


@torch.no_grad()
def mqar_accuracy(
    model: LinearAttnForCausalLM,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 256,
) -> float:
    """Fraction of query positions whose argmax prediction is the right value."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for start in range(0, len(inputs), batch_size):
        logits, target = _labelled_logits(
            model, inputs[start : start + batch_size], labels[start : start + batch_size]
        )
        correct += int((logits.argmax(-1) == target).sum())
        total += int(target.numel())
    model.train(was_training)
    return correct / max(total, 1)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings only: norm gains and the ReBased γ/β would otherwise be
    pulled toward zero, which flattens the kernel instead of regularising the model."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def train_mqar(
    config: LinearAttnConfig,
    data: MQARConfig,
    *,
    train_examples: int = 20_000,
    val_examples: int = 1_000,
    lr: float = 3e-3,
    epochs: int = 16,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.1,
    early_stop: float = 0.99,
    time_limit_s: float | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
) -> MQAROutcome:
    """Train a fresh model on MQAR; validation accuracy after every epoch."""
    if config.vocab_size < data.vocab_size:
        raise MashupError(
            f"MQAR: model vocab_size={config.vocab_size} < data vocab_size={data.vocab_size}",
            hint="build the model with the task's vocabulary",
        )
    # Distinct seeds for train and validation data, as zoology draws them separately.
    train_x, train_y = make_mqar(data, train_examples, seed=2 * seed)
    val_x, val_y = make_mqar(data, val_examples, seed=2 * seed + 1)
    torch.manual_seed(seed)
    model = LinearAttnForCausalLM(config)
    model.train()
    optimizer = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr)
    steps_per_epoch = math.ceil(train_examples / batch_size)
    total_steps = steps_per_epoch * epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    history: list[dict[str, float]] = []
    val_acc, stopped, epoch = 0.0, "epochs", 0
    for epoch in range(1, epochs + 1):
        order = torch.randperm(train_examples, generator=generator)
        running, batches = 0.0, 0
        for first in range(0, train_examples, batch_size):
            index = order[first : first + batch_size]
            logits, target = _labelled_logits(model, train_x[index], train_y[index])
            loss = functional.cross_entropy(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.detach().item()
            batches += 1
            if time_limit_s is not None and time.perf_counter() - start > time_limit_s:
                stopped = "time_limit"
                break
        val_acc = mqar_accuracy(model, val_x, val_y)
        record = {
            "epoch": epoch,
            "loss": running / max(batches, 1),
            "val_acc": val_acc,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        if progress is not None:
            progress(record)
        if stopped == "time_limit":
            break
        if val_acc >= early_stop:
            stopped = "early_stop"
            break
    model.eval()
    return MQAROutcome(model, val_acc, epoch, time.perf_counter() - start, history, stopped)


# --- the grid ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunKey:
    """One training run of the grid; its JSON form is the resume key."""

    model: str
    d_model: int
    seq_len: int
    num_kv_pairs: int
    lr: float
    seed: int

    def as_id(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class GridSettings:
    models: list[str]
    d_models: list[int]
    seq_lens: list[int]
    kv_pairs: list[int] | None  # None: auto_kv_pairs(seq_len)
    lrs: list[float]
    seeds: list[int]
    epochs: int = 16
    train_examples: int = 20_000
    val_examples: int = 1_000
    batch_size: int = 64
    n_heads: int = 2
    feature_dim: int = 16
    vocab_size: int = 8192
    time_limit_s: float | None = None

    def runs(self) -> list[RunKey]:
        """Every run, in a fixed order (shards split it by position)."""
        return [
            RunKey(model, d_model, seq_len, kv, lr, seed)
            for seq_len in self.seq_lens
            for kv in self.kv_pairs or [auto_kv_pairs(seq_len)]
            for d_model, model, lr, seed in itertools.product(
                self.d_models, self.models, self.lrs, self.seeds
            )
        ]

    def validate(self) -> None:
        """Fail before any training on a bad cell (model name, heads, seq-len, vocab)."""
        for key in self.runs():
            model_config(key.model, key.d_model, self.vocab_size, self.n_heads, self.feature_dim)
            MQARConfig(
                vocab_size=self.vocab_size, seq_len=key.seq_len, num_kv_pairs=key.num_kv_pairs
            )


def read_results(path: Path) -> dict[str, dict]:
    """Finished runs in a results.jsonl, by RunKey id (a torn last line is ignored)."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[RunKey(**record["key"]).as_id()] = record
    return done


def run_grid(
    settings: GridSettings,
    out_dir: Path,
    on_result: Callable[[dict], None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[dict]:
    """Run every missing run of the grid, appending each result to out_dir/results.jsonl.

    ``shard=(i, n)`` runs only every n-th run starting at i, so n processes can share a grid
    (each appends whole lines; appends of one short line do not interleave).
    """
    settings.validate()
    index, count = shard
    if not 0 <= index < count:
        raise MashupError(f"MQAR: shard {index}/{count} is out of range", hint="use 0 <= i < n")
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.jsonl"
    done = read_results(results_path)
    for position, key in enumerate(settings.runs()):
        if position % count != index:
            continue
        done.update(read_results(results_path))  # another shard may have finished runs
        if key.as_id() in done:
            continue
        outcome = train_mqar(
            model_config(
                key.model, key.d_model, settings.vocab_size, settings.n_heads, settings.feature_dim
            ),
            MQARConfig(
                vocab_size=settings.vocab_size, seq_len=key.seq_len, num_kv_pairs=key.num_kv_pairs
            ),
            train_examples=settings.train_examples,
            val_examples=settings.val_examples,
            lr=key.lr,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            seed=key.seed,
            time_limit_s=settings.time_limit_s,
        )
        record = {
            "key": asdict(key),
            "val_acc": outcome.val_acc,
            "epochs_run": outcome.epochs_run,
            "seconds": round(outcome.seconds, 2),
            "stopped": outcome.stopped,
            "history": outcome.history,
            "settings": {
                "epochs": settings.epochs,
                "train_examples": settings.train_examples,
                "val_examples": settings.val_examples,
                "batch_size": settings.batch_size,
                "n_heads": settings.n_heads,
                "feature_dim": settings.feature_dim,
            },
        }
        with results_path.open("a") as handle:  # one line per run: a kill loses one run at most
            handle.write(json.dumps(record) + "\n")
        done[key.as_id()] = record
        if on_result is not None:
            on_result(record)
    done.update(read_results(results_path))
    wanted = {key.as_id() for key in settings.runs()}
    return [record for key_id, record in done.items() if key_id in wanted]


@dataclass
class CellSummary:
    model: str
    d_model: int
    seq_len: int
    num_kv_pairs: int
    best_lr: float
    mean: float
    std: float
    n_seeds: int
    paper: float | None
    lrs_tried: list[float] = field(default_factory=list)
    by_seed: dict[int, float] = field(default_factory=dict)  # accuracy at the best lr
    val_examples: int | None = None  # per run, where the records say


def summarize(records: Iterable[dict]) -> list[CellSummary]:
    """Best learning rate per cell by mean accuracy over seeds; mean ± std (sample std)."""
    by_cell: dict[tuple, dict[float, dict[int, float]]] = {}
    val_examples: dict[tuple, int] = {}
    for record in records:
        key = record["key"]
        cell = (key["model"], key["d_model"], key["seq_len"], key["num_kv_pairs"])
        by_cell.setdefault(cell, {}).setdefault(key["lr"], {})[key["seed"]] = record["val_acc"]
        if "val_examples" in record.get("settings", {}):
            val_examples[cell] = record["settings"]["val_examples"]
    summaries = []
    for cell, by_lr in sorted(by_cell.items()):
        model, d_model, seq_len, kv = cell
        best_lr = max(by_lr, key=lambda lr: sum(by_lr[lr].values()) / len(by_lr[lr]))
        accs = torch.tensor(list(by_lr[best_lr].values()), dtype=torch.float64)
        std = float(accs.std()) if len(accs) > 1 else 0.0
        summaries.append(
            CellSummary(
                model,
                d_model,
                seq_len,
                kv,
                best_lr,
                float(accs.mean()),
                std,
                len(accs),
                PAPER_REFERENCE.get((model, d_model, seq_len)),
                sorted(by_lr),
                dict(sorted(by_lr[best_lr].items())),
                val_examples.get(cell),
            )
        )
    return summaries


def gap_text(based: CellSummary, rebased: CellSummary) -> str:
    """ReBased − Based paired by seed (each seed's two runs share their data), with a t
    interval over the seeds and the verdict it supports."""
    seeds = sorted(set(based.by_seed) & set(rebased.by_seed))
    if not seeds:
        return f"{rebased.mean - based.mean:+.3f} (no seed in common)"
    diff, lo, hi = seeds_t_interval([rebased.by_seed[s] - based.by_seed[s] for s in seeds])
    items = min(based.val_examples or 0, rebased.val_examples or 0)
    call = verdict((lo, hi), [len(seeds)], items)
    interval = "no interval" if len(seeds) < 2 else f"[{lo:+.3f}, {hi:+.3f}]"
    return f"{diff:+.3f} {interval}: {call}"


def markdown_table(cells: list[CellSummary]) -> str:
    """One row per (d_model, seq_len, kv), one column per model, the gap ReBased − Based."""
    models = sorted({c.model for c in cells}, key=lambda m: list(MODEL_LAYERS).index(m))
    rows: dict[tuple[int, int, int], dict[str, CellSummary]] = {}
    for c in cells:
        rows.setdefault((c.d_model, c.seq_len, c.num_kv_pairs), {})[c.model] = c
    header = "| d_model | seq_len | kv | " + " | ".join(models)
    has_gap = {"based", "rebased"} <= set(models)
    header += " | rebased − based [95 % CI over seeds] |" if has_gap else " |"
    lines = [header, "|" + "---|" * (3 + len(models) + int(has_gap))]
    for (d_model, seq_len, kv), by_model in sorted(rows.items()):
        cols = []
        for m in models:
            c = by_model.get(m)
            if c is None:
                cols.append("–")
                continue
            tried = (
                "" if len(c.lrs_tried) < 2 else f" of {', '.join(f'{x:g}' for x in c.lrs_tried)}"
            )
            text = f"{c.mean:.3f} ± {c.std:.3f} (lr {c.best_lr:g}{tried}, n={c.n_seeds})"
            if c.paper is not None:
                text += f" [paper ≈ {c.paper:.2f}]"
            cols.append(text)
        line = f"| {d_model} | {seq_len} | {kv} | " + " | ".join(cols)
        if has_gap:
            b, r = by_model.get("based"), by_model.get("rebased")
            line += f" | {gap_text(b, r)} |" if b and r else " | – |"
        else:
            line += " |"
        lines.append(line)
    return "\n".join(lines)


def write_report(
    records: Iterable[dict], out_dir: Path, header: str = ""
) -> tuple[list[CellSummary], str, Path | None]:
    """Summarise finished runs into out_dir/results.md, summary.json and mqar.png."""
    cells = summarize(records)
    table = markdown_table(cells)
    (out_dir / "results.md").write_text(header + table + "\n")
    (out_dir / "summary.json").write_text(json.dumps([c.__dict__ for c in cells], indent=2) + "\n")
    plot = plot_grid(cells, out_dir / "mqar.png") if cells else None
    return cells, table, plot


def plot_grid(cells: list[CellSummary], path: Path) -> Path:
    """Accuracy against seq-len, one panel per d_model, one line per model; paper points as x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d_models = sorted({c.d_model for c in cells})
    models = sorted({c.model for c in cells}, key=lambda m: list(MODEL_LAYERS).index(m))
    fig, axes = plt.subplots(
        1, len(d_models), figsize=(4 * len(d_models), 3.4), squeeze=False, sharey=True
    )
    colors = {"based": "tab:blue", "rebased": "tab:red", "attention": "tab:gray"}
    for ax, d_model in zip(axes[0], d_models, strict=True):
        for model in models:
            points = sorted(
                (c.seq_len, c.mean, c.std)
                for c in cells
                if c.model == model and c.d_model == d_model
            )
            if not points:
                continue
            xs, ys, es = zip(*points, strict=True)
            ax.errorbar(
                xs, ys, yerr=es, marker="o", capsize=3, label=model, color=colors.get(model)
            )
            refs = [
                (length, acc)
                for (m, d, length), acc in PAPER_REFERENCE.items()
                if m == model and d == d_model and length <= max(xs)
            ]
            if refs:
                rx, ry = zip(*refs, strict=True)
                ax.scatter(
                    rx, ry, marker="x", s=60, color=colors.get(model), label=f"{model} (paper)"
                )
        ax.set_xscale("log", base=2)
        ax.set_title(f"d_model = {d_model}")
        ax.set_xlabel("sequence length")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR accuracy (best lr, mean ± std)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
