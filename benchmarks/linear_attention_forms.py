"""Cost of the three linear-attention forms on CPU.

1. Chunked vs parallel form at T = 2048 (same inputs, ReBased feature map, F = 16 -> 256):
   median wall time of each, their ratio, and the max abs difference of the outputs.
2. Decoding cost per token after a prefix of T tokens, T up to 8192, for a conv + linear-attention
   model (recurrent state, constant size) and, for contrast, a conv + full softmax attention
   model (key/value cache that grows with T).

Writes benchmarks/results/linear_attention_forms.{json,md,png}. Run from the repository root:

    nice -n 10 python benchmarks/linear_attention_forms.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from mashup.models import LinearAttnConfig, LinearAttnForCausalLM, output_cache
from mashup.models.feature_maps import make_feature_map
from mashup.models.ops import chunked_linear_attention, parallel_linear_attention

RESULTS = Path(__file__).resolve().parent / "results"


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forms_benchmark(length: int, repeats: int, chunk_size: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    batch, heads, feature_dim, dim_v = 1, 2, 16, 32
    fmap = make_feature_map("rebased", feature_dim)
    with torch.no_grad():
        q = fmap(torch.randn(batch, heads, length, feature_dim, generator=generator))
        k = fmap(torch.randn(batch, heads, length, feature_dim, generator=generator))
    v = torch.randn(batch, heads, length, dim_v, generator=generator)
    with torch.no_grad():
        out_parallel, (s_p, _) = parallel_linear_attention(q, k, v)
        out_chunked, (s_c, _) = chunked_linear_attention(q, k, v, chunk_size=chunk_size)
        t_parallel = _median_seconds(lambda: parallel_linear_attention(q, k, v), repeats)
        t_chunked = _median_seconds(
            lambda: chunked_linear_attention(q, k, v, chunk_size=chunk_size), repeats
        )
    return {
        "T": length,
        "batch": batch,
        "heads": heads,
        "feature_dim": feature_dim,
        "expanded_dim": q.shape[-1],
        "value_dim": dim_v,
        "chunk_size": chunk_size,
        "repeats": repeats,
        "parallel_s": t_parallel,
        "chunked_s": t_chunked,
        "speedup": t_parallel / t_chunked,
        "max_abs_diff_outputs": (out_parallel - out_chunked).abs().max().item(),
        "max_abs_diff_final_state": (s_p - s_c).abs().max().item(),
    }


def _prefill(model: LinearAttnForCausalLM, ids: torch.Tensor, piece: int):
    state = None
    for start in range(0, ids.shape[1], piece):
        state = output_cache(model(ids[:, start : start + piece], cache=state))
    return state


def decode_benchmark(lengths: list[int], new_tokens: int, seed: int) -> list[dict]:
    rows = []
    for layers in (["conv", "linear_attn"], ["conv", "attn"]):
        torch.manual_seed(seed)
        config = LinearAttnConfig(
            vocab_size=8192, d_model=64, n_heads=2, feature_dim=16, layers=layers
        )
        model = LinearAttnForCausalLM(config).eval()
        for length in lengths:
            ids = torch.randint(0, 8192, (1, length + new_tokens))
            with torch.no_grad():
                state = _prefill(model, ids[:, :length], piece=512)
                times = []
                for t in range(length, length + new_tokens):
                    start = time.perf_counter()
                    out = model(ids[:, t : t + 1], cache=state)
                    times.append(time.perf_counter() - start)
                    state = output_cache(out)
            rows.append(
                {
                    "model": "+".join(layers),
                    "T": length,
                    "ms_per_token_median": 1000 * statistics.median(times[2:]),
                    "state_bytes": state.nbytes(),
                    "new_tokens": new_tokens,
                }
            )
            print(rows[-1], flush=True)
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_time, ax_size) = plt.subplots(1, 2, figsize=(10, 4))
    for model in sorted({row["model"] for row in rows}):
        mine = [row for row in rows if row["model"] == model]
        ts = [row["T"] for row in mine]
        ax_time.plot(ts, [row["ms_per_token_median"] for row in mine], marker="o", label=model)
        ax_size.plot(ts, [row["state_bytes"] / 1024 for row in mine], marker="o", label=model)
    for ax, label in ((ax_time, "ms per decoded token (median)"), (ax_size, "cache size (KiB)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens already read (T)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_time.set_ylim(bottom=0)
    fig.suptitle("Decoding from a recurrent state vs a growing key/value cache (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _markdown(result: dict) -> str:
    forms = result["forms"]
    lines = [
        "# Linear-attention forms on CPU",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}, torch {result['torch']}, {result['threads']} threads",
        "",
        f"## Chunked vs parallel, T = {forms['T']}",
        "",
        "| form | median s | speed-up | max abs diff (outputs) | max abs diff (final S) |",
        "|---|---|---|---|---|",
        f"| parallel | {forms['parallel_s']:.4f} | 1.0× | | |",
        f"| chunked (C={forms['chunk_size']}) | {forms['chunked_s']:.4f} | "
        f"{forms['speedup']:.1f}× | {forms['max_abs_diff_outputs']:.2e} | "
        f"{forms['max_abs_diff_final_state']:.2e} |",
        "",
        f"B={forms['batch']}, H={forms['heads']}, ReBased φ: F={forms['feature_dim']} -> "
        f"{forms['expanded_dim']}, Dv={forms['value_dim']}, median of {forms['repeats']} runs.",
        "",
        "## Decoding cost per token after T tokens",
        "",
        "| model | T | ms/token (median) | cache bytes |",
        "|---|---|---|---|",
    ]
    for row in result["decode"]:
        lines.append(
            f"| {row['model']} | {row['T']} | {row['ms_per_token_median']:.3f} | "
            f"{row['state_bytes']} |"
        )
    lines += ["", "![decode cost](linear_attention_forms.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument("--decode-lengths", default="128,512,1024,2048,4096,8192")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    # One thread by default: the timings are then less sensitive to other jobs on the machine.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    forms = forms_benchmark(args.length, args.repeats, args.chunk_size, args.seed)
    print(json.dumps(forms, indent=2), flush=True)
    lengths = [int(x) for x in args.decode_lengths.split(",")]
    decode = decode_benchmark(lengths, args.new_tokens, args.seed)

    result = {
        "command": "nice -n 10 python benchmarks/linear_attention_forms.py",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "forms": forms,
        "decode": decode,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "linear_attention_forms.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "linear_attention_forms.md").write_text(_markdown(result))
    _plot(decode, args.out / "linear_attention_forms.png")
    print(_markdown(result))


if __name__ == "__main__":
    main()
