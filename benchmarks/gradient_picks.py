"""How much the gradient metric's picks depend on the selection sample.

The leave-one-out runs select on one sample of each target's training items (``--select-seed``,
0), which the training seeds do not resample. For each target this draws other samples of the
same size (shuffle seeds 1, 2, ...), ranks the other library entries by the gradient metric on
each (no training) and reports how often the top k is the sample-0 pair.

    python benchmarks/gradient_picks.py                   # the 20-step bf16 run's library
    python benchmarks/gradient_picks.py --seeds 0,1,2 --n 64

Results: benchmarks/results/gradient_picks<suffix>.{md,json}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
DEFAULT_ZOO = "~/.cache/mashup/runs/leave_one_out_s20_zoo-s300_bf16/zoo"


def picks(zoo_dir: Path, base: Path, target: str, n: int, seed: int, k: int, bf16: bool) -> dict:
    """The top k of the zoo's other entries by the gradient metric on one sample of ``target``."""
    from mashup.bench.leave_one_out import task_files
    from mashup.data import load_items
    from mashup.select.gradient import gradient_scores
    from mashup.zoo import Zoo

    entries = [e for e in Zoo.open(zoo_dir, create=False).list() if e.name != target]
    items = load_items(task_files(target)[0], limit=n, seed=seed)
    started = time.perf_counter()
    scores = gradient_scores(entries, base, items, bf16=bf16)
    ranked = sorted(scores, key=lambda name: (-scores[name], name))
    return {
        "target": target,
        "seed": seed,
        "n": len(items),
        "selected": ranked[:k],
        "scores": scores,
        "seconds": round(time.perf_counter() - started, 2),
    }


def markdown(records: list[dict], command: str) -> str:
    seeds = sorted({r["seed"] for r in records})
    lines = [
        f"Command: `{command}`",
        "",
        "| target | " + " | ".join(f"sample {s}" for s in seeds) + " | same pair as sample 0 |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    same_total = others_total = 0
    for target in dict.fromkeys(r["target"] for r in records):
        by_seed = {r["seed"]: r["selected"] for r in records if r["target"] == target}
        first = set(by_seed.get(seeds[0], []))
        others = [s for s in seeds[1:] if s in by_seed]
        same = sum(set(by_seed[s]) == first for s in others)
        same_total += same
        others_total += len(others)
        cells = [", ".join(by_seed[s]) if s in by_seed else "—" for s in seeds]
        lines.append(f"| {target} | " + " | ".join(cells) + f" | {same} of {len(others)} |")
    lines += ["", f"The sample-0 pair again on {same_total} of {others_total} other samples."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from mashup.bench.leave_one_out import LIBRARY
    from mashup.data.assets import smollm2_dir
    from mashup.files import write_json, write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default=DEFAULT_ZOO, help="the leave-one-out run's library")
    parser.add_argument("--base", default=None, help="base model (default: SmolLM2-135M)")
    parser.add_argument("--targets", default=",".join(LIBRARY))
    parser.add_argument("--seeds", default="0,1,2,3,4", help="sample shuffle seeds")
    parser.add_argument("--n", type=int, default=32, help="items per sample")
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--suffix", default="", help="appended to the results' file names")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    zoo_dir = Path(args.zoo).expanduser()
    base = Path(args.base).expanduser() if args.base else smollm2_dir()
    records = []
    for target in args.targets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            record = picks(zoo_dir, base, target, args.n, seed, args.k, args.precision == "bf16")
            print(f"{target} sample {seed}: {', '.join(record['selected'])}", flush=True)
            records.append(record)
    command = "python benchmarks/gradient_picks.py" + (" " + " ".join(argv) if argv else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"gradient_picks{args.suffix}.json", {"command": command, "records": records})
    write_text(out / f"gradient_picks{args.suffix}.md", markdown(records, command))
    print(markdown(records, command))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
