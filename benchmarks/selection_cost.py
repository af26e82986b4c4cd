"""What reading each prompt once saves when a candidate is scored for selection.

For each commonsense target, one LoRA candidate of the leave-one-out library scores the same
target train items twice per round: reading every prompt + choice whole (the old path) and
reading each prompt once with its key/value cache copied to the choices (the default). Arms
alternate within a round, so the ratio is taken under the same load.

    python benchmarks/selection_cost.py                      # 128 items, 2 rounds, 7 targets
    python benchmarks/selection_cost.py --items 32 --targets arc_easy --rounds 1

Results: benchmarks/results/selection_cost.{md,json}.
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
    from mashup.bench.leave_one_out import LIBRARY
    from mashup.data.assets import default_cache_dir, ensure_benchmark, ensure_smollm2
    from mashup.data.items import load_items
    from mashup.eval.scoring import load_model, score_choices

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default=",".join(LIBRARY))
    p.add_argument("--items", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16, help="as mashup select")
    p.add_argument("--zoo", type=Path, default=None, help="default: the leave-one-out library")
    args = p.parse_args()
    zoo = args.zoo or default_cache_dir() / "runs" / "leave_one_out" / "zoo" / "runs"
    adapters = sorted(d for d in zoo.iterdir() if (d / "adapter_config.json").is_file())
    if not adapters:
        raise SystemExit(f"no adapters under {zoo}: run benchmarks/mashup_leave_one_out.py")
    base = ensure_smollm2()
    rows = []
    for target in args.targets.split(","):
        candidate = next(a for a in adapters if a.name != target)
        model, tokenizer = load_model(candidate, base=base)
        items = load_items(ensure_benchmark(target, "train"), limit=args.items, seed=0)
        seconds: dict[str, list[float]] = {"whole": [], "shared": []}
        scores = {}
        for _ in range(args.rounds):
            for arm in ("whole", "shared"):
                start = time.perf_counter()
                scores[arm] = score_choices(
                    model, tokenizer, items, args.batch_size, share_prompt=arm == "shared"
                )
                seconds[arm].append(time.perf_counter() - start)
        diff = max(
            abs(a - b)
            for xs, ys in zip(scores["whole"], scores["shared"], strict=True)
            for a, b in zip(xs, ys, strict=True)
        )
        same_pred = sum(
            max(range(len(xs)), key=xs.__getitem__) == max(range(len(ys)), key=ys.__getitem__)
            for xs, ys in zip(scores["whole"], scores["shared"], strict=True)
        )
        ratios = [w / s for w, s in zip(seconds["whole"], seconds["shared"], strict=True)]
        row = {
            "target": target,
            "candidate": candidate.name,
            "items": len(items),
            "whole_s": statistics.median(seconds["whole"]),
            "shared_s": statistics.median(seconds["shared"]),
            "speedup": statistics.median(ratios),
            "max_abs_diff": diff,
            "same_prediction": same_pred,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    lines = [
        "Command: `python benchmarks/selection_cost.py "
        f"--items {args.items} --rounds {args.rounds} --targets {args.targets}`",
        "",
        "| target | candidate | items | whole rows | prompt shared | speed-up | max abs diff of "
        "log-likelihoods | same prediction |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['candidate']} | {r['items']} | {r['whole_s']:.1f} s | "
            f"{r['shared_s']:.1f} s | {r['speedup']:.2f}× | {r['max_abs_diff']:.1e} | "
            f"{r['same_prediction']}/{r['items']} |"
        )
    total_whole = sum(r["whole_s"] for r in rows)
    total_shared = sum(r["shared_s"] for r in rows)
    lines += ["", f"All targets: {total_whole:.0f} s → {total_shared:.0f} s "
              f"({total_whole / total_shared:.2f}×)."]  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "selection_cost.json").write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "selection_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
