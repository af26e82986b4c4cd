"""Merge speed and memory: mashup vs mergekit 0.1.5 on SmolLM2-135M, in one run.

Builds (or reuses, under benchmarks/results/cache/) the base model in bfloat16 and 4 variants
(base + small Gaussian noise), then runs ``ties`` (base + 4 variants, density 0.5) and
``linear`` (the 4 variants) with ``mashup merge`` and with ``mergekit-yaml`` on the same files,
each as a fresh process, and a raw floor: a process that imports torch, reads every input once
and writes one model-sized output. Wall time and peak RSS are measured per child process
(``os.wait4``). Results go to benchmarks/results/merge_vs_mergekit.{json,md}, with the load
average of the machine before and after, since other jobs may share the cores.

    nice -n 10 python benchmarks/merge_vs_mergekit.py [--repeats 1] [--skip-mergekit]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per arm (median reported)")
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
    load_before = os.getloadavg()
    results: dict[str, dict] = {}
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
                    str(work / f"{method}-floor.bin"),
                ],
            }
            if not args.skip_mergekit:
                arms["mergekit"] = mergekit + [
                    str(path),
                    str(work / f"{method}-mergekit"),
                    "--copy-tokenizer",
                ]
            entry: dict[str, dict] = {}
            for arm, cmd in arms.items():
                runs = []
                for _ in range(args.repeats):
                    runs.append(run_child(cmd))
                    shutil.rmtree(work / f"{method}-{arm}", ignore_errors=True)
                runs.sort(key=lambda r: r["seconds"])
                entry[arm] = {**runs[len(runs) // 2], "all_seconds": [r["seconds"] for r in runs]}
                print(f"{method:7s} {arm:10s} {entry[arm]}", flush=True)
            target_rss = 1.2 * model_mb + inputs * largest
            entry["target_rss_mb"] = round(target_rss, 1)
            if "mergekit" in entry:
                entry["speedup_vs_mergekit"] = round(
                    entry["mergekit"]["seconds"] / entry["mashup"]["seconds"], 2
                )
            entry["ratio_to_floor"] = round(
                entry["mashup"]["seconds"] / entry["raw_floor"]["seconds"], 2
            )
            results[method] = entry
    report = {
        "model": "SmolLM2-135M-Instruct, bfloat16",
        "model_mb": round(model_mb, 1),
        "largest_tensor_mb": round(largest, 1),
        "variants": N_VARIANTS,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "command": "nice -n 10 python benchmarks/merge_vs_mergekit.py"
        + (f" --repeats {args.repeats}" if args.repeats != 1 else ""),
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "merge_vs_mergekit.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "merge_vs_mergekit.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict) -> str:
    lines = [
        "# mashup merge vs mergekit-yaml",
        "",
        f"{report['model']} ({report['model_mb']} MB), base + {report['variants']} variants; "
        f"{report['cpus']} CPUs; load average before {report['load_average_before']}, after "
        f"{report['load_average_after']}. Command: `{report['command']}`.",
        "",
        "| method | arm | wall s | peak RSS MB | CPU s |",
        "|---|---|---|---|---|",
    ]
    for method, entry in report["results"].items():
        for arm in ("mashup", "mergekit", "raw_floor"):
            if arm in entry:
                r = entry[arm]
                lines.append(
                    f"| {method} | {arm} | {r['seconds']} | {r['peak_rss_mb']} | "
                    f"{r['cpu_seconds']} |"
                )
    lines += ["", "| method | speed-up vs mergekit | mashup / raw floor | RSS target MB |"]
    lines += ["|---|---|---|---|"]
    for method, entry in report["results"].items():
        lines.append(
            f"| {method} | {entry.get('speedup_vs_mergekit', 'n/a')} | "
            f"{entry['ratio_to_floor']} | {entry['target_rss_mb']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
