"""Training, selection and the pipeline in the letter format (the Mashup paper's chat prompt)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mashup.cli import app
from mashup.data import MCItem, load_items
from mashup.eval import evaluate_items, load_model
from mashup.eval.scoring import letter_context_ids, letter_prompt
from mashup.train.config import TrainConfig
from mashup.train.trainer import VAL_SEED, build_examples, train_model
from tests.factories import make_tiny_letter_llama, make_tiny_lora
from tests.train.conftest import TINY_LORA, fake_benchmarks


def write_letter_mc(path: Path, n: int, *, seed: int) -> Path:
    """Items whose gold choice is always the second one (B): a few steps of training learn it,
    and an untrained model has no reason to prefer B."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            choices = [f"w{rng.randrange(10, 40)}" for _ in range(4)]
            question = " ".join(f"w{rng.randrange(10, 40)}" for _ in range(3))
            record = {"question": question, "choices": choices, "answer": 1, "id": i}
            handle.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def letters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("letters")
    return {
        "root": root,
        "base": make_tiny_letter_llama(root / "base"),
        "chat": make_tiny_letter_llama(root / "chat", chat=True),
        "train": write_letter_mc(root / "train.jsonl", 64, seed=1),
        "val": write_letter_mc(root / "val.jsonl", 24, seed=2),
    }


def _cfg(letters: dict[str, Path], out: Path, **overrides) -> TrainConfig:
    values = {
        "base": letters["base"],
        "data": letters["train"],
        "val": letters["val"],
        "out": out,
        "steps": 12,
        "eval_every": 6,
        "format": "letter",
        **TINY_LORA,
        **overrides,
    }
    return TrainConfig(**values)


def test_letter_examples_end_in_the_gold_letter(letters: dict[str, Path]) -> None:
    model, tokenizer = load_model(letters["base"])
    items = load_items(letters["train"], limit=3)
    b = tokenizer.convert_tokens_to_ids("B")
    for item, example in zip(
        items, build_examples(items, tokenizer, model, 256, "letter"), strict=True
    ):
        prompt = letter_context_ids(model, tokenizer, item)
        assert prompt == tokenizer(letter_prompt(item, tokenizer)).input_ids  # no chat: no BOS
        assert example["input_ids"] == [*prompt, b]
        assert example["labels"] == [-100] * len(prompt) + [b]


def test_chat_letter_examples_learn_the_end_of_the_turn(letters: dict[str, Path]) -> None:
    model, tokenizer = load_model(letters["chat"])
    item = MCItem("w11 w12", ["w13", "w14", "w15"], 2)
    (example,) = build_examples([item], tokenizer, model, 256, "letter")
    prompt = tokenizer(letter_prompt(item, tokenizer), add_special_tokens=False).input_ids
    assert tokenizer.convert_ids_to_tokens(prompt[:3]) == ["<s>", "user", ":"]
    answer = [tokenizer.convert_tokens_to_ids("C"), tokenizer.eos_token_id]
    assert example["input_ids"] == prompt + answer
    assert example["labels"] == [-100] * len(prompt) + answer
    # Left truncation keeps the whole answer.
    (short,) = build_examples([item], tokenizer, model, 5, "letter")
    assert short["input_ids"][-2:] == answer and len(short["input_ids"]) == 5


def test_letter_training_learns_and_its_curve_is_letter_accuracy(
    letters: dict[str, Path], tmp_path: Path
) -> None:
    from mashup.train.config import DEFAULT_TARGET_MODULES

    modules = list(DEFAULT_TARGET_MODULES)  # q and v alone barely move the next-letter logits
    result = train_model(_cfg(letters, tmp_path / "run", lr=1e-2, target_modules=modules))
    assert [p.step for p in result.curve] == [0, 6, 12]
    assert result.curve[0].acc < 0.5 and result.curve[-1].acc >= 0.9
    assert result.config["format"] == "letter"
    model, tokenizer = load_model(tmp_path / "run")
    items = load_items(letters["val"], limit=200, seed=VAL_SEED)
    letter = evaluate_items(model, tokenizer, items, format="letter")
    assert letter.acc == pytest.approx(result.curve[-1].acc)
    assert [s.correct for s in letter.per_item] == result.final_correct


def test_mc_fingerprint_is_unchanged_and_letter_differs(tmp_path: Path) -> None:
    mc = TrainConfig(base=tmp_path, data=tmp_path / "d", out=tmp_path / "o")
    # Runs trained before the format option existed keep matching their stored config.
    assert "format" not in mc.fingerprint()
    letter = mc.model_copy(update={"format": "letter"})
    assert letter.fingerprint()["format"] == "letter"
    with pytest.raises(ValueError):
        TrainConfig(base=tmp_path, data=tmp_path / "d", out=tmp_path / "o", format="chat")


def test_cli_train_letter_and_a_bad_format(letters: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--base", str(letters["base"]), "--data", str(letters["train"])]
    common += ["--val", str(letters["val"]), "--steps", "2", "--lr", "5e-3", "--json"]
    result = runner.invoke(app, ["train", str(tmp_path / "a"), *common, "--format", "letter"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["config"]["format"] == "letter"
    bad = runner.invoke(app, ["train", str(tmp_path / "b"), *common, "--format", "chat"])
    assert bad.exit_code != 0
    assert "unknown --format 'chat'" in bad.output
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()


def test_selection_scores_in_the_letter_format_under_their_own_key(
    letters: dict[str, Path], tmp_path: Path
) -> None:
    from mashup.select.core import select_entries
    from mashup.zoo import Zoo

    zoo = Zoo.open(tmp_path / "zoo")
    adapters = {}
    for i in range(3):
        adapters[f"l{i}"] = make_tiny_lora(tmp_path / f"l{i}", letters["base"], seed=i)
        zoo.add(adapters[f"l{i}"], task=f"t{i}", name=f"l{i}")
    sample = load_items(letters["train"], limit=16, seed=0)
    by_format = {}
    for fmt in ("mc", "letter"):
        result = select_entries(
            letters["train"], tmp_path / "zoo", letters["base"], k=1, n=16, format=fmt
        )
        by_format[fmt] = {c.name: c.score for c in result.ranking}
        assert not any(c.cached for c in result.ranking)  # mc scores are not letter scores
        assert result.target.endswith("[format=letter]") == (fmt == "letter")
    for name, path in adapters.items():
        model, tokenizer = load_model(path, base=letters["base"])
        expected = evaluate_items(model, tokenizer, sample, format="letter").acc
        assert by_format["letter"][name] == pytest.approx(expected)
    again = select_entries(
        letters["train"], tmp_path / "zoo", letters["base"], k=1, n=16, format="letter"
    )
    assert all(c.cached for c in again.ranking)
    assert {c.name: c.score for c in again.ranking} == by_format["letter"]


def test_zoo_build_and_run_in_the_letter_format(
    letters: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mashup.zoo import Zoo

    fake_benchmarks(
        monkeypatch,
        tmp_path / "cache",
        ("piqa", "csqa"),
        lambda path, i, _, split: write_letter_mc(path, 24, seed=100 + 2 * i + (split == "val")),
    )
    zoo = tmp_path / "zoo"
    runner = CliRunner()
    args = ["zoo", "build", "--base", str(letters["base"]), "--tasks", "piqa,csqa"]
    args += ["--zoo", str(zoo), "--steps", "3", "--val-n", "8", "--lr", "5e-3"]
    result = runner.invoke(app, [*args, "--format", "letter", "--json"])
    assert result.exit_code == 0, result.output
    assert {e.meta["format"] for e in Zoo.open(zoo).list()} == {"letter"}
    select = ["select", "--target", str(letters["train"]), "--zoo", str(zoo), "--n", "8"]
    select += ["--base", str(letters["base"]), "--k", "1"]
    mc = runner.invoke(app, select)
    assert mc.exit_code == 0, mc.output
    assert "csqa, piqa were trained in another format than 'mc'" in " ".join(mc.output.split())
    assert "another format" not in runner.invoke(app, [*select, "--format", "letter"]).output

    out = tmp_path / "report"
    args = ["run", str(out), "--target", str(letters["train"]), "--zoo", str(zoo)]
    args += ["--base", str(letters["base"]), "--eval-n", "16", "--steps", "4"]
    args += ["--eval-every", "2", "--select-n", "8", "--lr", "5e-3", "--format", "letter"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "letter"
    assert report["selection"]["target"].endswith("[format=letter]")
    for arm in ("scratch", "mashup"):
        config = json.loads((out / arm / "train_result.json").read_text())["config"]
        assert config["format"] == "letter"
    assert "in the letter format" in (out / "report.md").read_text()
    # The base is scored the way the arms are: letter accuracy on the held-out items.
    model, tokenizer = load_model(letters["base"])
    held_out = load_items(out / "val.jsonl", limit=16, seed=VAL_SEED)
    base_acc = evaluate_items(model, tokenizer, held_out, format="letter").acc
    assert report["comparison"]["acc"]["base"] == pytest.approx(base_acc)
