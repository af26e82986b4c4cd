"""mashup states capture / search / mix / list, eval --state, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mashup.cli import app
from mashup.data.items import MCItem, write_items
from mashup.states import capture_state, load_recurrent_model, load_state, save_state
from tests.states.conftest import words

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def contexts(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for task, seed in (("alpha", 1), ("beta", 2), ("gamma", 3)):
        path = tmp_path / f"{task}.txt"
        path.write_text(words(seed, 40))
        files[task] = path
    return files


def capture_all(model: Path, contexts: dict[str, Path], zoo: Path) -> dict[str, dict]:
    rows = {}
    for task, path in contexts.items():
        result = invoke(
            "states", "capture", "--model", model, "--context", path, "--task", task,
            "--zoo", zoo, "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        rows[task] = json.loads(result.stdout)
    return rows


def test_capture_registers_states_in_the_zoo(
    text_model: Path, contexts: dict[str, Path], tmp_path: Path
) -> None:
    zoo = tmp_path / "zoo"
    rows = capture_all(text_model, contexts, zoo)
    assert rows["alpha"]["n_tokens"] == 40
    state = load_state(rows["alpha"]["path"])
    assert state.task == "alpha" and state.context == contexts["alpha"].read_text()
    listed = json.loads(invoke("states", "list", "--zoo", zoo, "--json").stdout)
    assert sorted(r["task"] for r in listed) == ["alpha", "beta", "gamma"]
    # The zoo sees a state of this model (its fingerprint digest names the model).
    shown = json.loads(invoke("zoo", "list", "--zoo", zoo, "--json").stdout)
    assert {e["kind"] for e in shown} == {"state"}


def test_search_by_state_finds_the_context_it_came_from(
    text_model: Path, contexts: dict[str, Path], tmp_path: Path
) -> None:
    zoo = tmp_path / "zoo"
    capture_all(text_model, contexts, zoo)
    result = invoke(
        "states", "search", "--model", text_model, "--query", contexts["beta"], "--zoo", zoo,
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["hits"]
    assert hits[0]["task"] == "beta" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits[1]["score"] < 0.9999


def test_mix_writes_a_state_and_eval_uses_it(
    text_model: Path, contexts: dict[str, Path], tmp_path: Path
) -> None:
    zoo = tmp_path / "zoo"
    rows = capture_all(text_model, contexts, zoo)
    out = tmp_path / "mix.safetensors"
    result = invoke(
        "states", "mix", rows["alpha"]["name"], rows["beta"]["path"], "--mode", "weighted",
        "--weights", "3,1", "--out", out, "--zoo", zoo, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    mixed, a, b = (
        load_state(out),
        load_state(rows["alpha"]["path"]),
        load_state(rows["beta"]["path"]),
    )
    name = "layers.1.linear_attn.S"
    assert torch.allclose(mixed.tensors[name], 0.75 * a.tensors[name] + 0.25 * b.tensors[name])

    items = [MCItem(question=words(10 + i, 5), choices=["w1 w2", "w3", "w4 w5 w6"], answer=i % 3)
             for i in range(6)]  # fmt: skip
    data = tmp_path / "items.jsonl"
    write_items(items, data)
    plain = invoke("eval", text_model, "--data", data, "--json")
    with_state = invoke("eval", text_model, "--data", data, "--state", out, "--json")
    assert plain.exit_code == 0 and with_state.exit_code == 0, with_state.output
    assert json.loads(plain.stdout)["nll"] != json.loads(with_state.stdout)["nll"]

    # Scoring after the state equals scoring the state's context followed by each item.
    from mashup.eval.scoring import evaluate_items
    from mashup.states import StatefulLM

    model, tokenizer, fp = load_recurrent_model(text_model)
    context_state = capture_state(model, contexts["gamma"].read_text(), fingerprint=fp,
                                  tokenizer=tokenizer)  # fmt: skip
    stateful = evaluate_items(StatefulLM(model, context_state), tokenizer, items)
    prefixed = [
        MCItem(question=it.question, choices=it.choices, answer=it.answer,
               context=contexts["gamma"].read_text())
        for it in items
    ]  # fmt: skip
    direct = evaluate_items(model, tokenizer, prefixed)
    for s, d in zip(stateful.per_item, direct.per_item, strict=True):
        assert s.loglikelihoods == pytest.approx(d.loglikelihoods, abs=1e-4)


def test_bad_input_is_refused_and_writes_nothing(
    text_model: Path, model_dirs: dict[str, Path], contexts: dict[str, Path], tmp_path: Path
) -> None:
    zoo = tmp_path / "zoo"
    rows = capture_all(text_model, contexts, zoo)
    out = tmp_path / "bad.safetensors"

    # A state of another model (fingerprint mismatch).
    other, _, other_fp = load_recurrent_model(model_dirs["mashup_other"])
    foreign = save_state(capture_state(other, [1, 2, 3], fingerprint=other_fp),
                         tmp_path / "foreign.safetensors")  # fmt: skip
    result = invoke("states", "mix", rows["alpha"]["path"], foreign, "--out", out)
    assert result.exit_code == 2 and "another model" in result.output

    # States of a different shape (another family).
    mamba, _, mamba_fp = load_recurrent_model(model_dirs["mamba2"])
    shaped = save_state(capture_state(mamba, [1, 2, 3], fingerprint=mamba_fp),
                        tmp_path / "mamba.safetensors")  # fmt: skip
    result = invoke("states", "mix", rows["alpha"]["path"], shaped, "--out", out)
    assert result.exit_code == 2 and "error:" in result.output

    # Weights that do not match the number of states.
    result = invoke(
        "states", "mix", rows["alpha"]["path"], rows["beta"]["path"], "--mode", "weighted",
        "--weights", "1,2,3", "--out", out,
    )  # fmt: skip
    assert result.exit_code == 2 and "3 weights for 2 states" in result.output

    # A mistyped state path is reported as a missing file, not as a missing zoo entry.
    result = invoke("states", "mix", rows["alpha"]["path"], tmp_path / "typo.safetensors",
                    "--out", out, "--zoo", tmp_path / "no-zoo")  # fmt: skip
    assert result.exit_code == 2 and "typo.safetensors: state file not found" in result.output

    # A corrupt state file.
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(Path(rows["beta"]["path"]).read_bytes()[:50])
    result = invoke("states", "mix", rows["alpha"]["path"], corrupt, "--out", out)
    assert result.exit_code == 2 and "corrupt.safetensors" in result.output

    # eval --state with another model's state.
    data = tmp_path / "items.jsonl"
    write_items([MCItem(question="w1", choices=["w2", "w3"], answer=0)], data)
    result = invoke("eval", text_model, "--data", data, "--state", foreign)
    assert result.exit_code == 2 and "another model" in result.output

    # Capturing with a model that has no recurrent state.
    from tests.factories import make_tiny_llama

    llama = tmp_path / "llama"
    make_tiny_llama(llama)
    result = invoke("states", "capture", "--model", llama, "--context", contexts["alpha"],
                    "--task", "x", "--zoo", zoo)  # fmt: skip
    assert result.exit_code == 2 and "no recurrent state" in result.output

    assert not out.exists()
    listed = json.loads(invoke("states", "list", "--zoo", zoo, "--json").stdout)
    assert len(listed) == 3  # the catalog is as it was


def test_generate_from_a_captured_state(
    text_model: Path, contexts: dict[str, Path], tmp_path: Path
) -> None:
    zoo = tmp_path / "zoo"
    rows = capture_all(text_model, contexts, zoo)
    args = ["states", "generate", "--model", text_model, "--prompt", "w1 w2",
            "--max-new-tokens", "5", "--json"]  # fmt: skip
    from_state = invoke(*args, "--state", rows["alpha"]["name"], "--zoo", zoo)
    plain = invoke(*args)
    assert from_state.exit_code == 0 and plain.exit_code == 0, from_state.output
    assert len(json.loads(from_state.stdout)["tokens"]) == 5
    long_prompt = contexts["alpha"].read_text() + " w1 w2"
    direct = invoke("states", "generate", "--model", text_model, "--prompt", long_prompt,
                    "--max-new-tokens", "5", "--json")  # fmt: skip
    assert json.loads(direct.stdout)["tokens"] == json.loads(from_state.stdout)["tokens"]


MINILM = Path.home() / ".cache" / "mashup" / "models" / "all-MiniLM-L6-v2"


@pytest.mark.skipif(
    not (MINILM / "model.safetensors").is_file(), reason="MiniLM not prepared (mashup data prepare)"
)
def test_search_by_embedding_ranks_the_matching_context_first(
    text_model: Path, tmp_path: Path
) -> None:
    zoo = tmp_path / "zoo"
    texts = {
        "cooking": "Boil the pasta in salted water.\nChop the onions and fry them in butter.",
        "astronomy": "The planet orbits a distant star.\nA telescope observes the galaxy at night.",
    }
    for task, text in texts.items():
        path = tmp_path / f"{task}.txt"
        path.write_text(text)
        result = invoke(
            "states", "capture", "--model", text_model, "--context", path, "--task", task,
            "--zoo", zoo, "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
    query = tmp_path / "query.txt"
    query.write_text("Stars and planets seen through a telescope.")
    result = invoke(
        "states", "search", "--model", text_model, "--query", query, "--by", "embedding",
        "--zoo", zoo, "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)["hits"]
    assert [h["task"] for h in hits] == ["astronomy", "cooking"]
    assert hits[0]["score"] > hits[1]["score"]
