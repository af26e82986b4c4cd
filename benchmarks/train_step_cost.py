"""What a training step costs: logits at every position or at the answers, fp32 or bf16.

For each commonsense task, the same batches of train items (LoRA on SmolLM2-135M, the
training defaults: r 8 on every attention and MLP projection, batch 8) go through a forward,
a backward and an AdamW step three times per round: right-padded with the model's own
causal-LM loss over logits at every position (the old path); left-padded with explicit
positions and ``logits_to_keep`` covering the answers, with ``answer_loss`` (the default for
plain transformers); and the same under bf16 autocast (``--precision bf16``, fast on CPUs with
AVX512-BF16 or AMX). The optimizer's learning rate is 0, so every arm sees the same weights and
their losses can be compared. Arms alternate within a round, so the ratios are taken under the
same load.

    python benchmarks/train_step_cost.py                          # 7 tasks, 4 batches, 2 rounds
    python benchmarks/train_step_cost.py --tasks arc_easy --batches 2 --rounds 1

Results: benchmarks/results/train_step_cost.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    from mashup.hub import stay_offline

    stay_offline()
    import torch

    from mashup.bench.leave_one_out import LIBRARY
    from mashup.data.assets import ensure_benchmark, ensure_smollm2
    from mashup.data.items import load_items
    from mashup.errors import MashupError
    from mashup.train.config import TrainConfig
    from mashup.train.trainer import PadCollator, answer_loss, build_examples, load_for_training

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(LIBRARY))
    p.add_argument("--batches", type=int, default=4, help="batches per task and round")
    p.add_argument("--batch-size", type=int, default=8, help="as the leave-one-out arms")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "train_step_cost")
    args = p.parse_args()
    for name in ("batches", "batch_size", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    try:
        files = {task: ensure_benchmark(task, "train") for task in args.tasks.split(",")}
    except MashupError as error:  # an unknown task, a damaged cache
        p.error(str(error))
    base = ensure_smollm2()
    rows = []
    for task, data in files.items():
        cfg = TrainConfig(base=base, data=data, out=Path("unused"))
        model, tokenizer, _ = load_for_training(cfg)
        model.train()
        optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=0.0)
        items = load_items(data, limit=args.batches * args.batch_size, seed=0)
        examples = build_examples(items, tokenizer, model, cfg.max_length)
        batches = [
            examples[i : i + args.batch_size] for i in range(0, len(examples), args.batch_size)
        ]
        right = PadCollator(tokenizer.pad_token_id)
        left = PadCollator(tokenizer.pad_token_id, left=True)
        arms = {
            "all positions": (right, False),
            "answer positions": (left, False),
            "answer positions, bf16": (left, True),
        }
        seconds: dict[str, list[float]] = {arm: [] for arm in arms}
        losses: dict[str, list[float]] = {arm: [] for arm in arms}
        kept = total = 0
        for round_ in range(args.rounds):
            for batch in batches:
                for arm, (collate, bf16) in arms.items():
                    inputs = collate(batch)
                    start = time.perf_counter()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        if collate.left:
                            labels = inputs.pop("labels")
                            keep = inputs.pop("logits_to_keep")
                            loss = answer_loss(model(**inputs, logits_to_keep=keep), labels)
                            if round_ == 0 and not bf16:
                                kept += len(keep) * len(batch)
                                total += inputs["input_ids"].numel()
                        else:
                            loss = model(**inputs).loss
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad()
                    seconds[arm].append(time.perf_counter() - start)
                    losses[arm].append(loss.item())
        old, new, bf16 = (statistics.median(seconds[arm]) for arm in arms)
        reference, exact, mixed = losses.values()
        row = {
            "task": task,
            "batches": len(batches),
            "rounds": args.rounds,
            "seconds_all_positions": round(old, 4),
            "seconds_answer_positions": round(new, 4),
            "seconds_answer_positions_bf16": round(bf16, 4),
            "speedup": round(old / new, 3),
            "speedup_bf16": round(old / bf16, 3),
            "logit_columns_kept": round(kept / max(total, 1), 3),
            "max_abs_loss_diff": max(abs(a - b) for a, b in zip(reference, exact, strict=True)),
            "max_abs_loss_diff_bf16": max(
                abs(a - b) for a, b in zip(reference, mixed, strict=True)
            ),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    import sys

    import torch

    from mashup.devices import cpu_has_bf16

    old = sum(r["seconds_all_positions"] for r in rows)
    new = sum(r["seconds_answer_positions"] for r in rows)
    bf16 = sum(r["seconds_answer_positions_bf16"] for r in rows)
    command = "python benchmarks/train_step_cost.py " + " ".join(sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}`",
        "",
        "Median seconds per training step (forward, backward, AdamW), batch "
        f"{args.batch_size}, LoRA r 8 on every projection of SmolLM2-135M, "
        f"{args.batches} batches × {args.rounds} rounds per task, arms alternating; "
        f"{torch.get_num_threads()} thread(s), CPU bf16 instructions: "
        f"{'yes' if cpu_has_bf16() else 'no'}.",
        "",
        "| task | all positions | answer positions | speed-up | loss diff "
        "| answer positions, bf16 | speed-up | loss diff | logit columns kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['seconds_all_positions']:.3f} s "
            f"| {r['seconds_answer_positions']:.3f} s | {r['speedup']:.2f}× "
            f"| {r['max_abs_loss_diff']:.1e} "
            f"| {r['seconds_answer_positions_bf16']:.3f} s | {r['speedup_bf16']:.2f}× "
            f"| {r['max_abs_loss_diff_bf16']:.1e} | {r['logit_columns_kept']:.0%} |"
        )
    lines += [
        "",
        f"Sum of the medians: all positions {old:.2f} s, answer positions {new:.2f} s "
        f"({old / new:.2f}×), answer positions in bf16 {bf16:.2f} s ({old / bf16:.2f}×). "
        "Loss diff: the largest difference from the all-positions arm's loss on the same batch.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
