"""State Soup experiments: exactness, MQAR soup, domain states for language modelling, cost.

Each experiment is a function returning a JSON-able dict; ``run_all`` caches each result in
``out/<name>.json`` (a finished experiment is not re-run) and trained models under
``cache/state_soup/``. Comparisons report per-item paired differences with a 95 % interval
(normal approximation over items, pooled over seeds) and call a difference inside it a tie.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional

from mashup.errors import MashupError
from mashup.models import LinearAttnConfig, LinearAttnForCausalLM
from mashup.states.core import CapturedState, capture_state, continue_from, mix_states

Log = Callable[[str], None]


def paired_interval(diffs: list[float]) -> dict[str, float]:
    """Mean of paired differences with a 95 % normal interval."""
    n = len(diffs)
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / max(n - 1, 1)
    half = 1.96 * math.sqrt(var / n)
    verdict = "tie" if mean - half <= 0 <= mean + half else ("higher" if mean > 0 else "lower")
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "verdict": verdict}


def seed_interval(per_seed: dict[int, float]) -> dict[str, Any]:
    """Mean of per-seed differences with a 95 % Student t interval over the seeds.

    Each seed trains its own model and scores its own items, so items are nested in seeds and
    pooling them (``paired_interval``) leaves out how much another trained model would move the
    result; the seeds are the sample here. Below 3 seeds it makes no claim.
    """
    from mashup.eval.intervals import CLAIM_SEEDS, seeds_t_interval

    mean, lo, hi = seeds_t_interval(list(per_seed.values()))
    word = "tie" if lo <= 0 <= hi else ("higher" if mean > 0 else "lower")
    if len(per_seed) < CLAIM_SEEDS:
        word = f"no claim ({len(per_seed)} seeds; interval says {word})"
    return {"mean": mean, "lo": lo, "hi": hi, "seeds": len(per_seed), "verdict": word}


def _fp(name: str) -> dict[str, str]:
    return {"digest": name, "architecture": "bench"}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


# --- 1. exactness ------------------------------------------------------------------------------


def _tiny(family: str, layers: list[str] | None = None, seed: int = 0) -> Any:
    from transformers import Mamba2Config, Mamba2ForCausalLM, RwkvConfig, RwkvForCausalLM

    torch.manual_seed(seed)
    if family == "mashup_linear_attn":
        config = LinearAttnConfig(
            vocab_size=256, d_model=64, n_heads=2, feature_dim=16, kernel="rebased",
            layers=layers or ["linear_attn"], mlp=len(layers or []) > 1,
        )  # fmt: skip
        return LinearAttnForCausalLM(config).eval()
    if family == "mamba2":
        config = Mamba2Config(
            vocab_size=256, hidden_size=64, num_hidden_layers=2, num_heads=8, head_dim=16,
            expand=2, n_groups=1, state_size=16, chunk_size=16, conv_kernel=4,
        )  # fmt: skip
        return Mamba2ForCausalLM(config).eval()
    config = RwkvConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, attention_hidden_size=64,
        intermediate_size=128, context_length=512,
    )  # fmt: skip
    return RwkvForCausalLM(config).eval()


def exactness(log: Log, length: int = 64) -> dict[str, Any]:
    """How far a composed state is from the state of the concatenated contexts."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (1, length), generator=generator)
    b = torch.randint(0, 256, (1, length), generator=generator)
    probe = torch.randint(0, 256, (1, 16), generator=generator)
    cases = [
        ("one linear-attention layer", "mashup_linear_attn", ["linear_attn"], ["sum"]),
        (
            "conv + 2 linear-attention layers + MLP",
            "mashup_linear_attn",
            ["conv", "linear_attn", "linear_attn"],
            ["sum"],
        ),
        ("Mamba-2, 2 layers (decayed)", "mamba2", None, ["sum", "decay"]),
        ("RWKV-4, 2 layers (decayed)", "rwkv", None, ["sum", "decay"]),
    ]
    for label, family, layers, modes in cases:
        model = _tiny(family, layers)
        fp = _fp(label)
        state_a = capture_state(model, a, fingerprint=fp)
        state_b = capture_state(model, b, fingerprint=fp)
        both = capture_state(model, torch.cat([a, b], dim=1), fingerprint=fp)
        reference = continue_from(model, both, probe).logits
        for mode in modes:
            mixed = mix_states([state_a, state_b], mode=mode)
            memory = [n for n in both.tensors if n.endswith((".S", ".z", ".ssm", ".num", ".den"))]
            per_layer = {}
            for name in memory:
                got, want = mixed.tensors[name], both.tensors[name]
                if name.endswith((".num", ".den")):  # RWKV: compare true-scale values
                    prefix = name.rsplit(".", 1)[0]
                    got = got * torch.exp(mixed.tensors[prefix + ".max"])
                    want = want * torch.exp(both.tensors[prefix + ".max"])
                per_layer[name] = _rel(got, want)
            logits = continue_from(model, mixed, probe).logits
            first = min(int(name.split(".")[1]) for name in memory)
            row = {
                "model": label,
                "mode": mode,
                "first_memory_layer": first,
                "max_rel_err_first_layer": max(
                    v for k, v in per_layer.items() if int(k.split(".")[1]) == first
                ),
                "max_rel_err_all_layers": max(per_layer.values()),
                "probe_logits_max_abs_diff": float((logits - reference).abs().max()),
            }
            rows.append(row)
            log(f"exactness {label} [{mode}]: rel err {row['max_rel_err_first_layer']:.2e}")
    return {"context_tokens": length, "rows": rows}


# --- 2. MQAR soup -----------------------------------------------------------------------------

MQAR_SEQ, MQAR_KV, MQAR_D = 64, 8, 64


def mqar_model(seed: int, cache: Path, log: Log, epochs: int = 8) -> LinearAttnForCausalLM:
    """A ReBased model trained on MQAR (cached)."""
    from mashup.bench.mqar import model_config, train_mqar
    from mashup.data.mqar import MQARConfig

    path = cache / f"mqar-rebased-d{MQAR_D}-L{MQAR_SEQ}-kv{MQAR_KV}-e{epochs}-seed{seed}"
    if (path / "config.json").is_file():
        return LinearAttnForCausalLM.from_pretrained(path).eval()
    log(f"training the MQAR ReBased model, seed {seed}")
    outcome = train_mqar(
        model_config("rebased", MQAR_D),
        MQARConfig(seq_len=MQAR_SEQ, num_kv_pairs=MQAR_KV),
        epochs=epochs,
        lr=3e-3,
        seed=seed,
        progress=lambda r: log(f"  epoch {r['epoch']}: val acc {r['val_acc']:.3f}"),
    )
    outcome.model.config.mqar_val_acc = outcome.val_acc
    outcome.model.save_pretrained(path)
    return outcome.model.eval()


def _recall(model: Any, state: CapturedState, keys: list[int], values: list[int]) -> list[bool]:
    logits = continue_from(model, state, torch.tensor(keys)[:, None]).logits[:, -1]
    return (logits.argmax(-1) == torch.tensor(values)).tolist()


def mqar_soup(
    log: Log,
    cache: Path,
    seeds: tuple[int, ...] = (0, 1, 2),
    kv_per_context: tuple[int, ...] = (1, 2, 4, 8),
    min_queries: int = 500,
    epochs: int = 8,
) -> dict[str, Any]:
    """Contexts A and B hold disjoint key-value pairs; which states can answer queries on both?"""
    conditions = ("A only", "B only", "mix (sum)", "mix (mean)", "concatenation A+B")
    results: dict[str, Any] = {"conditions": list(conditions), "cells": []}
    # Each seed is its own trained model, so hits are kept per seed; pooled, in seed order.
    by_seed: dict[tuple[int, str], dict[int, list[bool]]] = {}
    models = {seed: mqar_model(seed, cache, log, epochs) for seed in seeds}
    for n in kv_per_context:
        trials = math.ceil(min_queries / (2 * n * len(seeds)))
        for seed, model in models.items():
            rng = random.Random(1000 * seed + n)
            fp = _fp(f"mqar-{seed}")
            for _ in range(trials):
                keys = rng.sample(range(1, 4096), 2 * n)
                values = rng.sample(range(4096, 8192), 2 * n)
                ctx_a = [t for pair in zip(keys[:n], values[:n], strict=True) for t in pair]
                ctx_b = [t for pair in zip(keys[n:], values[n:], strict=True) for t in pair]
                state_a = capture_state(model, ctx_a, fingerprint=fp)
                state_b = capture_state(model, ctx_b, fingerprint=fp)
                states = {
                    "A only": state_a,
                    "B only": state_b,
                    "mix (sum)": mix_states([state_a, state_b], mode="sum"),
                    "mix (mean)": mix_states([state_a, state_b], mode="uniform"),
                    "concatenation A+B": capture_state(model, ctx_a + ctx_b, fingerprint=fp),
                }
                for condition, state in states.items():
                    by_seed.setdefault((n, condition), {}).setdefault(seed, []).extend(
                        _recall(model, state, keys, values)
                    )
        pooled = {c: [h for hits in by_seed[(n, c)].values() for h in hits] for c in conditions}
        acc = {c: sum(hits) / len(hits) for c, hits in pooled.items()}
        for condition in conditions:
            results["cells"].append(
                {
                    "kv_per_context": n,
                    "condition": condition,
                    "acc": acc[condition],
                    "queries": len(pooled[condition]),
                }  # fmt: skip
            )
        mean_vs_concat = [
            float(m) - float(c)
            for m, c in zip(pooled["mix (mean)"], pooled["concatenation A+B"], strict=True)
        ]
        results.setdefault("mix_mean_minus_concat", {})[str(n)] = paired_interval(mean_vs_concat)
        seed_diffs = {
            seed: statistics.fmean(by_seed[(n, "mix (mean)")][seed])
            - statistics.fmean(by_seed[(n, "concatenation A+B")][seed])
            for seed in seeds
        }
        results.setdefault("mix_mean_minus_concat_over_seeds", {})[str(n)] = seed_interval(
            seed_diffs
        )
        log(f"MQAR soup kv={n}: " + ", ".join(f"{c} {acc[c]:.3f}" for c in conditions))
    results["seeds"] = list(seeds)
    results["model"] = {
        "kind": "rebased", "d_model": MQAR_D, "layers": ["conv", "linear_attn"],
        "trained_on": {"seq_len": MQAR_SEQ, "kv_pairs": MQAR_KV, "epochs": epochs,
                       "examples": 20_000},
        "val_acc": {s: getattr(m.config, "mqar_val_acc", None) for s, m in models.items()},
    }  # fmt: skip
    return results


# --- 3. language modelling with domain states ----------------------------------------------------

LM_DOMAINS = ("arc_easy", "hellaswag", "piqa", "socialiqa", "winogrande")
LM_WINDOW = 512  # training window in bytes; a state of LM_DEMOS items plus one item fits in it
LM_DOC_ITEMS = 8
LM_DEMOS = 3


def _item_text(item: Any) -> str:
    from mashup.data.items import format_choice, format_prompt

    return format_prompt(item) + format_choice(item.choices[item.answer])


def _domain_texts(split: str, limit: int, seed: int) -> dict[str, list[str]]:
    from mashup.data.assets import ensure_benchmark
    from mashup.data.items import load_items

    return {
        d: [_item_text(i) for i in load_items(ensure_benchmark(d, split), limit=limit, seed=seed)]
        for d in LM_DOMAINS
    }


def _bytes(text: str) -> list[int]:
    return list(text.encode("utf-8"))


def lm_model(seed: int, cache: Path, log: Log, steps: int = 600) -> LinearAttnForCausalLM:
    """A byte-level ReBased LM trained on the five domains' training questions (cached)."""
    path = cache / f"lm-rebased-bytes-d128-w{LM_WINDOW}-s{steps}-seed{seed}"
    if (path / "config.json").is_file():
        return LinearAttnForCausalLM.from_pretrained(path).eval()
    texts = _domain_texts("train", limit=4000, seed=seed)
    # Documents of consecutive same-domain items, as real text has: a model only learns to use
    # earlier items (and so a state) if they say something about the next one.
    rng = random.Random(seed)
    documents = [
        texts[d][i : i + LM_DOC_ITEMS] for d in LM_DOMAINS for i in range(0, 4000, LM_DOC_ITEMS)
    ]
    rng.shuffle(documents)
    stream: list[int] = []
    for document in documents:
        for text in document:
            stream += _bytes(text + "\n\n")
    data = torch.tensor(stream)
    torch.manual_seed(seed)
    config = LinearAttnConfig(
        vocab_size=256, d_model=128, n_heads=4, feature_dim=16, kernel="rebased",
        layers=["conv", "linear_attn", "conv", "linear_attn"], mlp=True, mlp_ratio=2,
    )  # fmt: skip
    model = LinearAttnForCausalLM(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
    window, batch = LM_WINDOW, 16
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        offsets = torch.randint(0, len(data) - window - 1, (batch,))
        x = torch.stack([data[o : o + window + 1] for o in offsets.tolist()])
        logits = model(x[:, :-1], use_cache=False).logits
        loss = functional.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"  LM seed {seed} step {step}: loss {loss.item():.3f} "
                f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    model.eval()
    model.save_pretrained(path)
    return model


@torch.no_grad()
def _bits_per_byte(model: Any, state: CapturedState | None, texts: list[str]) -> list[float]:
    """Per text: bits per byte of bytes 2..n (the same bytes in every condition)."""
    out = []
    for start in range(0, len(texts), 32):
        chunk = [_bytes(t) for t in texts[start : start + 32]]
        width = max(len(c) for c in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width)
        for i, c in enumerate(chunk):
            ids[i, : len(c)] = torch.tensor(c)
            mask[i, 1 : len(c)] = 1
        logits = continue_from(model, state, ids).logits
        nll = functional.cross_entropy(
            logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1), reduction="none"
        ).view(len(chunk), -1)
        bits = (nll * mask[:, 1:]).sum(1) / mask[:, 1:].sum(1) / math.log(2)
        out.extend(bits.tolist())
    return out


def domain_lm(
    log: Log,
    cache: Path,
    seeds: tuple[int, ...] = (0, 1, 2),
    demos: int = LM_DEMOS,
    eval_items: int = 100,
    steps: int = 600,
) -> dict[str, Any]:
    """Prepending a domain's state: no state vs right domain vs wrong domain vs mix vs retrieved."""
    from mashup.states.core import search_states

    conditions = ("no state", "right domain", "wrong domain (mean over others)", "mix of all",
                  "retrieved (state search)")  # fmt: skip
    bits: dict[str, list[float]] = {c: [] for c in conditions}
    seed_means: dict[str, dict[int, float]] = {c: {} for c in conditions}
    retrieval_hits, retrieval_total = 0, 0
    per_domain: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        model = lm_model(seed, cache, log, steps)
        fp = _fp(f"lm-{seed}")
        demo_texts = _domain_texts("train", limit=demos, seed=10_000 + seed)
        eval_texts = _domain_texts("val", limit=eval_items + 5, seed=seed)
        states = {
            d: capture_state(
                model, _bytes("\n\n".join(demo_texts[d]) + "\n\n"), fingerprint=fp, task=d
            )  # fmt: skip
            for d in LM_DOMAINS
        }
        mixed = mix_states(list(states.values()), mode="uniform")
        seed_bits: dict[str, list[float]] = {c: [] for c in conditions}
        for domain in LM_DOMAINS:
            targets = eval_texts[domain][:eval_items]
            query = eval_texts[domain][eval_items:]  # 5 held-out examples as the search query
            query_state = capture_state(model, _bytes("\n\n".join(query) + "\n\n"), fingerprint=fp)
            hit = search_states(list(states.items()), query_state=query_state, k=1)[0]
            retrieval_hits += hit.name == domain
            retrieval_total += 1
            row = {
                "no state": _bits_per_byte(model, None, targets),
                "right domain": _bits_per_byte(model, states[domain], targets),
                "mix of all": _bits_per_byte(model, mixed, targets),
                "retrieved (state search)": _bits_per_byte(model, states[hit.name], targets),
            }
            wrong = [_bits_per_byte(model, states[o], targets) for o in LM_DOMAINS if o != domain]
            row["wrong domain (mean over others)"] = [
                sum(v) / len(v) for v in zip(*wrong, strict=True)
            ]
            for condition in conditions:
                bits[condition].extend(row[condition])
                seed_bits[condition].extend(row[condition])
                per_domain.setdefault(domain, {}).setdefault(condition, []).extend(row[condition])
            log(f"LM seed {seed} {domain}: " + ", ".join(
                f"{c} {sum(row[c]) / len(row[c]):.3f}" for c in conditions))  # fmt: skip
        for condition in conditions:
            seed_means[condition][seed] = sum(seed_bits[condition]) / len(seed_bits[condition])
    baseline = bits["no state"]

    def over_seeds(a: str, b: str) -> dict[str, Any]:
        return seed_interval({s: seed_means[a][s] - seed_means[b][s] for s in seeds})

    return {
        "seeds": list(seeds),
        "demos_per_domain": demos,
        "eval_items_per_domain": eval_items,
        "train_steps": steps,
        "bits_per_byte": {c: sum(v) / len(v) for c, v in bits.items()},
        "per_domain": {
            d: {c: sum(v) / len(v) for c, v in by_c.items()} for d, by_c in per_domain.items()
        },
        "vs_no_state": {
            c: paired_interval([x - y for x, y in zip(bits[c], baseline, strict=True)])
            for c in conditions
            if c != "no state"
        },
        "right_minus_mix": paired_interval(
            [x - y for x, y in zip(bits["right domain"], bits["mix of all"], strict=True)]
        ),
        "bits_per_byte_by_seed": {
            c: {str(s): v for s, v in m.items()} for c, m in seed_means.items()
        },
        "vs_no_state_over_seeds": {
            c: over_seeds(c, "no state") for c in conditions if c != "no state"
        },
        "right_minus_mix_over_seeds": over_seeds("right domain", "mix of all"),
        "retrieval_top1": retrieval_hits / retrieval_total,
        "retrieval_queries": retrieval_total,
    }


# --- 4. cost ----------------------------------------------------------------------------------


def cost(log: Log, context_tokens: int = 1024, ks: tuple[int, ...] = (2, 4, 8, 16)) -> dict:
    """Mixing k stored states against re-reading the k contexts; state size against length."""
    from mashup.states.core import timed

    model = _tiny("mashup_linear_attn", ["conv", "linear_attn", "conv", "linear_attn"])
    fp = _fp("cost")
    generator = torch.Generator().manual_seed(0)
    contexts = [torch.randint(0, 256, (1, context_tokens), generator=generator)
                for _ in range(max(ks))]  # fmt: skip
    states = [capture_state(model, c, fingerprint=fp) for c in contexts]
    rows = []
    for k in ks:
        _, mix_s = timed(mix_states, states[:k], mode="uniform", repeat=7)
        _, read_s = timed(
            capture_state, model, torch.cat(contexts[:k], dim=1), fingerprint=fp, repeat=3
        )
        rows.append({"k": k, "mix_s": mix_s, "reread_s": read_s, "speedup": read_s / mix_s})
        log(f"cost k={k}: mix {mix_s * 1e3:.2f} ms, re-read {read_s * 1e3:.1f} ms "
            f"({read_s / mix_s:.0f}×)")  # fmt: skip
    sizes = []
    for length in (256, 1024, 4096, 16384):
        ids = torch.randint(0, 256, (1, length), generator=generator)
        state = capture_state(model, ids, fingerprint=fp)
        sizes.append({"context_tokens": length, "state_bytes": state.nbytes(),
                      "context_bytes_int32": 4 * length})  # fmt: skip
    return {
        "model": "ReBased, d_model 64, conv+linear_attn ×2 (random weights)",
        "context_tokens": context_tokens,
        "rows": rows,
        "sizes": sizes,
    }


# --- all ----------------------------------------------------------------------------------------

EXPERIMENTS = ("exactness", "mqar_soup", "domain_lm", "cost")


def run_all(
    out: Path,
    cache: Path,
    only: tuple[str, ...] = EXPERIMENTS,
    quick: bool = False,
    log: Log = print,
) -> dict[str, Any]:
    """Run the missing experiments (results cached per experiment in ``out``)."""
    unknown = [name for name in only if name not in EXPERIMENTS]
    if unknown:
        raise MashupError(f"unknown experiment(s) {unknown}", hint=f"choose from {EXPERIMENTS}")
    out.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    for name in only:
        path = out / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
            continue
        start = time.perf_counter()
        if name == "exactness":
            result = exactness(log)
        elif name == "mqar_soup":
            result = (
                mqar_soup(log, cache, seeds=(0,), kv_per_context=(1, 4), min_queries=64, epochs=2)
                if quick
                else mqar_soup(log, cache)
            )
        elif name == "domain_lm":
            result = (
                domain_lm(log, cache, seeds=(0,), demos=2, eval_items=10, steps=30)
                if quick
                else domain_lm(log, cache)
            )
        else:
            result = cost(log, context_tokens=256 if quick else 1024)
        result["seconds"] = round(time.perf_counter() - start, 1)
        result["quick"] = quick
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(path)
        results[name] = result
    return results


# --- report -------------------------------------------------------------------------------------


def _ci(c: dict[str, float], scale: float = 1.0, unit: str = "") -> str:
    return (
        f"{c['mean'] * scale:+.3f}{unit} [{c['lo'] * scale:+.3f}, {c['hi'] * scale:+.3f}] "
        f"(n={c['n']}, {c['verdict']})"
    )


def _seed_ci(c: dict[str, Any]) -> str:
    return f"{c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] ({c['seeds']} seeds, {c['verdict']})"


def markdown(results: dict[str, Any], command: str) -> str:
    """The results as the Markdown that benchmarks/results/state_soup.md holds."""
    lines = ["# State Soup", "", f"Command: `{command}`", ""]
    if "exactness" in results:
        r = results["exactness"]
        lines += [
            f"## 1. Exactness (two contexts of {r['context_tokens']} random tokens, "
            "random-weight models)",
            "",
            "| model | mix | rel. error, first memory layer | rel. error, all layers "
            "| probe logits max abs diff |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {x['model']} | {x['mode']} | {x['max_rel_err_first_layer']:.2e} | "
            f"{x['max_rel_err_all_layers']:.2e} | {x['probe_logits_max_abs_diff']:.2e} |"
            for x in r["rows"]
        ]
        lines.append("")
    if "mqar_soup" in results:
        r = results["mqar_soup"]
        conditions = r["conditions"]
        val_acc = ", ".join(
            f"{seed}: {'not recorded' if acc is None else f'{acc:.3f}'}"
            for seed, acc in r["model"]["val_acc"].items()
        )
        lines += [
            "## 2. MQAR soup",
            "",
            f"ReBased d_model {r['model']['d_model']} trained on MQAR (seq-len "
            f"{r['model']['trained_on']['seq_len']}, {r['model']['trained_on']['kv_pairs']} kv "
            f"pairs, {r['model']['trained_on']['epochs']} epochs; validation accuracy per seed "
            f"{val_acc}). Context A and context B hold disjoint key-value pairs; "
            "each key of A and B is then queried from the state. Seeds "
            f"{r['seeds']} (one trained model each).",
            "",
            "| kv per context | queries | "
            + " | ".join(conditions)
            + " | mean − concat (95 % CI, queries pooled over seeds) "
            + "| mean − concat (95 % t CI over seeds) |",
            "|" + "---|" * (len(conditions) + 4),
        ]
        seeds_ci = r.get("mix_mean_minus_concat_over_seeds", {})
        by_n: dict[int, dict[str, dict]] = {}
        for cell in r["cells"]:
            by_n.setdefault(cell["kv_per_context"], {})[cell["condition"]] = cell
        for n, cells in sorted(by_n.items()):
            queries = next(iter(cells.values()))["queries"]
            lines.append(
                f"| {n} | {queries} | "
                + " | ".join(f"{cells[c]['acc']:.3f}" for c in conditions)
                + f" | {_ci(r['mix_mean_minus_concat'][str(n)])} | "
                + (_seed_ci(seeds_ci[str(n)]) if str(n) in seeds_ci else "")
                + " |"
            )
        lines += [
            "",
            "Each seed trains its own model and draws its own contexts, so the seeds are the "
            "sample: the verdict reads the interval over seeds.",
            "",
        ]
    if "domain_lm" in results:
        r = results["domain_lm"]
        lines += [
            "## 3. Language modelling with domain states",
            "",
            f"Byte-level ReBased LM (d_model 128, 4 layers, {r['train_steps']} steps of 16 × "
            f"{LM_WINDOW}-byte windows) trained on the training questions of "
            f"{', '.join(LM_DOMAINS)}, grouped in documents of {LM_DOC_ITEMS} same-domain items; "
            "a domain state reads "
            f"{r['demos_per_domain']} solved training items; {r['eval_items_per_domain']} "
            f"validation items per domain are scored from each state (bits per byte); seeds "
            f"{r['seeds']}.",
            "",
            "| condition | bits per byte | vs no state (95 % CI, items pooled over seeds) "
            "| vs no state (95 % t CI over seeds) |",
            "|---|---|---|---|",
        ]
        seeds_ci = r.get("vs_no_state_over_seeds", {})
        for c, v in r["bits_per_byte"].items():
            ci = _ci(r["vs_no_state"][c]) if c in r["vs_no_state"] else ""
            over = _seed_ci(seeds_ci[c]) if c in seeds_ci else ""
            lines.append(f"| {c} | {v:.4f} | {ci} | {over} |")
        mix_over = r.get("right_minus_mix_over_seeds")
        lines += [
            "",
            f"Right domain − mix of all: {_ci(r['right_minus_mix'])}"
            + (f"; over seeds {_seed_ci(mix_over)}" if mix_over else "")
            + ". The pooled interval treats the seeds' items as one sample; each seed trains its "
            "own model and scores its own items, so the interval over seeds (a t interval on "
            "the per-seed means) is the one the verdict should read. State search picked the "
            f"right domain for {r['retrieval_top1']:.0%} of {r['retrieval_queries']} queries "
            "(5 held-out items each).",
            "",
        ]
    if "cost" in results:
        r = results["cost"]
        lines += [
            f"## 4. Cost ({r['model']}, contexts of {r['context_tokens']} tokens)",
            "",
            "| k states | mix | re-read k contexts | speed-up |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {x['k']} | {x['mix_s'] * 1e3:.3f} ms | {x['reread_s'] * 1e3:.1f} ms | "
            f"{x['speedup']:.0f}× |"
            for x in r["rows"]
        ]
        lines += ["", "| context tokens | context (int32) | state |", "|---|---|---|"]
        lines += [
            f"| {x['context_tokens']} | {x['context_bytes_int32']} B | {x['state_bytes']} B |"
            for x in r["sizes"]
        ]
        lines.append("")
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path | None:
    """MQAR soup accuracy against kv pairs per context, one line per condition."""
    if "mqar_soup" not in results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = results["mqar_soup"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for condition in r["conditions"]:
        points = sorted(
            (c["kv_per_context"], c["acc"]) for c in r["cells"] if c["condition"] == condition
        )
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=condition)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("key-value pairs per context")
    ax.set_ylabel("recall accuracy (keys of A and B)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
