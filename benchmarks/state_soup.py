"""State Soup experiments, full budgets (resumable: finished experiments are kept).

    nice -n 5 python benchmarks/state_soup.py            # all four experiments
    python benchmarks/state_soup.py --only cost          # one of them

Results: benchmarks/results/state_soup/{exactness,mqar_soup,domain_lm,cost}.json, state_soup.md
and state_soup.png. Trained models are cached under ~/.cache/mashup/state_soup/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mashup.bench.state_soup import EXPERIMENTS, markdown, plot, run_all
from mashup.data.assets import default_cache_dir

OUT = Path(__file__).parent / "results" / "state_soup"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(EXPERIMENTS))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = tuple(n.strip() for n in args.only.split(",") if n.strip())
    results = run_all(OUT, default_cache_dir() / "state_soup", only=names,
                      log=lambda m: print(m, flush=True))  # fmt: skip
    # The report covers every finished experiment, not only the ones run now.
    everything = {
        name: results.get(name) or json.loads((OUT / f"{name}.json").read_text())
        for name in EXPERIMENTS
        if name in results or (OUT / f"{name}.json").is_file()
    }
    report = markdown(everything, "nice -n 5 python benchmarks/state_soup.py")
    (OUT / "state_soup.md").write_text(report + "\n")
    plot(everything, OUT / "state_soup.png")
    print(report)


if __name__ == "__main__":
    main()
