"""How much the gradient metric's picks depend on the selection sample.

The leave-one-out runs select on one sample of each target's training items (``select_seed``
0), which the training seeds do not resample. For each target this draws other samples of the
same size (shuffle seeds 1, 2, ...), ranks the other library entries by the gradient metric on
each (no training) and reports how often the top k is the sample-0 pair.

With ``--rows`` (a leave-one-out results or rescored file), each sample's picks are matched to
the finished rows of the ``gradient_delta*`` variants that trained them (any variant whose
target and pair agree), and the summary of every sample whose pairs were all trained is given:
what the benchmark would have reported had it selected on that sample.

    python benchmarks/gradient_picks.py                   # the 20-step bf16 run's library
    python benchmarks/gradient_picks.py --seeds 0,1,2 --n 64
    python benchmarks/gradient_picks.py --from-record --rows \\
        benchmarks/results/leave_one_out_s20_zoo-s300_bf16/rescored_500.jsonl

Results: benchmarks/results/gradient_picks<suffix>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mashup.errors import MashupError

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


def rows_for_sample(
    records: list[dict], rows: list[dict], seed: int, prefix: str
) -> tuple[list[dict], list[str]]:
    """The finished rows that trained sample ``seed``'s pair for each target (relabelled as one
    variant), and the targets whose pair no row of a ``prefix*`` variant trained."""
    trained: dict[tuple[str, frozenset], str] = {}
    for row in rows:  # the first variant to train a (target, pair) stands for it
        if row["variant"].startswith(prefix):
            trained.setdefault((row["target"], frozenset(row["selected"])), row["variant"])
    chosen, missing = [], []
    for record in (r for r in records if r["seed"] == seed):
        variant = trained.get((record["target"], frozenset(record["selected"])))
        if variant is None:
            missing.append(f"{record['target']} ({', '.join(record['selected'])})")
            continue
        chosen += [
            dict(r, variant=prefix)
            for r in rows
            if r["variant"] == variant and r["target"] == record["target"]
        ]
    return chosen, missing


def sample_table(records: list[dict], rows: list[dict], prefix: str) -> str:
    """Per sample: the summary of the rows that trained its pairs (see ``rows_for_sample``)."""
    from mashup.bench.leave_one_out_report import goals_met, summarise_variant

    lines = [
        "",
        f"Each sample's pairs as trained (rows of the {prefix}* variants that trained them):",
        "",
        "| sample | targets × seeds | gain, points [95 % CI, seeds and items] | share of steps "
        "| share of wall-clock | goals met |",
        "|---|---|---|---|---|---|",
    ]
    for seed in sorted({r["seed"] for r in records}):
        chosen, missing = rows_for_sample(records, rows, seed, prefix)
        if missing:
            lines.append(f"| {seed} | not trained: {'; '.join(missing)} | | | | |")
            continue
        v = summarise_variant(prefix, chosen)
        met = goals_met(v)
        lines.append(
            f"| {seed} | {len(v.targets)} × {len(v.seeds)} | {v.gain:+.2f} "
            f"[{v.ci_seeds[0]:+.1f}, {v.ci_seeds[1]:+.1f}] | {v.share_of_steps:.0%} "
            f"| {v.share_of_wall_clock:.0%} | {sum(met.values())} of 3 |"
        )
    return "\n".join(lines) + "\n"


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
    parser.add_argument(
        "--from-record", action="store_true", help="read the picks from the results' record"
    )
    parser.add_argument("--rows", default=None, help="leave-one-out rows (results/rescored jsonl)")
    parser.add_argument("--variant-prefix", default="gradient_delta")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give integers, e.g. 0,1,2")
    # Every input is read and checked before anything is written.
    rows = read_rows(Path(args.rows), parser) if args.rows else None
    out = Path(args.out)
    record_file = out / f"gradient_picks{args.suffix}.json"
    command = "python benchmarks/gradient_picks.py" + (" " + " ".join(argv) if argv else "")
    if args.from_record:
        try:
            stored = json.loads(record_file.read_text())
            records, command = stored["records"], stored["command"] + f"`, then `{command}"
        except (OSError, ValueError, KeyError) as exc:
            parser.error(f"{record_file}: no readable record ({exc}); run without --from-record")
    else:
        zoo_dir = Path(args.zoo).expanduser()
        base = Path(args.base).expanduser() if args.base else smollm2_dir()
        bf16 = args.precision == "bf16"
        records = []
        try:
            for target in args.targets.split(","):
                for seed in seeds:
                    record = picks(zoo_dir, base, target, args.n, seed, args.k, bf16)
                    print(f"{target} sample {seed}: {', '.join(record['selected'])}", flush=True)
                    records.append(record)
        except MashupError as exc:
            parser.error(str(exc))
    text = markdown(records, command)
    if rows is not None:
        text += sample_table(records, rows, args.variant_prefix)
    out.mkdir(parents=True, exist_ok=True)
    if not args.from_record:
        write_json(record_file, {"command": command, "records": records})
    write_text(out / f"gradient_picks{args.suffix}.md", text)
    print(text)


def read_rows(path: Path, parser: argparse.ArgumentParser) -> list[dict]:
    """Leave-one-out rows (one JSON object a line), or one error line naming the problem."""
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as exc:
        parser.error(f"--rows {path}: cannot read leave-one-out rows ({exc})")
    needed = {"target", "variant", "seed", "selected"}
    fits = [isinstance(r, dict) and needed <= set(r) for r in rows]
    bad = next((i for i, ok in enumerate(fits, 1) if not ok), None)
    if bad is not None:
        parser.error(f"--rows {path}: line {bad} lacks one of {', '.join(sorted(needed))}")
    return rows


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
