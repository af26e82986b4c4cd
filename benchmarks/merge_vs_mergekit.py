"""Merge speed and memory: mashup vs mergekit 0.1.5 on SmolLM2-135M, in one run.

Builds (or reuses, under benchmarks/results/cache/) the base model in bfloat16 and 4 variants
(base + small Gaussian noise), then runs ``ties`` (base + 4 variants, density 0.5) and
``linear`` (the 4 variants) with ``mashup merge`` and with ``mergekit-yaml`` on the same files,
each as a fresh process, and a raw floor: a process that imports torch, reads every input once
and writes one model-sized output. Wall time and peak RSS are measured per child process
(``/usr/bin/time -v``). The machine is shared, so the arms run interleaved: each round runs
mashup, mergekit and the floor once, in alternating order (3 rounds for linear, 2 for ties);
the report gives the median of each arm and the ratios taken within each round, with the load
average before and after every run. Results are written to
benchmarks/results/merge_vs_mergekit.json after every run and rendered to
benchmarks/results/merge_vs_mergekit.md at the end.

    nice -n 5 python benchmarks/merge_vs_mergekit.py [--rounds-linear 3] [--rounds-ties 2]
        [--skip-mergekit]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"
CACHE = RESULTS / "cache"
N_VARIANTS = 4
NOISE = 0.002  # relative to each tensor's standard deviation

FLOOR_SCRIPT = r"""
import sys, torch
from pathlib import Path
from mashup.merge.io import open_checkpoint
dirs, out = [Path(p) for p in sys.argv[1:-1]], Path(sys.argv[-1])
ckpts = [open_checkpoint(d, allow_pickle=False) for d in dirs]
with open(out, "wb") as f:
    for name in ckpts[0].tensors:
        first = None
        for c in ckpts:
            t = c.read(name)
            first = t if first is None else first
        f.write(memoryview(first.contiguous().reshape(-1).view(torch.uint8).numpy()))
"""


def build_models() -> tuple[Path, list[Path]]:
    """The bf16 base and its variants, built once from ensure_smollm2()."""
    import torch
    from safetensors.torch import load_file, save_file

    from mashup.data.assets import ensure_smollm2

    base_dir = CACHE / "base_bf16"
    variants = [CACHE / f"variant{i}" for i in range(1, N_VARIANTS + 1)]
    if all((d / "model.safetensors").is_file() for d in [base_dir, *variants]):
        return base_dir, variants
    source = ensure_smollm2()
    state: dict[str, torch.Tensor] = {}
    for file in sorted(source.glob("*.safetensors")):
        state.update(load_file(file))
    base = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}

    def write(target: Path, tensors: dict[str, torch.Tensor]) -> None:
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        for item in source.iterdir():
            weights = item.suffix == ".safetensors" or item.name.endswith(".index.json")
            if item.is_file() and not weights:
                shutil.copy2(item, tmp / item.name)
        config = json.loads((tmp / "config.json").read_text())
        config["dtype"] = "bfloat16"
        config.pop("torch_dtype", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)

    write(base_dir, base)
    for i, target in enumerate(variants, start=1):
        generator = torch.Generator().manual_seed(i)
        noisy = {}
        for name, tensor in state.items():
            scale = NOISE * float(tensor.float().std()) if tensor.numel() > 1 else NOISE
            noise = torch.randn(tensor.shape, generator=generator) * scale
            noisy[name] = (tensor.float() + noise).to(torch.bfloat16).contiguous()
        write(target, noisy)
    return base_dir, variants


def configs(base: Path, variants: list[Path]) -> dict[str, dict]:
    return {
        "ties": {
            "merge_method": "ties",
            "base_model": str(base),
            "models": [
                {"model": str(v), "parameters": {"weight": 1.0, "density": 0.5}} for v in variants
            ],
            "parameters": {"normalize": True, "int8_mask": True},
            "dtype": "bfloat16",
        },
        "linear": {
            "merge_method": "linear",
            "models": [{"model": str(v), "parameters": {"weight": 1.0}} for v in variants],
            "dtype": "bfloat16",
        },
    }


def run_child(cmd: list[str]) -> dict:
    """Wall time and peak RSS of one child process, measured by /usr/bin/time -v.

    A small /usr/bin/time process forks the command: the rusage of a child forked straight
    from this (large) process would start from this process's resident size.
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-v", *cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        check=False,
    )
    wall = time.perf_counter() - start
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stderr[-3000:]}")
    fields = {}
    for line in stderr.splitlines():
        key, _, value = line.strip().rpartition(": ")
        fields[key] = value
    return {
        "seconds": round(wall, 2),
        "peak_rss_mb": round(int(fields["Maximum resident set size (kbytes)"]) / 1024, 1),
        "cpu_seconds": round(
            float(fields["User time (seconds)"]) + float(fields["System time (seconds)"]), 2
        ),
    }


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds-linear", type=int, default=3)
    parser.add_argument("--rounds-ties", type=int, default=2)
    parser.add_argument("--skip-mergekit", action="store_true")
    args = parser.parse_args()

    base, variants = build_models()
    model_mb = (base / "model.safetensors").stat().st_size / 1e6
    # The largest tensor group: the embedding of every input (base + 4 variants for ties).
    from mashup.merge.io import open_checkpoint

    checkpoint = open_checkpoint(base, allow_pickle=False)
    largest = max(r.nbytes for r in checkpoint.tensors.values()) / 1e6
    python = sys.executable
    mashup = [python, "-m", "mashup.cli", "merge"]
    mergekit = [str(Path(python).with_name("mergekit-yaml"))]
    command = "nice -n 5 python benchmarks/merge_vs_mergekit.py"
    if (args.rounds_linear, args.rounds_ties) != (3, 2):
        command += f" --rounds-linear {args.rounds_linear} --rounds-ties {args.rounds_ties}"
    if args.skip_mergekit:
        command += " --skip-mergekit"
    report: dict = {
        "model": "SmolLM2-135M-Instruct, bfloat16",
        "model_mb": round(model_mb, 1),
        "largest_tensor_mb": round(largest, 1),
        "variants": N_VARIANTS,
        "cpus": os.cpu_count(),
        "nice": os.nice(0),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "command": command,
        "results": {},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / "merge_vs_mergekit.json"

    def save() -> None:  # after every run, so an interrupted benchmark keeps what it measured
        json_path.write_text(json.dumps(report, indent=2) + "\n")

    rounds = {"linear": args.rounds_linear, "ties": args.rounds_ties}
    with tempfile.TemporaryDirectory(dir=RESULTS, prefix=".bench-") as tmp:
        work = Path(tmp)
        for method, cfg in configs(base, variants).items():
            path = work / f"{method}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            inputs = len(cfg["models"]) + (1 if "base_model" in cfg else 0)
            arms = {
                "mashup": mashup + [str(path), str(work / f"{method}-mashup"), "--force", "--json"],
                "raw_floor": [
                    python,
                    "-c",
                    FLOOR_SCRIPT,
                    *([cfg["base_model"]] if "base_model" in cfg else []),
                    *[m["model"] for m in cfg["models"]],
                    str(work / f"{method}-raw_floor.bin"),
                ],
            }
            if not args.skip_mergekit:
                arms["mergekit"] = mergekit + [
                    str(path),
                    str(work / f"{method}-mergekit"),
                    "--copy-tokenizer",
                ]
            entry: dict = {
                "target_rss_mb": round(1.2 * model_mb + inputs * largest, 1),
                "rounds": [],
            }
            report["results"][method] = entry
            for index in range(rounds[method]):
                # Alternate the order, so a load that rises or falls does not favour one arm.
                order = list(arms) if index % 2 == 0 else list(reversed(arms))
                round_runs: dict = {}
                for arm in order:
                    load = os.getloadavg()[0]
                    run = run_child(arms[arm])
                    run["load_1min_before"] = round(load, 2)
                    run["load_1min_after"] = round(os.getloadavg()[0], 2)
                    round_runs[arm] = run
                    shutil.rmtree(work / f"{method}-{arm}", ignore_errors=True)
                    (work / f"{method}-{arm}.bin").unlink(missing_ok=True)
                    print(f"{method:7s} round {index + 1} {arm:10s} {run}", flush=True)
                    entry["rounds"].append({"round": index + 1, "arm": arm, **run})
                    save()
                ratios = entry.setdefault("round_ratios", [])
                ratio = {"round": index + 1}
                ratio["mashup_over_floor"] = round(
                    round_runs["mashup"]["seconds"] / round_runs["raw_floor"]["seconds"], 2
                )
                if "mergekit" in round_runs:
                    ratio["speedup_vs_mergekit"] = round(
                        round_runs["mergekit"]["seconds"] / round_runs["mashup"]["seconds"], 2
                    )
                ratios.append(ratio)
                save()
            for arm in arms:
                runs = [r for r in entry["rounds"] if r["arm"] == arm]
                entry[arm] = {
                    key: round(median([r[key] for r in runs]), 2)
                    for key in ("seconds", "peak_rss_mb", "cpu_seconds")
                }
                entry[arm]["all_seconds"] = [r["seconds"] for r in runs]
            for key in ("speedup_vs_mergekit", "mashup_over_floor"):
                values = [r[key] for r in entry["round_ratios"] if key in r]
                if values:
                    entry[f"median_{key}"] = round(median(values), 2)
                    entry[f"all_{key}"] = values
            save()
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    save()
    (RESULTS / "merge_vs_mergekit.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        "# mashup merge vs mergekit-yaml",
        "",
        f"{report['model']} ({report['model_mb']} MB), base + {report['variants']} variants; "
        f"{report['cpus']} CPUs shared with other jobs; load average before "
        f"{report['load_average_before']}, after {report['load_average_after']}. Arms run "
        "interleaved (order alternating per round); medians over rounds. "
        f"Command: `{report['command']}`.",
        "",
        "| method | arm | rounds | median wall s | all wall s | median peak RSS MB | "
        "median CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, entry in report["results"].items():
        for arm in ("mashup", "mergekit", "raw_floor"):
            if arm in entry:
                r = entry[arm]
                lines.append(
                    f"| {method} | {arm} | {len(r['all_seconds'])} | {r['seconds']} | "
                    f"{', '.join(map(str, r['all_seconds']))} | {r['peak_rss_mb']} | "
                    f"{r['cpu_seconds']} |"
                )
    lines += [
        "",
        "Ratios are taken within each round (same load), then the median over rounds.",
        "",
        "| method | speed-up vs mergekit (median; per round) | mashup / raw floor (median; per "
        "round) | mashup peak RSS MB | RSS target MB (1.2 × model + one tensor group) |",
        "|---|---|---|---|---|",
    ]
    for method, entry in report["results"].items():
        speed = entry.get("median_speedup_vs_mergekit", "n/a")
        speed_all = ", ".join(map(str, entry.get("all_speedup_vs_mergekit", [])))
        floor_all = ", ".join(map(str, entry.get("all_mashup_over_floor", [])))
        lines.append(
            f"| {method} | {speed} ({speed_all}) | {entry.get('median_mashup_over_floor')} "
            f"({floor_all}) | {entry['mashup']['peak_rss_mb']} | {entry['target_rss_mb']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
