"""`mashup zoo add/list/show/remove`: JSON round trip, tables, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mashup import cli
from tests.zoo.conftest import write_numpy_model, write_state


def run(*args: str):
    return CliRunner().invoke(cli.app, [*args])


def run_json(*args: str):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_cli_round_trip_with_json(tiny: dict[str, Path], tmp_path: Path) -> None:
    zoo = str(tmp_path / "zoo")
    added = run_json(
        "zoo", "add", str(tiny["finetune"]), "--task", "arc_easy", "--dataset", "ai2_arc",
        "--metric", "acc=0.51", "--metric", "acc_norm=0.55", "--zoo", zoo,
    )  # fmt: skip
    assert added["name"] == "finetune" and added["kind"] == "model"
    assert added["metrics"] == {"acc": 0.51, "acc_norm": 0.55}
    assert added["fingerprint"]["architecture"] == "LlamaForCausalLM"
    adapter = run_json("zoo", "add", str(tiny["lora"]), "--task", "piqa", "--name", "piqa-lora",
                       "--zoo", zoo)  # fmt: skip
    assert adapter["fingerprint"]["adapter"]["r"] == 4

    listed = run_json("zoo", "list", "--zoo", zoo)
    assert [e["name"] for e in listed] == ["finetune", "piqa-lora"]
    assert listed[0]["fingerprint"]["n_tensors"] == len(added["fingerprint"]["param_shapes"])
    assert [e["name"] for e in run_json("zoo", "list", "--kind", "adapter", "--zoo", zoo)] == [
        "piqa-lora"
    ]
    assert run_json("zoo", "list", "--task", "nothing", "--zoo", zoo) == []

    shown = run_json("zoo", "show", "finetune", "--zoo", zoo)
    assert shown["status"] == "unchanged" and shown["changes"] == []
    assert shown["fingerprint"] == added["fingerprint"]
    assert shown["scores"] == []

    assert run_json("zoo", "remove", "finetune", "--zoo", zoo)["removed"] == "finetune"
    assert [e["name"] for e in run_json("zoo", "list", "--zoo", zoo)] == ["piqa-lora"]


def test_cli_tables_and_env_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASHUP_ZOO", str(tmp_path / "envzoo"))
    model = write_numpy_model(tmp_path / "tiny-model")
    assert run("zoo", "add", str(model), "--task", "piqa", "--metric", "acc=0.7").exit_code == 0
    state = write_state(tmp_path / "soup.safetensors", task="hellaswag")
    assert run("zoo", "add", str(state)).exit_code == 0  # the task comes from the state file

    table = run("zoo", "list")
    assert table.exit_code == 0
    # Tests run at 80 columns: names never wrap, other columns may fold across lines.
    assert "tiny-model" in table.stdout and "soup" in table.stdout
    assert "model" in table.stdout and "state" in table.stdout
    assert [e["task"] for e in run_json("zoo", "list")] == ["hellaswag", "piqa"]
    shown = run("zoo", "show", "soup")
    assert shown.exit_code == 0 and "unchanged" in shown.stdout and "LinearAttn" in shown.stdout


def test_cli_show_reports_changed_files(tmp_path: Path) -> None:
    zoo = str(tmp_path / "zoo")
    model = write_numpy_model(tmp_path / "m", 1.0)
    assert run("zoo", "add", str(model), "--task", "t", "--zoo", zoo).exit_code == 0
    write_numpy_model(model, 3.0)  # same shapes, new weights
    shown = run_json("zoo", "show", "m", "--zoo", zoo)
    assert shown["status"] == "changed since registration"
    assert shown["changes"] == ["model.safetensors changed"]
    table = run("zoo", "show", "m", "--zoo", zoo)
    assert table.exit_code == 0 and "changed since registration" in table.output


# -- bad input: one clear error line, exit 2, the catalog as it was ---------------------------


def _truncated(tmp_path: Path) -> Path:
    model = write_numpy_model(tmp_path / "truncated")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    return model


def _corrupt_header(tmp_path: Path) -> Path:
    model = write_numpy_model(tmp_path / "corrupt")
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:12] = b"\xff\xfe{["  # garbage in the JSON header
    weights.write_bytes(bytes(data))
    return model


def _pickle_only(tmp_path: Path) -> Path:
    model = tmp_path / "pickled"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (model / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    return model


def _neither(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "cat.jpg").write_bytes(b"\xff\xd8")
    return folder


def _missing_shard(tmp_path: Path) -> Path:
    model = write_numpy_model(tmp_path / "sharded")
    index = {"metadata": {}, "weight_map": {"embed.weight": "model-00001-of-00002.safetensors"}}
    (model / "model.safetensors").rename(model / "model-00002-of-00002.safetensors")
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    return model


BAD_ADDS = {
    "missing path": (lambda tmp: tmp / "does-not-exist", [], "no such file or directory"),
    "neither model nor adapter": (_neither, [], "neither a model directory"),
    "truncated safetensors": (_truncated, [], "truncated safetensors file"),
    "corrupt safetensors header": (_corrupt_header, [], "corrupt safetensors header"),
    "missing shard": (_missing_shard, [], "model-00001-of-00002.safetensors: shard named"),
    "pickle checkpoint": (_pickle_only, [], "only a pickle checkpoint (pytorch_model.bin)"),
    "metric without value": (
        lambda tmp: write_numpy_model(tmp / "ok"),
        ["--metric", "acc"],
        "bad --metric 'acc'",
    ),  # fmt: skip
    "metric not a number": (
        lambda tmp: write_numpy_model(tmp / "ok"),
        ["--metric", "acc=high"],
        "'high' is not a number",
    ),  # fmt: skip
    "metric nan": (
        lambda tmp: write_numpy_model(tmp / "ok"),
        ["--metric", "acc=nan"],
        "finite number",
    ),  # fmt: skip
    "metric twice": (
        lambda tmp: write_numpy_model(tmp / "ok"),
        ["--metric", "acc=1", "--metric", "acc=2"],
        "given twice",
    ),  # fmt: skip
    "duplicate name": (
        lambda tmp: write_numpy_model(tmp / "ok"),
        ["--name", "existing"],
        "already has an entry named 'existing'",
    ),  # fmt: skip
}


@pytest.fixture
def populated_zoo(tmp_path: Path) -> str:
    zoo = str(tmp_path / "zoo")
    existing = write_numpy_model(tmp_path / "existing")
    assert run("zoo", "add", str(existing), "--task", "t", "--zoo", zoo).exit_code == 0
    return zoo


def _assert_clean_error(result, expected: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert result.stdout == ""  # not even a partial JSON document


@pytest.mark.parametrize("case", list(BAD_ADDS))
def test_bad_add_is_one_error_line_and_changes_nothing(
    case: str, tmp_path: Path, populated_zoo: str
) -> None:
    make_path, extra_args, expected = BAD_ADDS[case]
    before = run_json("zoo", "list", "--zoo", populated_zoo)
    path = make_path(tmp_path)
    result = run("zoo", "add", str(path), "--task", "t", *extra_args, "--zoo", populated_zoo,
                 "--json")  # fmt: skip
    _assert_clean_error(result, expected)
    if not case.startswith("metric") and case != "duplicate name":
        assert str(path) in result.stderr  # the message names the file
    assert run_json("zoo", "list", "--zoo", populated_zoo) == before


def test_pickle_refusal_hints_at_conversion(tmp_path: Path, populated_zoo: str) -> None:
    result = run("zoo", "add", str(_pickle_only(tmp_path)), "--task", "t", "--zoo", populated_zoo)
    _assert_clean_error(result, "save_pretrained")


def test_same_path_twice_is_refused(tmp_path: Path, populated_zoo: str) -> None:
    before = run_json("zoo", "list", "--zoo", populated_zoo)
    result = run("zoo", "add", str(tmp_path / "existing"), "--task", "t", "--zoo", populated_zoo)
    _assert_clean_error(result, "already in zoo")
    assert run_json("zoo", "list", "--zoo", populated_zoo) == before


@pytest.mark.parametrize("command", ["show", "remove"])
def test_unknown_name_is_one_error_line(command: str, populated_zoo: str) -> None:
    before = run_json("zoo", "list", "--zoo", populated_zoo)
    result = run("zoo", command, "no-such-entry", "--zoo", populated_zoo)
    _assert_clean_error(result, "has no entry named 'no-such-entry'")
    assert run_json("zoo", "list", "--zoo", populated_zoo) == before


def test_bad_input_into_a_new_zoo_creates_nothing(tmp_path: Path) -> None:
    zoo = tmp_path / "fresh-zoo"
    result = run("zoo", "add", str(_truncated(tmp_path)), "--task", "t", "--zoo", str(zoo))
    _assert_clean_error(result, "truncated")
    assert not zoo.exists()
    _assert_clean_error(run("zoo", "list", "--zoo", str(zoo)), "no zoo catalog here")
    assert not zoo.exists()


def test_unknown_kind_filter(populated_zoo: str) -> None:
    _assert_clean_error(run("zoo", "list", "--kind", "dataset", "--zoo", populated_zoo),
                        "unknown kind 'dataset'")  # fmt: skip


def test_adapter_with_pickle_weights_is_refused(tiny: dict[str, Path], tmp_path: Path,
                                                populated_zoo: str) -> None:  # fmt: skip
    adapter = tmp_path / "old-adapter"
    shutil.copytree(tiny["lora"], adapter)
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    result = run("zoo", "add", str(adapter), "--task", "t", "--zoo", populated_zoo)
    _assert_clean_error(result, "only a pickle checkpoint (adapter_model.bin)")
