"""`mashup merge` end to end: output format, and every bad input (one error line, exit 2,
nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mashup.cli import app
from mashup.merge import MergeConfig
from tests.factories import make_tokenizer
from tests.merge.conftest import load_dir

runner = CliRunner()


def _write(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / "merge.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _ties(base: Path, *others: Path, **params) -> dict:
    return {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [
            {"model": str(o), "parameters": {"weight": 1.0, "density": 0.5, **params}}
            for o in others
        ],
        "dtype": "float32",
    }


def _copy(source: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def test_cli_writes_a_loadable_sharded_model_with_card(models, tmp_path: Path) -> None:
    cfg = _ties(models["base"], models["ft1"], models["ft2"])
    cfg["out_dtype"] = "bfloat16"
    out = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(_write(tmp_path, cfg)), str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "model" and report["method"] == "ties" and report["n_tensors"] == 21
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model-00001-of-00001.safetensors"}
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert (out / "tokenizer.json").is_file()
    front = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert front["base_model"] == [str(models["base"]), str(models["ft1"]), str(models["ft2"])]
    assert front["base_model_relation"] == "merge"
    assert front["tags"] == ["mashup", "merge"] and front["merge_method"] == "ties"
    saved = MergeConfig.from_yaml(out / "mashup_merge.yaml")
    assert saved == MergeConfig.model_validate(cfg)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    AutoTokenizer.from_pretrained(out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_small_shards_and_index(models, tmp_path: Path) -> None:
    from mashup.merge import merge

    cfg = MergeConfig.model_validate(_ties(models["base"], models["ft1"]))
    merge(cfg, tmp_path / "o", progress=False, max_shard_size="8KB")
    index = json.loads((tmp_path / "o" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    merge(cfg, tmp_path / "single", progress=False)
    one, many = load_dir(tmp_path / "single"), load_dir(tmp_path / "o")
    assert all(torch.equal(one[k], many[k]) for k in one)


def test_zoo_names_resolve(models, tmp_path: Path) -> None:
    from mashup.zoo import Zoo

    zoo = Zoo.open(tmp_path / "zoo")
    zoo.add(models["ft1"], task="a", name="first")
    zoo.add(models["ft2"], task="b", name="second")
    cfg = {
        "merge_method": "linear",
        "models": [{"model": n, "parameters": {"weight": 1.0}} for n in ("first", "second")],
    }
    args = [
        "merge",
        str(_write(tmp_path, cfg)),
        str(tmp_path / "o"),
        "--zoo",
        str(tmp_path / "zoo"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    merged, a, b = load_dir(tmp_path / "o"), load_dir(models["ft1"]), load_dir(models["ft2"])
    for k in a:
        torch.testing.assert_close(merged[k], (a[k] + b[k]) / 2)


def test_force_replaces_existing_output(models, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "stale.txt").write_text("x")
    path = _write(tmp_path, _ties(models["base"], models["ft1"]))
    refused = runner.invoke(app, ["merge", str(path), str(out)])
    assert refused.exit_code == 2 and "already exists" in refused.output
    assert (out / "stale.txt").is_file()
    assert runner.invoke(app, ["merge", str(path), str(out), "--force"]).exit_code == 0
    assert not (out / "stale.txt").exists() and (out / "config.json").is_file()


def test_pickle_refused_unless_allowed(models, tmp_path: Path) -> None:
    pickled = _copy(models["ft1"], tmp_path, "pickled")
    state = load_dir(pickled)
    for file in pickled.glob("*.safetensors"):
        file.unlink()
    torch.save(state, pickled / "pytorch_model.bin")
    path = _write(tmp_path, _ties(models["base"], pickled))
    refused = runner.invoke(app, ["merge", str(path), str(tmp_path / "o")])
    assert refused.exit_code == 2 and "pickle" in refused.output
    assert not (tmp_path / "o").exists()
    allowed = runner.invoke(app, ["merge", str(path), str(tmp_path / "o"), "--allow-pickle"])
    assert allowed.exit_code == 0, allowed.output
    runner.invoke(
        app,
        [
            "merge",
            str(_write(tmp_path, _ties(models["base"], models["ft1"]))),
            str(tmp_path / "ref"),
        ],
    )
    got, expected = load_dir(tmp_path / "o"), load_dir(tmp_path / "ref")
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def _corrupt(kind: str, models: dict[str, Path], tmp_path: Path) -> tuple[dict, str]:
    """A config with one bad input, and the words the error must contain."""
    base, ft1 = models["base"], models["ft1"]
    if kind in ("nan", "inf"):
        bad = _copy(ft1, tmp_path, kind)
        from safetensors.torch import save_file

        tensors = load_dir(bad)
        name = "model.layers.1.mlp.up_proj.weight"
        tensors[name][0, 0] = float("nan") if kind == "nan" else float("inf")
        save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
        return _ties(base, bad), ("NaN" if kind == "nan" else "Inf")
    if kind == "truncated":
        bad = _copy(ft1, tmp_path, kind)
        data = (bad / "model.safetensors").read_bytes()
        (bad / "model.safetensors").write_bytes(data[: len(data) - 100])
        return _ties(base, bad), "truncated"
    if kind == "corrupt":
        bad = _copy(ft1, tmp_path, kind)
        data = bytearray((bad / "model.safetensors").read_bytes())
        data[8:20] = b"garbage!!!!!"
        (bad / "model.safetensors").write_bytes(bytes(data))
        return _ties(base, bad), "corrupt"
    if kind == "missing_file":
        bad = _copy(ft1, tmp_path, kind)
        (bad / "model.safetensors").unlink()
        return _ties(base, bad), "model.safetensors"
    if kind == "missing_model":
        return _ties(base, tmp_path / "nowhere"), "no such file"
    if kind == "architecture":
        bad = _copy(ft1, tmp_path, kind)
        config = json.loads((bad / "config.json").read_text())
        config["architectures"] = ["MistralForCausalLM"]
        (bad / "config.json").write_text(json.dumps(config))
        return _ties(base, bad), "architecture"
    if kind == "shapes":
        from tests.factories import make_tiny_llama

        return _ties(base, make_tiny_llama(tmp_path / "wide", hidden_size=32)), "shape"
    if kind == "vocab":
        from tests.factories import make_tiny_llama

        return _ties(base, make_tiny_llama(tmp_path / "v", vocab_size=128)), "vocab"
    if kind == "tokenizer":
        bad = _copy(ft1, tmp_path, kind)
        make_tokenizer(bad, 64, extra="x")
        return _ties(base, bad), "tokenizer"
    if kind == "unknown_method":
        return {**_ties(base, ft1), "merge_method": "fancy"}, "unknown merge_method 'fancy'"
    if kind == "unknown_parameter":
        return _ties(base, ft1, sharpness=2.0), "unknown parameter 'sharpness'"
    if kind == "unknown_key":
        return {**_ties(base, ft1), "slices": []}, "unknown key 'slices'"
    if kind in ("density_zero", "density_above_one"):
        value = 0.0 if kind == "density_zero" else 1.5
        return _ties(base, ft1, density=value), "outside (0, 1]"
    if kind == "missing_weight":
        cfg = _ties(base, ft1)
        del cfg["models"][0]["parameters"]["weight"]
        return cfg, "weight"
    if kind == "slerp_three":
        cfg = {**_ties(base, ft1, models["ft2"]), "merge_method": "slerp", "parameters": {"t": 0.5}}
        for m in cfg["models"]:
            m.pop("parameters")
        return cfg, "exactly 2"
    raise AssertionError(kind)


BAD_INPUTS = [
    "nan",
    "inf",
    "truncated",
    "corrupt",
    "missing_file",
    "missing_model",
    "architecture",
    "shapes",
    "vocab",
    "tokenizer",
    "unknown_method",
    "unknown_parameter",
    "unknown_key",
    "density_zero",
    "density_above_one",
    "missing_weight",
    "slerp_three",
]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_clear_error_and_writes_nothing(kind, models, tmp_path: Path) -> None:
    cfg, words = _corrupt(kind, models, tmp_path)
    out_parent = tmp_path / "outputs"
    out_parent.mkdir()
    result = runner.invoke(app, ["merge", str(_write(tmp_path, cfg)), str(out_parent / "o")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert words in lines[0], lines[0]
    assert list(out_parent.iterdir()) == []


def test_nan_found_midway_leaves_nothing(models, tmp_path: Path) -> None:
    # The NaN is in the last tensor merged: shards were already being written to the temp dir.
    cfg, _ = _corrupt("nan", models, tmp_path)
    bad = Path(cfg["models"][0]["model"])
    from safetensors.torch import save_file

    tensors = load_dir(models["ft1"])
    last = sorted(tensors)[-1]
    tensors[last].view(-1)[-1] = float("nan")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    from mashup.errors import MashupError
    from mashup.merge import merge

    with pytest.raises(MashupError, match="NaN"):
        merge(
            MergeConfig.model_validate(cfg),
            tmp_path / "out" / "o",
            progress=False,
            max_shard_size="4KB",
        )
    assert list((tmp_path / "out").iterdir()) == []
