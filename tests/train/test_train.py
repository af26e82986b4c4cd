"""Training: example building, LoRA and full runs, resume after a kill, --init, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mashup.cli import app
from mashup.errors import MashupError
from mashup.train.config import TrainConfig
from mashup.train.trainer import build_examples, load_for_training, train_model, work_dir
from tests.factories import make_tiny_lora
from tests.train.conftest import TINY_LORA


def _cfg(tiny: dict[str, Path], out: Path, **overrides) -> TrainConfig:
    values = {
        "base": tiny["base"],
        "data": tiny["train"],
        "val": tiny["val"],
        "out": out,
        "steps": 10,
        "eval_every": 5,
        **TINY_LORA,
        **overrides,
    }
    return TrainConfig(**values)


def test_examples_train_on_the_answer_only(tiny: dict[str, Path]) -> None:
    from mashup.data import load_items
    from mashup.eval.scoring import encode_pair

    cfg = _cfg(tiny, tiny["root"] / "unused")
    model, tokenizer, kind = load_for_training(cfg)
    assert kind == "adapter"
    items = load_items(tiny["train"], limit=3)
    for item, example in zip(items, build_examples(items, tokenizer, model, 256), strict=True):
        prompt, answer = encode_pair(
            tokenizer, f"Question: {item.question}\nAnswer:", f" {item.choices[item.answer]}"
        )
        assert example["input_ids"] == prompt + answer
        assert example["labels"] == [-100] * len(prompt) + answer
    # Left truncation keeps the whole answer.
    short = build_examples(items[:1], tokenizer, model, 4)[0]
    assert len(short["input_ids"]) == 4 and short["labels"][-2:] == short["input_ids"][-2:]


def test_lora_run_learns_saves_and_reloads(tiny: dict[str, Path], tmp_path: Path) -> None:
    from mashup.data import load_items
    from mashup.eval import evaluate_items, load_model
    from mashup.train.trainer import VAL_SEED

    out = tmp_path / "run"
    result = train_model(_cfg(tiny, out, steps=15))
    assert [p.step for p in result.curve] == [0, 5, 10, 15]
    assert result.curve[-1].acc > result.curve[0].acc
    assert result.curve[-1].acc >= 0.9
    # Curve times count optimizer work only: nothing before step 0, evaluation excluded.
    assert result.curve[0].train_seconds < 0.5
    times = [p.train_seconds for p in result.curve]
    assert times == sorted(times) and times[-1] <= result.train_seconds + 1e-6
    assert (out / "adapter_model.safetensors").is_file()
    assert not (out / "checkpoints").exists() and not work_dir(out).exists()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    # The saved adapter scores what the last curve point says.
    model, tokenizer = load_model(out)
    items = load_items(tiny["val"], limit=200, seed=VAL_SEED)
    assert evaluate_items(model, tokenizer, items).acc == pytest.approx(result.curve[-1].acc)
    # Same config again: the stored result comes back without training.
    again = train_model(_cfg(tiny, out, steps=15))
    assert again.train_seconds == result.train_seconds
    with pytest.raises(MashupError, match="already exists"):
        train_model(_cfg(tiny, out, steps=16))


def test_resume_after_kill(tiny: dict[str, Path], tmp_path: Path) -> None:
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 7:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    cfg = _cfg(tiny, out, steps=10, save_every=5)
    with pytest.raises(MashupError, match="interrupted"):
        train_model(cfg, callbacks=[Kill()])
    assert not out.exists()
    assert (work_dir(out) / "checkpoints" / "checkpoint-5").is_dir()
    result = train_model(cfg)
    assert result.resumed_from == 5
    assert result.steps == 10
    assert [p.step for p in result.curve] == [0, 5, 10]
    assert (out / "adapter_model.safetensors").is_file()


def test_full_finetune_and_init_from_adapter(tiny: dict[str, Path], tmp_path: Path) -> None:
    full = train_model(_cfg(tiny, tmp_path / "full", full=True, steps=2, eval_every=2, lr=1e-3))
    assert full.kind == "model"
    assert (tmp_path / "full" / "model.safetensors").is_file()
    assert (tmp_path / "full" / "config.json").is_file()

    adapter = make_tiny_lora(
        tmp_path / "init", tiny["base"], seed=3, r=8, alpha=16, target_modules=("q_proj", "v_proj")
    )
    from mashup.data import load_items
    from mashup.eval import evaluate_items, load_model
    from mashup.train.trainer import VAL_SEED

    model, tokenizer = load_model(adapter, base=tiny["base"])
    init_acc = evaluate_items(model, tokenizer, load_items(tiny["val"], seed=VAL_SEED)).acc
    result = train_model(_cfg(tiny, tmp_path / "from_init", init=adapter, steps=2, eval_every=2))
    assert result.curve[0].step == 0
    assert result.curve[0].acc == pytest.approx(init_acc)  # step 0 is the merged adapter


def test_cli_train_json_and_bad_input(tiny: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["train", str(out), "--base", str(tiny["base"]), "--data", str(tiny["train"])]
    args += ["--val", str(tiny["val"]), "--steps", "2", "--eval-every", "1", "--val-n", "8"]
    args += ["--target-modules", "q_proj,v_proj", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["steps"] == 2 and [p["step"] for p in record["curve"]] == [0, 1, 2]

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "choices": ["a"], "answer": 3}\n')
    out_bad = tmp_path / "never"
    result = runner.invoke(
        app, ["train", str(out_bad), "--base", str(tiny["base"]), "--data", str(bad)]
    )
    assert result.exit_code == 2
    assert "error:" in result.output and "bad.jsonl:1" in result.output
    assert not out_bad.exists() and not work_dir(out_bad).exists()

    result = runner.invoke(
        app, ["train", str(out_bad), "--base", str(tmp_path / "nope"), "--data", str(tiny["train"])]
    )
    assert result.exit_code == 2 and "error:" in result.output
    assert not out_bad.exists() and not work_dir(out_bad).exists()


def test_accelerate_launch_two_processes(tiny: dict[str, Path], tmp_path: Path) -> None:
    """The same command runs data-parallel under ``accelerate launch --num_processes 2``.

    On CPU, ``--multi_gpu`` is what makes accelerate start the processes through torchrun
    (``--cpu`` alone runs one process); training then uses gloo.
    """
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
    command += ["--num_machines", "1", "--multi_gpu", "--mixed_precision", "no"]
    command += ["--dynamo_backend", "no", "-m", "mashup.cli", "train", str(out)]
    command += [
        "--base",
        str(tiny["base"]),
        "--data",
        str(tiny["train"]),
        "--val",
        str(tiny["val"]),
    ]
    command += ["--steps", "3", "--eval-every", "3", "--val-n", "8"]
    command += ["--target-modules", "q_proj,v_proj", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    record = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert record["world_size"] == 2 and record["steps"] == 3
    assert (out / "adapter_model.safetensors").is_file()
