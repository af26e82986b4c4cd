"""The Python API of the catalog: round trip, names, scores, change detection, concurrency."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mashup.zoo.fingerprint as fingerprint_module
from mashup.errors import MashupError
from mashup.zoo import Zoo, ZooEntry
from mashup.zoo.catalog import CATALOG_NAME
from tests.zoo.conftest import write_numpy_model, write_state


def test_add_get_list_remove_round_trip(tiny: dict[str, Path], tmp_path: Path) -> None:
    zoo = Zoo.open(tmp_path / "zoo")
    model = zoo.add(tiny["finetune"], task="arc_easy", dataset="ai2_arc", metrics={"acc": 0.5})
    adapter = zoo.add(tiny["lora"], task="piqa", name="piqa-lora", extra={"epochs": 1})
    state = zoo.add(write_state(tmp_path / "states" / "arc-soup.safetensors"))

    assert isinstance(model, ZooEntry)
    assert (model.name, model.kind, model.path) == ("finetune", "model", tiny["finetune"])
    assert model.metrics == {"acc": 0.5} and model.dataset == "ai2_arc"
    assert adapter.kind == "adapter" and adapter.meta["epochs"] == 1
    assert (state.name, state.kind, state.task) == ("arc-soup", "state", "arc_easy")
    assert state.meta["state"]["n_tokens"] == 128

    again = zoo.get("finetune")
    assert again == model  # what is read back is what was written, fingerprint included
    assert again.path.is_absolute()
    assert [e.name for e in zoo.list()] == ["arc-soup", "finetune", "piqa-lora"]
    assert [e.name for e in zoo.list(kind="adapter")] == ["piqa-lora"]
    assert [e.name for e in zoo.list(task="arc_easy")] == ["arc-soup", "finetune"]
    assert zoo.list(kind="model", task="piqa") == []
    assert "finetune" in zoo and "nope" not in zoo

    zoo.remove("finetune")
    assert [e.name for e in zoo.list()] == ["arc-soup", "piqa-lora"]
    with pytest.raises(MashupError, match=r"has no entry named 'finetune'") as info:
        zoo.get("finetune")
    assert str(zoo.root) in str(info.value)
    with pytest.raises(MashupError, match="has no entry named"):
        zoo.remove("finetune")
    assert tiny["finetune"].is_dir()  # entries are referenced in place; removing keeps the files


def test_catalog_is_sqlite_in_wal_mode_with_schema_version(tmp_path: Path) -> None:
    zoo = Zoo.open(tmp_path / "new" / "zoo")
    assert (tmp_path / "new" / "zoo" / CATALOG_NAME).is_file()
    with sqlite3.connect(zoo.catalog_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"entries", "scores", "schema_version"} <= tables
    Zoo.open(zoo.root)  # opening again keeps one version row
    with sqlite3.connect(zoo.catalog_path) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1


def test_open_refuses_a_file_that_is_not_a_catalog(tmp_path: Path) -> None:
    (tmp_path / CATALOG_NAME).write_text("not a database, just text " * 100)
    with pytest.raises(MashupError, match="not a usable zoo catalog"):
        Zoo.open(tmp_path)
    with pytest.raises(MashupError, match="no zoo catalog here"):
        Zoo.open(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_names_default_to_the_directory_and_are_deduplicated(tmp_path: Path) -> None:
    zoo = Zoo.open(tmp_path / "zoo")
    first = zoo.add(write_numpy_model(tmp_path / "run1" / "checkpoint-100"), task="t")
    second = zoo.add(write_numpy_model(tmp_path / "run2" / "checkpoint-100"), task="t")
    third = zoo.add(write_numpy_model(tmp_path / "run3" / "checkpoint-100"), task="t")
    assert [first.name, second.name, third.name] == [
        "checkpoint-100",
        "checkpoint-100-2",
        "checkpoint-100-3",
    ]
    odd = zoo.add(write_numpy_model(tmp_path / "my model (v2)"), task="t")
    assert odd.name == "my-model-v2"

    with pytest.raises(MashupError, match="already has an entry named 'checkpoint-100'"):
        zoo.add(write_numpy_model(tmp_path / "run4" / "x"), task="t", name="checkpoint-100")
    with pytest.raises(MashupError, match="already in zoo .* as 'checkpoint-100-2'"):
        zoo.add(tmp_path / "run2" / "checkpoint-100", task="t")
    with pytest.raises(MashupError, match="invalid entry name"):
        zoo.add(tmp_path / "run4" / "x", task="t", name="has space")
    with pytest.raises(MashupError, match="no task given"):
        zoo.add(tmp_path / "run4" / "x")
    with pytest.raises(MashupError, match="not a finite number"):
        zoo.add(tmp_path / "run4" / "x", task="t", metrics={"acc": float("nan")})
    assert len(zoo.list()) == 4


def test_scores_cache_and_cascade_on_remove(tmp_path: Path) -> None:
    zoo = Zoo.open(tmp_path / "zoo")
    zoo.add(write_numpy_model(tmp_path / "a", 1.0), task="arc_easy")
    zoo.add(write_numpy_model(tmp_path / "b", 2.0), task="piqa")
    target = "arc_easy:train[:256]"
    zoo.set_score("a", target=target, metric="acc", value=0.41, n=256)
    zoo.set_score("b", target=target, metric="acc", value=0.30, n=256, meta={"seed": 0})
    zoo.set_score("b", target=target, metric="acc_norm", value=0.33, n=256)
    zoo.set_score("a", target="piqa:train[:256]", metric="acc", value=0.7, n=256)
    assert zoo.get_scores(target, "acc") == {"a": 0.41, "b": 0.30}
    assert zoo.get_scores(target, "acc_norm") == {"b": 0.33}
    assert zoo.get_scores("other", "acc") == {}

    zoo.set_score("a", target=target, metric="acc", value=0.45, n=512)  # a re-run replaces
    assert zoo.get_scores(target, "acc") == {"a": 0.45, "b": 0.30}
    assert [(s["metric"], s["value"], s["n"]) for s in zoo.scores_of("b")] == [
        ("acc", 0.30, 256),
        ("acc_norm", 0.33, 256),
    ]

    zoo.remove("b")
    assert zoo.get_scores(target, "acc") == {"a": 0.45}
    with sqlite3.connect(zoo.catalog_path) as conn:
        assert conn.execute("SELECT count(*) FROM scores").fetchone()[0] == 2  # only a's
    with pytest.raises(MashupError, match="has no entry named 'b'"):
        zoo.set_score("b", target=target, metric="acc", value=0.1)
    with pytest.raises(MashupError, match="not a finite number"):
        zoo.set_score("a", target=target, metric="acc", value=float("inf"))


def test_changed_content_is_detected(tiny: dict[str, Path], copy_of, tmp_path: Path) -> None:
    model = copy_of(tiny["finetune"])
    zoo = Zoo.open(tmp_path / "zoo")
    entry = zoo.add(model, task="t")
    assert set(entry.meta["files"]) >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert zoo.verify("finetune") == []

    # Flip one byte inside the tensor data: same size, same header, different weights.
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert zoo.verify("finetune") == ["model.safetensors changed"]

    (model / "tokenizer.json").unlink()
    assert zoo.verify("finetune") == ["model.safetensors changed", "tokenizer.json is missing"]
    # Files that do not define the model (the card) are not part of the content hash.
    (model / "README.md").write_text("# notes\n")
    assert len(zoo.verify("finetune")) == 2


def test_quick_hash_for_big_files_still_sees_rewrites(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fingerprint_module, "FULL_HASH_MAX_BYTES", 0)  # treat every file as big
    model = write_numpy_model(tmp_path / "m", 1.0)
    zoo = Zoo.open(tmp_path / "zoo")
    entry = zoo.add(model, task="t")
    assert entry.meta["files"]["model.safetensors"].startswith("quick:")
    assert zoo.verify("m") == []
    time.sleep(0.01)
    write_numpy_model(model, 2.0)  # same size and header, new values and mtime
    assert "model.safetensors changed" in zoo.verify("m")


def test_verify_reports_a_vanished_entry(tmp_path: Path) -> None:
    state = write_state(tmp_path / "s.safetensors")
    zoo = Zoo.open(tmp_path / "zoo")
    zoo.add(state)
    assert zoo.verify("s") == []
    state.unlink()
    assert zoo.verify("s") == [f"{state} no longer exists"]


_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mashup.zoo import Zoo

    zoo_dir, models_dir, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    zoo = Zoo.open(zoo_dir)
    (models_dir / "ready").touch()
    while not go.exists():
        time.sleep(0.005)
    for model in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        entry = zoo.add(model, task="t", metrics={"acc": 0.5})
        zoo.set_score(entry.name, target="arc_easy:train[:8]", metric="acc", value=0.25, n=8)
    """
)


def test_two_processes_adding_at_once_lose_nothing(tmp_path: Path) -> None:
    per_process = 40
    zoo_dir, go = tmp_path / "zoo", tmp_path / "go"
    Zoo.open(zoo_dir)
    sources = []
    for p in range(2):
        models = tmp_path / f"proc{p}"
        for i in range(per_process):
            # Same directory names in both processes: default names collide and must dedupe.
            write_numpy_model(models / f"m{i:02d}", float(i))
        sources.append(models)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(zoo_dir), str(models), str(go)],
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for models in sources
    ]
    deadline = time.monotonic() + 30
    while not all((m / "ready").exists() for m in sources) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()  # both start writing together
    for proc in procs:
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr

    zoo = Zoo.open(zoo_dir)
    entries = zoo.list()
    assert len(entries) == 2 * per_process
    assert len({e.name for e in entries}) == 2 * per_process
    expected_paths = {str(m.resolve()) for s in sources for m in s.iterdir() if m.is_dir()}
    assert {str(e.path) for e in entries} == expected_paths
    assert len(zoo.get_scores("arc_easy:train[:8]", "acc")) == 2 * per_process
    assert zoo.integrity_check() == "ok"
    with sqlite3.connect(zoo.catalog_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_entries_json_is_plain_data(tiny: dict[str, Path], tmp_path: Path) -> None:
    zoo = Zoo.open(tmp_path / "zoo")
    entry = zoo.add(tiny["lora"], task="piqa", metrics={"acc": 0.6})
    record = json.loads(json.dumps(entry.to_dict()))
    assert record["fingerprint"]["adapter"]["r"] == 4
    assert record["path"] == str(tiny["lora"])
    short = entry.to_dict(shapes=False)
    assert short["fingerprint"]["param_shapes"] is None and short["fingerprint"]["n_tensors"] == 8
