"""State Soup experiments: the exactness math, intervals, caching and the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mashup.bench import state_soup
from mashup.bench.state_soup import markdown, paired_interval, run_all


def test_paired_interval_calls_ties_and_differences() -> None:
    tie = paired_interval([1.0, -1.0, 0.5, -0.5])
    assert tie["verdict"] == "tie" and tie["lo"] < 0 < tie["hi"]
    higher = paired_interval([1.0, 1.1, 0.9, 1.0, 1.05])
    assert higher["verdict"] == "higher" and higher["mean"] == pytest.approx(1.01)


def test_exactness_sum_is_exact_only_for_one_undecayed_layer() -> None:
    rows = {(r["model"], r["mode"]): r for r in state_soup.exactness(lambda m: None, length=16)[
        "rows"]}  # fmt: skip
    assert rows[("one linear-attention layer", "sum")]["max_rel_err_all_layers"] <= 1e-5
    deep = rows[("conv + 2 linear-attention layers + MLP", "sum")]
    assert deep["max_rel_err_all_layers"] > 1e-4  # deeper layers see different inputs
    for model in ("Mamba-2, 2 layers (decayed)", "RWKV-4, 2 layers (decayed)"):
        # Accounting for the decay brings the composition much closer than the plain sum.
        assert (
            rows[(model, "decay")]["max_rel_err_first_layer"]
            < rows[(model, "sum")]["max_rel_err_first_layer"] / 3
        )


def test_cost_mixing_is_faster_than_rereading() -> None:
    result = state_soup.cost(lambda m: None, context_tokens=128, ks=(4,))
    assert result["rows"][0]["speedup"] > 1
    sizes = [s["state_bytes"] for s in result["sizes"]]
    assert len(set(sizes)) == 1  # the state does not grow with the context


def test_run_all_keeps_finished_experiments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def fake_cost(log, context_tokens=1024):  # noqa: ANN001
        calls.append(context_tokens)
        row = {"k": 2, "mix_s": 1e-4, "reread_s": 1e-2, "speedup": 100.0}
        size = {"context_tokens": 8, "state_bytes": 10, "context_bytes_int32": 32}
        return {"model": "m", "context_tokens": context_tokens, "rows": [row], "sizes": [size]}

    monkeypatch.setattr(state_soup, "cost", fake_cost)
    first = run_all(tmp_path, tmp_path / "cache", only=("cost",), quick=True)
    again = run_all(tmp_path, tmp_path / "cache", only=("cost",), quick=True)
    assert calls == [256] and first == again
    assert json.loads((tmp_path / "cost.json").read_text())["quick"] is True
    assert "| 2 | 0.100 ms | 10.0 ms | 100× |" in markdown(again, "cmd")
    with pytest.raises(state_soup.MashupError, match="unknown experiment"):
        run_all(tmp_path, tmp_path / "cache", only=("nope",))


@pytest.mark.slow
def test_quick_cli_runs_every_experiment(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mashup.cli import app

    result = CliRunner().invoke(
        app, ["bench", "state-soup", "--quick", "--out", str(tmp_path), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["results"]) == {"exactness", "mqar_soup", "domain_lm", "cost"}
    assert (tmp_path / "state_soup.md").exists() and (tmp_path / "state_soup.png").exists()


def test_the_domain_lm_interval_reads_the_seeds() -> None:
    # Each seed trains its own model and scores its own items: the seeds are the sample.
    lower = state_soup.seed_interval({0: -0.010, 1: -0.012, 2: -0.008})
    assert lower["verdict"] == "lower" and lower["seeds"] == 3 and lower["hi"] < 0
    assert lower["mean"] == pytest.approx(-0.010)
    assert state_soup.seed_interval({0: -0.01, 1: 0.01, 2: -0.002})["verdict"] == "tie"
    two = state_soup.seed_interval({0: -0.010, 1: -0.012})
    assert two["verdict"] == "no claim (2 seeds; interval says tie)"  # t on 1 df: 12.7


def test_the_mqar_soup_interval_reads_the_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Random-weight models stand in for the trained ones: one model per seed, as in the run.
    def untrained(seed: int, cache: Path, log: object, epochs: int = 8) -> object:
        torch.manual_seed(seed)
        config = state_soup.LinearAttnConfig(
            vocab_size=8192, d_model=32, n_heads=2, feature_dim=8, kernel="rebased",
            layers=["linear_attn"], mlp=False,
        )  # fmt: skip
        return state_soup.LinearAttnForCausalLM(config).eval()

    monkeypatch.setattr(state_soup, "mqar_model", untrained)
    result = state_soup.mqar_soup(
        lambda m: None, Path(), seeds=(0, 1, 2), kv_per_context=(2,), min_queries=24
    )
    pooled = result["mix_mean_minus_concat"]["2"]
    over_seeds = result["mix_mean_minus_concat_over_seeds"]["2"]
    # Every seed asks as many queries, so the mean over seeds is the pooled mean; the interval
    # is over 3 per-seed differences, not over the pooled queries.
    assert pooled["n"] == 24 and over_seeds["seeds"] == 3
    assert over_seeds["mean"] == pytest.approx(pooled["mean"])
    table = markdown({"mqar_soup": result}, "cmd")
    assert "(95 % t CI over seeds)" in table and "(3 seeds, " in table
